"""Tests of self_adaptive against values computed by hand (METHODS_NEXT.md §9)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil

RESIDUALS = {"pde": jnp.asarray([1.0, 0.0, -2.0, 0.5]), "ic": jnp.asarray([3.0, 1.0])}


def test_initial_weights_are_uniform_draws_with_per_term_scales():
    method = oil.self_adaptive(key=0, init_scale={"ic": 100.0})
    # init reads shapes only: ShapeDtypeStructs will do (a pool's shapes).
    shapes = {
        "pde": jax.ShapeDtypeStruct((2000,), jnp.float32),
        "ic": jax.ShapeDtypeStruct((500,), jnp.float32),
    }
    state = method.init(shapes)
    pde, ic = state.point_weights["pde"], state.point_weights["ic"]
    assert pde.shape == (2000,) and ic.shape == (500,)
    assert 0.0 <= float(pde.min()) and float(pde.max()) < 1.0
    assert 0.0 <= float(ic.min()) and float(ic.max()) < 100.0
    # Means of U(0, 1) and U(0, 100), five standard errors.
    assert abs(float(pde.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 / 2000**0.5
    assert abs(float(ic.mean()) - 50.0) < 5 * 100 * (1 / 12) ** 0.5 / 500**0.5
    # The same key gives the same draws; another key others.
    again = oil.self_adaptive(key=0, init_scale={"ic": 100.0}).init(shapes)
    np.testing.assert_array_equal(again.point_weights["pde"], pde)
    other = oil.self_adaptive(key=jax.random.key(1)).init(shapes)
    assert not np.array_equal(other.point_weights["pde"], pde)


def test_one_sgd_ascent_step_by_hand():
    # lambda <- lambda + lr * d/dlambda mean((lambda r)^2) = lambda + lr 2 lambda r^2/N.
    method = oil.self_adaptive(optimizer=optax.sgd(0.5), key=3)
    state = method.init(RESIDUALS)
    lam = dict(state.point_weights)
    weights, state = jax.jit(method.update)(RESIDUALS, state)
    for name in ("pde", "ic"):
        r = RESIDUALS[name]
        np.testing.assert_array_equal(weights[name], lam[name])  # this step's
        np.testing.assert_allclose(
            state.point_weights[name],
            lam[name] + 0.5 * 2 * lam[name] * r**2 / r.shape[0],
            rtol=1e-12,
        )


def test_default_adam_first_step_is_plus_learning_rate():
    # Adam's first step is lr * g / (|g| + eps): +0.005 where the ascent gradient
    # is positive (r != 0), nothing where r = 0.
    method = oil.self_adaptive(key=4)
    state = method.init(RESIDUALS)
    lam = state.point_weights["pde"]
    _, state = method.update(RESIDUALS, state)
    step = np.asarray(state.point_weights["pde"] - lam)
    np.testing.assert_allclose(step[[0, 2, 3]], 5e-3, rtol=1e-5)
    assert step[1] == 0.0


def test_weights_never_decrease():
    method = oil.self_adaptive(learning_rate=0.05, key=5)
    state = method.init(RESIDUALS)

    def body(state, key):
        r = jax.tree.map(lambda x: jax.random.normal(key, x.shape), RESIDUALS)
        _, new = method.update(r, state)
        return new, new.point_weights["pde"] - state.point_weights["pde"]

    _, steps = jax.lax.scan(body, state, jax.random.split(jax.random.key(0), 20))
    assert bool(jnp.all(steps >= 0))


def test_terms_and_init_scale_checks():
    method = oil.self_adaptive(terms="pde")
    state = method.init(RESIDUALS)
    assert set(state.point_weights) == {"pde"}
    weights, _ = method.update(RESIDUALS, state)
    np.testing.assert_array_equal(weights["ic"], [1.0, 1.0])
    with pytest.raises(ValueError, match="learning_rate"):
        oil.self_adaptive(learning_rate=-1.0)
    with pytest.raises(ValueError, match="init_scale"):
        oil.self_adaptive(init_scale=0.0)
    with pytest.raises(ValueError, match="init_scale.*'bc'"):
        oil.self_adaptive(init_scale={"bc": 10.0}).init(RESIDUALS)
    with pytest.raises(ValueError, match="key"):
        oil.self_adaptive(key="seed")
    # A term added after init is refused when every term is weighted.
    state = oil.self_adaptive().init(RESIDUALS)
    with pytest.raises(ValueError, match="'bc'"):
        oil.self_adaptive().update(dict(RESIDUALS, bc=jnp.ones(2)), state)
