"""Tests of resnorm against values computed by hand (METHODS_NEXT.md section 11)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil
from optax_invloss import _resnorm

LOSSES = {"pde": jnp.asarray(1.0), "bc": jnp.asarray(4.0)}


def _vec(tree):
    return np.asarray([float(tree["pde"]), float(tree["bc"])])


def _state_at(method, weights, initial, losses=LOSSES):
    """A state past step 0 with the given weights and initial losses."""
    state = method.init(losses)
    log_w = {k: jnp.log(jnp.asarray(v, jnp.float64)) for k, v in weights.items()}
    return state._replace(
        loss_weights={k: jnp.asarray(v, jnp.float64) for k, v in weights.items()},
        log_weights=log_w,
        initial_losses={k: jnp.asarray(v, jnp.float64) for k, v in initial.items()},
        weighting_step=jnp.asarray(1, jnp.int32),
    )


def test_targets_by_hand():
    # L = (1, 4), L(0) = (1, 4): r = (1, 1), mean L = 2.5, so both targets 2.5.
    t = _resnorm.targets(jnp.asarray([1.0, 4.0]), jnp.asarray([1.0, 4.0]), 1.0, 1e-12)
    np.testing.assert_allclose(t, [2.5, 2.5])
    # L = (0.5, 4), L(0) = (1, 4): progress (0.5, 1), mean 0.75, r = (2/3, 4/3),
    # mean L = 2.25: targets (1.5, 3.0); alpha = 2: 2.25 (4/9, 16/9) = (1, 4).
    t = _resnorm.targets(jnp.asarray([0.5, 4.0]), jnp.asarray([1.0, 4.0]), 1.0, 1e-12)
    np.testing.assert_allclose(t, [1.5, 3.0])
    t = _resnorm.targets(jnp.asarray([0.5, 4.0]), jnp.asarray([1.0, 4.0]), 2.0, 1e-12)
    np.testing.assert_allclose(t, [1.0, 4.0])
    # alpha = 0: the mean loss for every term.
    t = _resnorm.targets(jnp.asarray([0.5, 4.0]), jnp.asarray([1.0, 4.0]), 0.0, 1e-12)
    np.testing.assert_allclose(t, [2.25, 2.25])
    # All losses 0: r = 1, targets 0 (no NaN).
    t = _resnorm.targets(jnp.zeros(2), jnp.asarray([1.0, 4.0]), 1.0, 1e-12)
    np.testing.assert_array_equal(t, [0.0, 0.0])


def test_first_step_gradient_is_minus_one_plus_four():
    # w = (1, 1), w L = (1, 4), targets (2.5, 2.5): g = sign(wL - T) w L = (-1, 4).
    # SGD with momentum keeps the gradient of its first step as its trace.
    method = oil.resnorm(optimizer=optax.sgd(1e-3, momentum=0.5))
    weights, state = jax.jit(method.update)(LOSSES, method.init(LOSSES))
    (trace,) = state.log_weight_optimizer_state
    np.testing.assert_allclose(trace, [4.0, -1.0])  # leaf order: bc, pde
    np.testing.assert_allclose(_vec(state.initial_losses), [1.0, 4.0])
    # lambda = -1e-3 g = (1e-3, -4e-3), renormalised: w = 2 softmax(lambda).
    lam = np.asarray([1e-3, -4e-3])
    np.testing.assert_allclose(_vec(weights), 2 * np.exp(lam) / np.exp(lam).sum())


def test_first_sign_step_by_hand():
    method = oil.resnorm(learning_rate=0.1)
    state = method.init(LOSSES)
    np.testing.assert_allclose(_vec(oil.loss_weights(state)), [1.0, 1.0])
    weights, state = method.update(LOSSES, state)
    # sign(g) = (-1, +1): lambda = (0.1, -0.1), then renormalised (sum w = 2).
    expected = 2 * np.exp([0.1, -0.1]) / (np.exp(0.1) + np.exp(-0.1))
    np.testing.assert_allclose(_vec(weights), expected, rtol=1e-12)
    np.testing.assert_allclose(_vec(state.log_weights), np.log(expected), rtol=1e-12)
    assert math.isclose(sum(_vec(weights)), 2.0)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_fixed_point_one_point_six_zero_point_four(alpha):
    # w = (1.6, 0.4): w L = (1.6, 1.6) < targets (2.5, 2.5); both lambdas move
    # up by one step and the renormalisation undoes the common shift.
    method = oil.resnorm(alpha=alpha, learning_rate=0.05)
    state = _state_at(method, {"pde": 1.6, "bc": 0.4}, {"pde": 1.0, "bc": 4.0})
    weights, state = method.update(LOSSES, state)
    np.testing.assert_allclose(_vec(weights), [1.6, 0.4], rtol=1e-12)
    np.testing.assert_allclose(_vec(oil.loss_weights(state)), [1.6, 0.4], rtol=1e-12)


def test_from_equal_weights_it_stops_where_a_term_meets_its_target():
    # Fixed L = (1, 4): the sign step raises w_pde until 4 w_bc < 2.5, i.e. the
    # minimiser (1.375, 0.625) of |w1 - 2.5| + |4 w2 - 2.5| on w1 + w2 = 2, and
    # then chatters there by about one step. It does not reach (1.6, 0.4).
    lr = 1e-3
    method = oil.resnorm(learning_rate=lr)

    def body(state, _):
        weights, state = method.update(LOSSES, state)
        return state, weights

    _, weights = jax.jit(lambda s: jax.lax.scan(body, s, None, length=1000))(
        method.init(LOSSES)
    )
    last = np.stack([np.asarray(weights["pde"][-50:]), np.asarray(weights["bc"][-50:])])
    np.testing.assert_allclose(last[1], 0.625, atol=2 * lr)
    np.testing.assert_allclose(last.sum(axis=0), 2.0, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_zero_rests_at_inverse_loss_weights(seed):
    # alpha = 0: targets mean(L); the inverse-loss weights times n put every
    # w_i L_i at the harmonic mean, below the mean: a rest point of the step.
    rng = np.random.default_rng(seed)
    values = 10.0 ** rng.uniform(-4, 2, size=3)
    losses = dict(zip(("a", "b", "c"), map(jnp.asarray, values), strict=True))
    inverse = oil.inverse_loss(min_weight=0.0)
    w_inv, _ = inverse.update(losses, inverse.init(losses))
    expected = {k: 3.0 * float(v) for k, v in w_inv.items()}
    method = oil.resnorm(alpha=0.0, learning_rate=0.01)
    # Any initial losses: at alpha = 0 they do not enter the targets.
    initial = dict(zip(losses, map(float, 10.0 ** rng.uniform(-4, 2, 3)), strict=True))
    state = _state_at(method, expected, initial, losses)
    weights, _ = method.update(losses, state)
    for k in losses:
        np.testing.assert_allclose(float(weights[k]), expected[k], rtol=1e-10)
    # And w_i L_i is the same for every term: n / sum(1 / L).
    harmonic = 3.0 / np.sum(1.0 / values)
    for k, v in zip(losses, values, strict=True):
        np.testing.assert_allclose(float(weights[k]) * v, harmonic, rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_weights_proportional_to_rate_over_loss_rest(seed):
    # General alpha: w_i proportional to r_i^alpha / L_i is at rest.
    rng = np.random.default_rng(seed)
    values, initial = 10.0 ** rng.uniform(-3, 1, (2, 3))
    alpha = float(rng.uniform(0.0, 2.0))
    progress = values / initial
    rate = progress / progress.mean()
    w = rate**alpha / values
    w = 3.0 * w / w.sum()
    names = ("a", "b", "c")
    losses = dict(zip(names, map(jnp.asarray, values), strict=True))
    method = oil.resnorm(alpha=alpha, learning_rate=0.01)
    state = _state_at(
        method,
        dict(zip(names, w, strict=True)),
        dict(zip(names, initial, strict=True)),
        losses,
    )
    weights, _ = method.update(losses, state)
    np.testing.assert_allclose([float(weights[k]) for k in names], w, rtol=1e-10)


def test_bad_hyperparameters_name_the_argument():
    with pytest.raises(ValueError, match="alpha"):
        oil.resnorm(alpha=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        oil.resnorm(alpha=math.inf)
    with pytest.raises(ValueError, match="learning_rate"):
        oil.resnorm(learning_rate=0.0)
    with pytest.raises(ValueError, match="eps"):
        oil.resnorm(eps=0.0)


def test_negative_loss_is_a_counted_skip():
    method = oil.resnorm()
    state = method.init(LOSSES)
    _, state = method.update(LOSSES, state)
    w, new = method.update({"pde": jnp.asarray(-1.0), "bc": LOSSES["bc"]}, state)
    assert int(new.skipped_updates) == 1
    assert int(new.weighting_step) == int(state.weighting_step)
    np.testing.assert_array_equal(_vec(w), _vec(state.loss_weights))
