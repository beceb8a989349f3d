"""Flax NNX as a first-class path: gradient-based methods and L-BFGS on a module.

The model holds a variable that is not an ``nnx.Param`` (``scale``), so that
every path must rebuild the model from its parameters *and* its other state.
The loss takes second derivatives of the model (``jax.grad(jax.grad(model))``),
the case that fails when a method's ``loss_fn`` is handed a bare ``nnx.State``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_invloss as oil

X_PDE = jnp.linspace(0.0, 1.0, 6)
X_BC = jnp.asarray([0.0, 1.0])
POINTS = {"pde": X_PDE, "bc": X_BC}
LOSSES = {"pde": 0.0, "bc": 0.0}


class Net(nnx.Module):
    def __init__(self, seed=0):
        rngs = nnx.Rngs(seed)
        self.hidden = nnx.Linear(1, 6, rngs=rngs, param_dtype=jnp.float64)
        self.out = nnx.Linear(6, 1, rngs=rngs, param_dtype=jnp.float64)
        self.scale = nnx.Variable(jnp.asarray(2.0))  # not trained

    def __call__(self, x):  # one point -> a scalar
        h = jnp.tanh(self.scale[...] * self.hidden(jnp.atleast_1d(x)))
        return self.out(h)[0]


def residual_terms(model, points):
    u_xx = jax.vmap(jax.grad(jax.grad(model)))(points["pde"])
    pde = u_xx + jnp.pi**2 * jnp.sin(jnp.pi * points["pde"])
    return {"pde": pde / jnp.sqrt(pde.size), "bc": jax.vmap(model)(points["bc"])}


def loss_terms(model):
    residuals = residual_terms(model, POINTS)
    return {name: jnp.sum(r**2) for name, r in residuals.items()}


def fit_terms(model):
    """First-order terms (a fit and a boundary value), for the L-BFGS tests."""
    fit = jax.vmap(model)(X_PDE) - jnp.sin(jnp.pi * X_PDE)
    return {"pde": jnp.mean(fit**2), "bc": 1e-2 * jnp.mean(jax.vmap(model)(X_BC) ** 2)}


def total(weights, terms=loss_terms):
    def fn(model):
        losses = terms(model)
        return oil.weighted_sum(losses, weights), losses

    return fn


METHODS = {
    "lr_annealing": lambda: oil.lr_annealing(reference="pde", update_every=1),
    "grad_norm_balance": lambda: oil.grad_norm_balance(update_every=1),
    "ntk_weights": lambda: oil.ntk_weights(update_every=1),
    "gradnorm": lambda: oil.gradnorm(),
}


def nnx_inputs(name, model):
    """The keyword inputs, from the functions of the model the user has."""
    if name == "ntk_weights":
        residual_fn = oil.nnx_params_fn(residual_terms, model)
        return {"residual_fn": residual_fn, "points": POINTS}
    return {"loss_fn": oil.nnx_params_fn(loss_terms, model)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradient_methods_take_functions_of_the_model(name):
    model = Net()
    method = METHODS[name]()
    # The reference: the method driven by hand, with the workaround users had to
    # write (the pure parameters merged back into the model with its rest).
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.as_pure(params), nnx.as_pure(rest)
    rebuilt = lambda p: nnx.merge(graphdef, p, rest)
    reference_inputs = {
        "params": params,
        "loss_fn": lambda p: loss_terms(rebuilt(p)),
        "residual_fn": lambda p, x: residual_terms(rebuilt(p), x),
        "points": POINTS,
    }
    losses = loss_terms(model)
    expected, _ = jax.jit(
        lambda: method.update(losses, method.init(losses), **reference_inputs)
    )()

    optimizer = nnx.Optimizer(
        model, oil.with_weighting(optax.adam(1e-3), method, LOSSES), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, optimizer):
        weights = oil.loss_weights(optimizer)
        (_, losses), grads = nnx.value_and_grad(total(weights), has_aux=True)(model)
        optimizer.update(model, grads, losses=losses, **nnx_inputs(name, model))

    step(model, optimizer)
    weights = oil.loss_weights(optimizer)
    for term in LOSSES:
        np.testing.assert_allclose(weights[term], expected[term], rtol=1e-6)
    # The weights moved off their initial value of 1: the gradients were used.
    assert not np.allclose([weights["pde"], weights["bc"]], 1.0), weights
    assert float(model.scale[...]) == 2.0  # the other variables are untouched


@nnx.jit
def adam_step(model, optimizer):
    weights = oil.loss_weights(optimizer)
    (_, losses), grads = nnx.value_and_grad(total(weights, fit_terms), has_aux=True)(
        model
    )
    optimizer.update(model, grads, losses=losses)


ADAM_METHOD = oil.inverse_loss(update_every=100)


def adam_phase(steps=10):
    model = Net()
    tx = oil.with_weighting(optax.adam(1e-2), ADAM_METHOD, LOSSES)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(steps):
        adam_step(model, optimizer)
    return model, ADAM_METHOD, optimizer


def test_run_lbfgs_trains_an_nnx_module_in_place():
    model, _, adam = adam_phase()
    weights = oil.loss_weights(adam)
    start = float(oil.weighted_sum(fit_terms(model), weights))
    out, weighting_state, info = oil.run_lbfgs(fit_terms, model, adam, iterations=10)
    assert out is model  # written back in place, and returned
    for a, b in zip(
        jax.tree.leaves(oil.loss_weights(weighting_state)),
        jax.tree.leaves(weights),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)  # frozen: Adam's last weights
    np.testing.assert_allclose(info.objective[0], start, rtol=1e-12)
    end = float(oil.weighted_sum(fit_terms(model), weights))
    np.testing.assert_allclose(info.objective_after[-1], end, rtol=1e-10)
    assert end < 0.9 * start
    assert float(model.scale[...]) == 2.0


def test_lbfgs_in_an_nnx_optimizer_continues_from_the_adam_weights():
    model, method, adam = adam_phase()
    tx = oil.reset_on_new_weights(
        oil.with_weighting(optax.lbfgs(), method, LOSSES, weighting_state=adam)
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    adam_state = oil.loss_weights(adam)
    for term in LOSSES:  # one call carries the weights (not equal weights)
        np.testing.assert_array_equal(
            oil.loss_weights(optimizer)[term], adam_state[term]
        )
    assert not np.isclose(float(adam_state["pde"]), 0.5)

    @nnx.jit
    def step(model, optimizer):
        weights = oil.loss_weights(optimizer)
        value_fn = oil.weighted_objective(oil.nnx_params_fn(fit_terms, model), weights)
        (value, losses), grads = nnx.value_and_grad(
            total(weights, fit_terms), has_aux=True
        )(model)
        optimizer.update(
            model, grads, value=value, grad=grads, value_fn=value_fn, losses=losses
        )
        return value

    values = np.asarray([float(step(model, optimizer)) for _ in range(6)])
    assert np.all(np.diff(values) <= 1e-6 * np.abs(values[:-1])), values
    assert values[-1] < 0.9 * values[0]
    # The method's step counter continued from the Adam phase's 10 updates.
    state = nnx.as_pure(optimizer.opt_state).weighting_state
    assert int(state.weighting_step) == 16


def test_nnx_params_fn_needs_a_module():
    with pytest.raises(TypeError, match="model must be a Flax nnx.Module"):
        oil.nnx_params_fn(loss_terms, {"w": jnp.zeros(2)})
