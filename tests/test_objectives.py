"""Tests for optax_invloss/_objectives.py: the value_fn of a line-search phase."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _toy_net import loss_fn, net_params

import optax_invloss as oil


def test_weighted_objective_value_and_gradient_by_hand():
    f = lambda p: {"a": p**2, "b": (p - 1.0) ** 3}
    value_fn = oil.weighted_objective(f, {"a": 0.2, "b": 0.8})
    value, grad = jax.value_and_grad(value_fn)(jnp.asarray(3.0))
    # value: 0.2 * 9 + 0.8 * 8 = 8.2; grad: 0.2 * 2 * 3 + 0.8 * 3 * 2**2 = 10.8
    np.testing.assert_allclose(value, 8.2, rtol=1e-14)
    np.testing.assert_allclose(grad, 10.8, rtol=1e-14)


def test_weighted_objective_does_not_differentiate_the_weights():
    f = lambda p: {"a": p**2, "b": p}
    # Weights that depend on p: only the losses are differentiated.
    value_fn = lambda p: oil.weighted_objective(f, {"a": p, "b": 2.0 * p})(p)
    # d/dp [w_a p^2 + w_b p] with w held at p = 2: 2 * 2 * 2 + 4 * 1 = 12
    np.testing.assert_allclose(jax.grad(value_fn)(jnp.asarray(2.0)), 12.0)


def test_weighted_objective_rejects_mismatched_weights():
    value_fn = oil.weighted_objective(loss_fn, {"fit": 1.0})
    with pytest.raises(ValueError, match="same structure"):
        value_fn(net_params())


def test_log_objective_value_by_hand():
    f = lambda p: {"a": p**2, "b": 0.5 * p}
    # log(4 + 0.5) + log(1 + 0.5) = log 4.5 + log 1.5 = log 6.75
    value = oil.log_objective(f, eps=0.5)(jnp.asarray(2.0))
    np.testing.assert_allclose(value, np.log(6.75), rtol=1e-14)
    with pytest.raises(ValueError, match=r"eps must be >= 0, got eps = -1"):
        oil.log_objective(f, eps=-1.0)


@pytest.mark.parametrize("seed", range(5))
def test_log_objective_gradient_is_parallel_to_inverse_weighted_gradient(seed):
    # A random two-term least-squares problem in float64.
    ka, kb, kp = jax.random.split(jax.random.key(seed), 3)
    a = jax.random.normal(ka, (7, 4))
    b = jax.random.normal(kb, (3, 4))
    f = lambda p: {"r": jnp.sum((a @ p - 1.0) ** 2), "s": 1e-3 * jnp.sum((b @ p) ** 2)}
    p = jax.random.normal(kp, (4,))
    losses = np.asarray([float(v) for v in f(p).values()])
    # The bare formula by hand: w_i = (1 / L_i) / sum_j (1 / L_j).
    inv = 1.0 / losses
    weights = dict(zip(f(p), inv / inv.sum(), strict=True))
    g_weighted = jax.grad(oil.weighted_objective(f, weights))(p)
    g_log = jax.grad(oil.log_objective(f, eps=0.0))(p)
    cosine = jnp.vdot(g_weighted, g_log) / (
        jnp.linalg.norm(g_weighted) * jnp.linalg.norm(g_log)
    )
    np.testing.assert_allclose(cosine, 1.0, atol=1e-14)
    # And the lengths differ by exactly (sum_j 1 / L_j)^-1.
    np.testing.assert_allclose(g_weighted, g_log / inv.sum(), rtol=1e-12)
    # The library's bare inverse_loss gives the same weights.
    method = oil.inverse_loss(min_weight=0.0, eps=1e-300)
    w_method, _ = method.update(f(p), method.init(f(p)))
    np.testing.assert_allclose(
        jax.grad(oil.weighted_objective(f, w_method))(p), g_weighted, rtol=1e-12
    )
