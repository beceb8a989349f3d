r"""Allen-Cahn equation, 1D and periodic: the RBA and causal-training papers' setup.

.. math::

  u_t - \epsilon u_{xx} + 5 u^3 - 5 u = 0, \quad x \in [-1, 1],\ t \in [0, 1],
  \qquad \epsilon = 10^{-4},

  u(x, 0) = x^2 \cos(\pi x), \qquad u(-1, t) = u(1, t), \quad
  u_x(-1, t) = u_x(1, t).

Points are ``(x, t)``. Terms ``"pde"``, ``"ic"``, ``"bc"`` (``u(-1, t) - u(1,
t)``) and ``"bc_x"`` (the same for :math:`u_x`); the boundary points carry
:math:`x = -1` and their time, and the residual evaluates both ends. Each term
gets ``batch`` points drawn uniformly per call of ``sample``; per-point
weightings need fixed points, so draw them once (one key) for those.

The fronts are thin (the stationary front is :math:`\tanh(x / \delta)` with
:math:`\delta = \sqrt{2 \epsilon / 5} \approx 0.0063`), so the reference is
computed with a Fourier spectral method on 1024 points (the spectrum of such a
front has decayed to about 1e-7 at that resolution) and exponential time
differencing, ETDRK4 (Cox and Matthews 2002; coefficients by the contour
integrals of Kassam and Trefethen 2005), with step 5e-4, in float64 numpy.
Snapshots are kept every 1e-3; :func:`exact` evaluates the Fourier series in
:math:`x` and interpolates linearly in :math:`t` between snapshots (the
evaluation grid's times are snapshot times). No downloaded data is used.
Accuracy: halving the step changes the solution by about 1e-12; doubling the
points changes it by 2e-6 in relative L2 over the evaluation grid. The largest
pointwise change, 3e-4, is at :math:`x = \pm 1` for :math:`t < 0.01`: the
initial condition's periodic extension has a kink there (:math:`u_x` jumps
from -2 to 2), which diffusion smooths within a few hundredths of a time unit.

Presets: ``"paper"`` is the RBA repository's Allen-Cahn run (6 hidden layers of
128, tanh, Adam at 1e-3 decayed by 0.9 every 5000 steps, here continuously
rather than in stairs, 30,000 steps; that run used 25,600 fixed Latin-hypercube
residual points and did not enforce periodicity, our terms do). ``"quick"``
uses 3 hidden layers of 64, 1024 points per term and 10,000 steps.

References:
  Anagnostopoulos, Toscano, Stergiopulos and Karniadakis, `Residual-based
  attention in physics-informed neural networks
  <https://arxiv.org/abs/2307.00379>`_, CMAME 421, 2024.

  Kassam and Trefethen, `Fourth-order time-stepping for stiff PDEs
  <https://doi.org/10.1137/S1064827502410633>`_, SIAM J. Sci. Comput. 26(4),
  2005.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.problems._base import (
    ApplyFn,
    Batch,
    Preset,
    Problem,
    grid,
    per_point,
    uniform,
)

EPSILON = 1e-4
MODES = 1024  # grid points of the reference solver
TIME_STEP = 5e-4
SNAPSHOT_EVERY = 1e-3

_PRESETS = {
    "quick": Preset(layers=(2, 64, 64, 64, 1), batch=1024, steps=10_000),
    "paper": Preset(
        layers=(2, 128, 128, 128, 128, 128, 128, 1),
        batch=25_600,
        steps=30_000,
        decay_steps=5000,
    ),
}


def initial_condition(x):
    """``x^2 cos(pi x)``."""
    return x**2 * np.cos(np.pi * x)


def solve(
    modes: int = MODES,
    time_step: float = TIME_STEP,
    snapshot_every: float = SNAPSHOT_EVERY,
    final_time: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference solution by Fourier-spectral ETDRK4 (numpy, float64).

    Args:
      modes: number of grid points on [-1, 1) (even).
      time_step: ETDRK4 step.
      snapshot_every: time between stored snapshots, a multiple of the step.
      final_time: last time.

    Returns:
      ``(x, t, u)``: grid ``(modes,)``, snapshot times ``(T,)`` and the
      solution ``(T, modes)``.
    """
    steps_per_snapshot = round(snapshot_every / time_step)
    snapshots = round(final_time / snapshot_every)
    if not np.isclose(steps_per_snapshot * time_step, snapshot_every):
        raise ValueError("snapshot_every must be a multiple of time_step")
    x = -1.0 + 2.0 * np.arange(modes) / modes
    k = np.pi * np.arange(modes // 2 + 1)  # wavenumbers on a period of 2
    linear = -EPSILON * k**2
    h = time_step
    e_full, e_half = np.exp(h * linear), np.exp(h * linear / 2)
    # Kassam-Trefethen: the phi-functions by the mean over a circle of radius 1.
    roots = np.exp(1j * np.pi * (np.arange(1, 33) - 0.5) / 32)
    lr = h * linear[:, None] + roots[None, :]
    q = h * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = h * np.real(
        np.mean((-4 - lr + np.exp(lr) * (4 - 3 * lr + lr**2)) / lr**3, axis=1)
    )
    f2 = h * np.real(np.mean((2 + lr + np.exp(lr) * (-2 + lr)) / lr**3, axis=1))
    f3 = h * np.real(
        np.mean((-4 - 3 * lr - lr**2 + np.exp(lr) * (4 - lr)) / lr**3, axis=1)
    )

    def nonlinear(v):
        u = np.fft.irfft(v, n=modes)
        return np.fft.rfft(5.0 * u - 5.0 * u**3)

    v = np.fft.rfft(initial_condition(x))
    out = [np.fft.irfft(v, n=modes)]
    for _ in range(snapshots):
        for _ in range(steps_per_snapshot):
            nv = nonlinear(v)
            a = e_half * v + q * nv
            na = nonlinear(a)
            b = e_half * v + q * na
            nb = nonlinear(b)
            c = e_half * a + q * (2 * nb - nv)
            nc = nonlinear(c)
            v = e_full * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
        out.append(np.fft.irfft(v, n=modes))
    t = snapshot_every * np.arange(snapshots + 1)
    return x, t, np.stack(out)


@functools.cache
def _reference_coefficients() -> tuple[np.ndarray, np.ndarray]:
    """Snapshot times and each snapshot's Fourier coefficients (cached)."""
    _, t, u = solve()
    return t, np.fft.rfft(u, axis=1) / MODES


def reference_solution(x, t) -> np.ndarray:
    """The reference at positions ``x`` in [-1, 1] and times ``t`` in [0, 1].

    Fourier series in ``x`` (exact at the solver's grid), linear in ``t``
    between snapshots. numpy, float64; any broadcastable shapes.
    """
    times, coefficients = _reference_coefficients()
    x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
    shape = x.shape
    x, t = x.ravel(), t.ravel()
    position = np.clip(t / (times[1] - times[0]), 0, len(times) - 1)
    low = np.minimum(np.floor(position + 1e-9).astype(int), len(times) - 2)
    frac = np.clip(position - low, 0.0, 1.0)
    # Real Fourier series: c_0 + 2 Re sum_{m>=1} c_m e^{i pi m (x + 1)}, with
    # the Nyquist mode counted once.
    scale = np.full(coefficients.shape[1], 2.0)
    scale[0] = scale[-1] = 1.0
    m = np.arange(coefficients.shape[1])
    out = np.empty_like(x)
    chunk = 2048
    for start in range(0, x.size, chunk):
        sl = slice(start, start + chunk)
        phase = np.exp(1j * np.pi * np.outer(x[sl] + 1.0, m))
        c = (1 - frac[sl, None]) * coefficients[low[sl]] + frac[sl, None] * (
            coefficients[low[sl] + 1]
        )
        out[sl] = np.real(np.sum(phase * scale * c, axis=1))
    return out.reshape(shape)


def exact(x) -> np.ndarray:
    """Reference solution at points ``(x, t)``: shape (..., 2) -> (...).

    numpy (not traceable by ``jax.jit``); use :meth:`Problem.reference` for the
    cached evaluation grid.
    """
    x = np.asarray(x, np.float64)
    return reference_solution(x[..., 0], x[..., 1])


def sample(key: jax.Array, batch: int) -> Batch:
    """``{"pde", "ic", "bc", "bc_x"}``, each of shape (batch, 2), drawn uniformly.

    ``bc`` and ``bc_x`` share their times; their points carry ``x = -1``.
    """
    k_pde, k_ic, k_bc = jax.random.split(key, 3)
    boundary = jnp.concatenate(
        [-jnp.ones((batch, 1)), uniform(k_bc, batch, [0.0], [1.0])], axis=1
    )
    return {
        "pde": uniform(k_pde, batch, [-1.0, 0.0], [1.0, 1.0]),
        "ic": jnp.concatenate(
            [uniform(k_ic, batch, [-1.0], [1.0]), jnp.zeros((batch, 1))], axis=1
        ),
        "bc": boundary,
        "bc_x": boundary,
    }


def _pde_residual(apply_fn: ApplyFn, x: jax.Array) -> jax.Array:
    """``u_t - eps u_xx + 5 u^3 - 5 u`` at one point ``(x, t)``."""
    u = apply_fn(x)
    u_t = jax.grad(apply_fn)(x)[1]
    u_xx = jax.hessian(apply_fn)(x)[0, 0]
    return u_t - EPSILON * u_xx + 5.0 * u**3 - 5.0 * u


def _other_end(x: jax.Array) -> jax.Array:
    return x.at[0].set(1.0)


def residuals(apply_fn: ApplyFn, batch: Batch) -> dict[str, jax.Array]:
    """Per-point residuals of the four terms."""
    u_x = lambda x: jax.grad(apply_fn)(x)[0]
    ic = batch["ic"]
    return {
        "pde": per_point(lambda x: _pde_residual(apply_fn, x), batch["pde"]),
        "ic": per_point(apply_fn, ic) - ic[:, 0] ** 2 * jnp.cos(jnp.pi * ic[:, 0]),
        "bc": per_point(lambda x: apply_fn(x) - apply_fn(_other_end(x)), batch["bc"]),
        "bc_x": per_point(lambda x: u_x(x) - u_x(_other_end(x)), batch["bc_x"]),
    }


def eval_points() -> np.ndarray:
    """512 positions by 201 times on [-1, 1] x [0, 1]: (102912, 2), x slowest.

    The size of the usual Allen-Cahn data set's grid (``t`` every 0.005), with
    values from our own solver.
    """
    return grid(np.linspace(-1.0, 1.0, 512), np.linspace(0.0, 1.0, 201))


ALLEN_CAHN = Problem(
    name="allen_cahn",
    input_dim=2,
    term_names=("pde", "ic", "bc", "bc_x"),
    presets=_PRESETS,
    sample=sample,
    residuals=residuals,
    exact=exact,
    eval_points=eval_points,
    eval_shape=(512, 201),
)
