"""Tests of rba against values computed by hand (METHODS_NEXT.md section 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_invloss as oil

R = {"pde": jnp.asarray([1.0, 2.0, 4.0])}


def test_one_step_by_hand():
    # lambda = 0.999 * 0 + 1e-3 * |r| / max|r| = 1e-3 * (1, 2, 4) / 4.
    method = oil.rba()
    state = method.init(R)
    np.testing.assert_array_equal(state.point_weights["pde"], [0.0, 0.0, 0.0])
    weights, state = method.update(R, state)
    np.testing.assert_allclose(weights["pde"], [2.5e-4, 5e-4, 1e-3], rtol=1e-12)
    np.testing.assert_allclose(
        state.point_weights["pde"], [2.5e-4, 5e-4, 1e-3], rtol=1e-12
    )
    # Signs do not matter: |r|.
    weights, _ = method.update({"pde": -R["pde"]}, method.init(R))
    np.testing.assert_allclose(weights["pde"], [2.5e-4, 5e-4, 1e-3], rtol=1e-12)


def test_constant_residuals_reach_the_limit():
    # After k steps lambda = eta (1 - gamma^k) / (1 - gamma) |r| / max|r|; the
    # limit is (0.25, 0.5, 1).
    method = oil.rba()

    def body(state, _):
        weights, state = method.update(R, state)
        return state, weights["pde"]

    state, ws = jax.jit(lambda s: jax.lax.scan(body, s, None, length=30_000))(
        method.init(R)
    )
    for k in (1, 2, 1000):
        factor = 1e-3 * (1 - 0.999**k) / (1 - 0.999)
        np.testing.assert_allclose(ws[k - 1], factor * np.asarray([0.25, 0.5, 1.0]))
    np.testing.assert_allclose(ws[-1], [0.25, 0.5, 1.0], rtol=1e-12)
    assert bool(jnp.all(ws <= 1.0))


def test_only_the_named_terms_are_weighted():
    residuals = {"pde": R["pde"], "bc": jnp.asarray([5.0, 6.0])}
    method = oil.rba()
    state = method.init(residuals)
    assert set(state.point_weights) == {"pde"}
    weights, state = method.update(residuals, state)
    np.testing.assert_array_equal(weights["bc"], [1.0, 1.0])
    method = oil.rba(eta=0.1, gamma=0.5, terms=("pde", "bc"))
    weights, _ = method.update(residuals, method.init(residuals))
    np.testing.assert_allclose(weights["bc"], [0.1 * 5 / 6, 0.1])
    # Nested residuals are named by their path.
    nested = {"bc": {"left": jnp.ones(2), "right": jnp.ones(3)}, "pde": R["pde"]}
    method = oil.rba(terms="bc/left")
    state = method.init(nested)
    assert set(state.point_weights) == {"bc/left"}
    weights, _ = method.update(nested, state)
    np.testing.assert_allclose(weights["bc"]["left"], [1e-3, 1e-3])
    np.testing.assert_array_equal(weights["bc"]["right"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(weights["pde"], [1.0, 1.0, 1.0])


def test_zero_residuals_add_nothing():
    method = oil.rba()
    weights, state = method.update({"pde": jnp.zeros(3)}, method.init(R))
    np.testing.assert_array_equal(weights["pde"], [0.0, 0.0, 0.0])
    assert int(state.skipped_updates) == 0


def test_both_loss_forms():
    weights = {"pde": jnp.asarray([0.25, 0.5, 1.0])}
    # power 1: (0.25 * 1 + 0.5 * 4 + 1 * 16) / 3; power 2: (0.0625 + 1 + 16) / 3.
    loss1 = oil.rba().loss(R, weights)["pde"]
    loss2 = oil.rba(power=2).loss(R, weights)["pde"]
    np.testing.assert_allclose(loss1, 18.25 / 3)
    np.testing.assert_allclose(loss2, 17.0625 / 3)


def test_bad_hyperparameters_and_terms():
    with pytest.raises(ValueError, match="eta"):
        oil.rba(eta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        oil.rba(gamma=1.0)
    with pytest.raises(ValueError, match="power"):
        oil.rba(power=3)
    with pytest.raises(ValueError, match="terms"):
        oil.rba(terms=())
    with pytest.raises(ValueError, match=r"'pde'.*'u', 'f'|'pde'.*'f', 'u'"):
        oil.rba().init({"u": jnp.ones(2), "f": jnp.ones(3)})
