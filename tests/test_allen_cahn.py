"""The Allen-Cahn benchmark: its residuals by hand and its spectral reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.problems import allen_cahn as ac
from benchmarks.problems import get_problem

DELTA = np.sqrt(2 * ac.EPSILON / 5)  # width of the stationary front tanh(x / delta)


def _logistic(u0, t):
    """u_t = 5 u - 5 u^3 (no diffusion) from u0 (numpy or traced)."""
    return u0 * jnp.exp(5 * t) / jnp.sqrt(1 + u0**2 * (jnp.exp(10 * t) - 1))


def test_residuals_vanish_for_known_solutions():
    with jax.enable_x64(True):
        batch = ac.sample(jax.random.key(0), 16)
        # A stationary front: eps u'' + 5 u - 5 u^3 = 0 for u = tanh(x / delta).
        front = lambda p: jnp.tanh(p[0] / DELTA)
        r = ac.residuals(front, batch)
        assert float(jnp.max(jnp.abs(r["pde"]))) < 1e-9
        # A uniform solution of the logistic equation: u_t = 5 u - 5 u^3.
        uniform = lambda p: _logistic(0.3, p[1])
        r = ac.residuals(uniform, batch)
        assert float(jnp.max(jnp.abs(r["pde"]))) < 1e-9
        np.testing.assert_allclose(r["bc"], 0.0, atol=1e-15)
        # The initial condition itself; a periodic function for the boundary.
        r = ac.residuals(lambda p: p[0] ** 2 * jnp.cos(jnp.pi * p[0]), batch)
        assert float(jnp.max(jnp.abs(r["ic"]))) < 1e-12
        periodic = lambda p: jnp.sin(jnp.pi * p[0]) * p[1] + jnp.cos(jnp.pi * p[0])
        r = ac.residuals(periodic, batch)
        assert float(jnp.max(jnp.abs(r["bc"]))) < 1e-12
        assert float(jnp.max(jnp.abs(r["bc_x"]))) < 1e-12
        # Not periodic: both boundary terms see it.
        r = ac.residuals(lambda p: p[0] ** 3 + p[0] ** 2 * p[1], batch)
        np.testing.assert_allclose(r["bc"], -2.0, rtol=1e-12)
        np.testing.assert_allclose(r["bc_x"], -4.0 * batch["bc_x"][:, 1], rtol=1e-12)


def test_reference_follows_the_logistic_ode_away_from_fronts():
    # With eps = 1e-4, where the solution is smooth diffusion hardly acts: each
    # point follows u_t = 5 u - 5 u^3 from its initial value (independent of the
    # solver; checks the equation's signs and coefficients).
    x = np.asarray([0.2, -0.3, 0.3, 0.8, -0.9])
    for t in (0.25, 0.5, 1.0):
        np.testing.assert_allclose(
            ac.reference_solution(x, t),
            _logistic(ac.initial_condition(x), t),
            atol=2e-3,
        )
    # At t = 0 the Fourier series of the initial condition, whose periodic
    # extension has a kink at x = +-1 (u_x jumps from -2 to 2).
    np.testing.assert_allclose(
        ac.reference_solution(x, 0.0), ac.initial_condition(x), atol=2e-5
    )


def test_reference_is_even_bounded_and_converged():
    x, t, u = ac.solve(modes=512, time_step=1e-3, snapshot_every=1e-2)
    # Even initial condition: even solution (x_j and -x_j are entries j, N - j).
    np.testing.assert_allclose(u[:, 1:], u[:, 1:][:, ::-1], atol=1e-12)
    assert u.min() >= -1.0 - 1e-9 and u.max() <= 1.0
    # Halving the step and doubling the points change little.
    _, _, finer_t = ac.solve(modes=512, time_step=5e-4, snapshot_every=1e-2)
    assert np.max(np.abs(finer_t - u)) < 1e-9
    _, _, dense = ac.solve(modes=1024, time_step=1e-3, snapshot_every=1e-3)
    finer_x = dense[::10]
    change = finer_x[:, ::2] - u
    assert np.linalg.norm(change) / np.linalg.norm(u) < 2e-5
    # Largest near the kink at x = +-1 early on (1.3e-4 at t = 0.1), then small.
    assert np.max(np.abs(change[10:])) < 3e-4  # t >= 0.1
    assert np.max(np.abs(change[50:])) < 1e-5  # t >= 0.5
    # The pde holds between snapshots: central differences in t, spectral u_xx.
    k = np.pi * np.fft.rfftfreq(1024, d=1.0 / 1024)
    uxx = np.fft.irfft(-(k**2) * np.fft.rfft(finer_x, axis=1), n=1024, axis=1)
    j = np.arange(20, 90)  # t = 0.2 ... 0.89, every 0.01
    u_t = (dense[10 * j + 1] - dense[10 * j - 1]) / 2e-3
    residual = u_t - ac.EPSILON * uxx[j] + 5 * finer_x[j] ** 3 - 5 * finer_x[j]
    assert np.max(np.abs(residual)) < 1e-2 * np.max(np.abs(u_t))


def test_problem_registered_with_its_terms():
    problem = get_problem("allen_cahn")
    assert problem.term_names == ("pde", "ic", "bc", "bc_x")
    batch = problem.sample(jax.random.key(1), 4)
    np.testing.assert_array_equal(batch["bc"][:, 0], -1.0)
    np.testing.assert_array_equal(batch["ic"][:, 1], 0.0)
    assert problem.preset("paper").layers == (2,) + (128,) * 6 + (1,)
