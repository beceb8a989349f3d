"""An Equinox model trained with a gradient-based method through with_weighting.

The idiom: the optimizer sees the model's array leaves (``eqx.partition``), and the
method's ``loss_fn`` is a function of those leaves,
``lambda p: loss_terms(eqx.combine(p, static))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil

eqx = pytest.importorskip("equinox")

X_PDE = jnp.linspace(0.0, 1.0, 32)
X_BC = jnp.array([0.0, 1.0])


def loss_terms(model):  # -u'' = pi^2 sin(pi x) on [0, 1], u = 0 at both ends
    u_xx = jax.vmap(jax.grad(jax.grad(model)))(X_PDE)
    residual = u_xx + jnp.pi**2 * jnp.sin(jnp.pi * X_PDE)
    return {"pde": jnp.mean(residual**2), "bc": jnp.mean(jax.vmap(model)(X_BC) ** 2)}


def make():
    model = eqx.nn.MLP(
        "scalar", "scalar", 16, 2, activation=jnp.tanh, key=jax.random.key(0)
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    method = oil.lr_annealing(update_every=10)
    tx = oil.with_weighting(optax.adam(1e-3), method, losses=loss_terms(model))
    return params, static, tx


def test_first_update_is_the_papers_ratio_of_gradients():
    params, static, tx = make()

    @eqx.filter_jit
    def step(params, opt_state):
        model = eqx.combine(params, static)
        weights = oil.loss_weights(opt_state)
        grads = jax.grad(
            lambda p: oil.weighted_sum(loss_terms(eqx.combine(p, static)), weights)
        )(params)
        updates, opt_state = tx.update(
            grads,
            opt_state,
            params,
            losses=loss_terms(model),
            loss_fn=lambda p: loss_terms(eqx.combine(p, static)),
        )
        return eqx.apply_updates(params, updates), opt_state

    _, opt_state = step(params, tx.init(params))
    weights = oil.loss_weights(opt_state)

    # By hand (Wang, Teng and Perdikaris 2021): the largest entry of the residual's
    # gradient over the weight matrices, over the mean over matrices of the
    # boundary loss's mean absolute gradient; 0.9 on the old weight (1).
    def matrices(term):
        g = jax.grad(lambda p: loss_terms(eqx.combine(p, static))[term])(params)
        return [leaf for leaf in jax.tree.leaves(g) if jnp.ndim(leaf) == 2]

    top = max(float(jnp.max(jnp.abs(g))) for g in matrices("pde"))
    mean = np.mean([float(jnp.mean(jnp.abs(g))) for g in matrices("bc")])
    np.testing.assert_allclose(float(weights["pde"]), 1.0)
    np.testing.assert_allclose(float(weights["bc"]), 0.9 + 0.1 * top / mean, rtol=1e-5)
    assert float(weights["bc"]) > 1.5  # the boundary's gradients are the small ones


def test_training_lowers_both_terms_and_needs_loss_fn():
    params, static, tx = make()

    @eqx.filter_jit
    def train(params, opt_state):
        def body(carry, _):
            params, opt_state = carry
            weights = oil.loss_weights(opt_state)
            fn = lambda p: loss_terms(eqx.combine(p, static))
            losses = fn(params)
            grads = jax.grad(lambda p: oil.weighted_sum(fn(p), weights))(params)
            updates, opt_state = tx.update(
                grads, opt_state, params, losses=losses, loss_fn=fn
            )
            return (eqx.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(body, (params, opt_state), length=300)[0]

    before = loss_terms(eqx.combine(params, static))
    params_after, opt_state = train(params, tx.init(params))
    after = loss_terms(eqx.combine(params_after, static))
    assert float(after["pde"]) < 0.5 * float(before["pde"]), (before, after)
    assert int(opt_state.weighting_state.weighting_step) == 300
    assert float(oil.loss_weights(opt_state)["bc"]) != 1.0
    with pytest.raises((TypeError, ValueError), match="loss_fn"):
        tx.update(params, tx.init(params), params, losses=before)
