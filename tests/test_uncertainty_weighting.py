"""Tests of uncertainty_weighting, against values computed by hand."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil

LOSSES = {"a": jnp.asarray(4.0), "b": jnp.asarray(1.0), "c": jnp.asarray(0.25)}


def _weights(tree):
    return [float(tree[k]) for k in ("a", "b", "c")]


def test_two_steps_of_gradient_descent_by_hand():
    # Plain gradient descent with step 1 on s, gradient g = 0.5 (1 - e^-s L).
    method = oil.uncertainty_weighting(optimizer=optax.sgd(1.0))
    state = method.init(LOSSES)
    # s = 0: weights 0.5 e^0 = 0.5 each.
    np.testing.assert_allclose(_weights(oil.loss_weights(state)), [0.5] * 3)
    update = jax.jit(method.update)
    weights, state = update(LOSSES, state)
    # g = 0.5 (1 - 4), 0.5 (1 - 1), 0.5 (1 - 0.25) = -1.5, 0, 0.375;
    # s = 1.5, 0, -0.375; w = 0.5 e^-1.5, 0.5, 0.5 e^0.375.
    np.testing.assert_allclose(
        _weights(weights), [0.1115650801, 0.5, 0.7274957073], rtol=1e-9
    )
    np.testing.assert_allclose(
        _weights(state.log_variances), [1.5, 0.0, -0.375], rtol=1e-12
    )
    weights, state = update(LOSSES, state)
    # g = 0.5 (1 - 4 e^-1.5) = 0.0537397, 0, 0.5 (1 - 0.25 e^0.375) = 0.3181261;
    # s = 1.4462603, 0, -0.6931261; w = 0.5 e^-s.
    np.testing.assert_allclose(
        _weights(weights), [0.1177245741, 0.5, 0.9999788928], rtol=1e-9
    )


def test_converges_to_weights_proportional_to_inverse_losses():
    # Stationary point of 0.5 (e^-s L + s): e^s = L, so w = 1 / (2 L).
    method = oil.uncertainty_weighting(learning_rate=0.1)

    def body(state, _):
        weights, state = method.update(LOSSES, state)
        return state, weights

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=1500))(
        method.init(LOSSES)
    )
    np.testing.assert_allclose(
        _weights(oil.loss_weights(state)), [0.125, 0.5, 2.0], rtol=1e-3
    )
    np.testing.assert_allclose(
        _weights(state.log_variances),
        [math.log(4.0), 0.0, math.log(0.25)],
        atol=1e-3,
    )
    # Proportional to 1 / L: w_i L_i is the same (1/2) for every term.
    products = [
        w * float(LOSSES[k])
        for w, k in zip(_weights(state.loss_weights), "abc", strict=True)
    ]
    np.testing.assert_allclose(products, [0.5] * 3, rtol=1e-3)


def test_weights_reproduce_the_parameter_gradient_of_the_objective():
    # d/dtheta 0.5 sum(e^-s L_i(theta) + s) = sum_i w_i dL_i/dtheta.
    s = jnp.asarray([0.3, -1.2, 2.0])

    def losses_of(theta):
        return {"a": theta**2, "b": jnp.sin(theta) + 2.0, "c": 3.0 * theta}

    def objective(theta):
        values = jnp.stack([losses_of(theta)[k] for k in "abc"])
        return 0.5 * jnp.sum(jnp.exp(-s) * values + s)

    weights = {k: 0.5 * jnp.exp(-s[i]) for i, k in enumerate("abc")}
    theta = jnp.asarray(0.7)
    expected = jax.grad(objective)(theta)
    got = jax.grad(lambda t: oil.weighted_sum(losses_of(t), weights))(theta)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_log_variance_floor_bounds_the_weight_of_a_zero_loss():
    method = oil.uncertainty_weighting(optimizer=optax.sgd(10.0), eps=1e-4)
    losses = {"a": jnp.asarray(0.0), "b": jnp.asarray(1.0)}
    state = method.init(losses)
    update = jax.jit(method.update)
    for _ in range(5):
        weights, state = update(losses, state)
    # g = 0.5 for a zero loss: s falls by 5 per step, floored at log(1e-4);
    # w = 0.5 / 1e-4 = 5000.
    np.testing.assert_allclose(float(weights["a"]), 5000.0, rtol=1e-9)
    np.testing.assert_allclose(float(state.log_variances["a"]), math.log(1e-4))


def test_inner_optimizer_state_hides_its_field_names():
    losses = {"pde": jnp.asarray(1.0), "bc": jnp.asarray(2.0)}
    tx = oil.with_weighting(optax.adam(1e-3), oil.uncertainty_weighting(), losses)
    opt_state = tx.init({"w": jnp.zeros(3)})
    # One weighting state, and one Adam count (the user's), not two.
    assert optax.tree.get(opt_state, "loss_weights") is not None
    assert optax.tree.get(opt_state, "count") is not None
    assert len(optax.tree_utils.tree_get_all_with_path(opt_state, "mu")) == 1
    _, opt_state = tx.update(
        {"w": jnp.ones(3)}, opt_state, {"w": jnp.zeros(3)}, losses=losses
    )
    assert int(optax.tree.get(opt_state, "count")) == 1


def test_custom_inner_optimizer_is_used():
    # SGD with step 0.5 moves s by half the step-1 values of the hand test above.
    method = oil.uncertainty_weighting(optimizer=optax.sgd(0.5))
    _, state = method.update(LOSSES, method.init(LOSSES))
    np.testing.assert_allclose(
        _weights(state.log_variances), [0.75, 0.0, -0.1875], rtol=1e-12
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"eps": -1.0}, "eps must be > 0"),
    ],
)
def test_bad_hyperparameters_are_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.uncertainty_weighting(**kwargs)
