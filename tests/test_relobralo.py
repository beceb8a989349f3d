"""Tests of relobralo, against values computed by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import scan_two_terms

import optax_invloss as oil

# Three terms over three steps.
STEPS = [
    {"a": 1.0, "b": 2.0, "c": 4.0},
    {"a": 0.5, "b": 2.0, "c": 2.0},
    {"a": 0.5, "b": 1.0, "c": 2.0},
]
# Step-wise balances with T = 1 (3 * softmax of the ratios L(t) / L(t-1)):
# step 1, ratios (0.5, 1, 0.5): e^0.5, e^1, e^0.5 = 1.648721, 2.718282, 1.648721
#   (sum 6.015724) -> 3 * (0.274069, 0.451863, 0.274069)
BAL_1 = [0.8222058572, 1.3555882856, 0.8222058572]
# step 2, ratios (1, 0.5, 1): e^1, e^0.5, e^1 (sum 7.085285)
#   -> 3 * (0.383652, 0.232697, 0.383652)
BAL_2 = [1.1509551936, 0.6980896129, 1.1509551936]


def _run(method, steps):
    state = method.init(steps[0])
    update = jax.jit(method.update)
    out = []
    for losses in steps:
        weights, state = update(losses, state)
        out.append([float(weights[k]) for k in ("a", "b", "c")])
    return np.asarray(out), state


def _sequence(n_steps):
    t = np.arange(n_steps, dtype=np.float64)
    return [
        {"a": 1.0 / (1 + t[i]), "b": 2.0 * 0.9 ** t[i], "c": 1.0 + np.sin(t[i])}
        for i in range(n_steps)
    ]


def test_lookback_one_is_an_ema_of_the_stepwise_balance():
    # rho = 1 always: lambda(t) = alpha lambda(t-1) + (1 - alpha) bal(t, t-1).
    weights, state = _run(
        oil.relobralo(alpha=0.5, temperature=1.0, lookback=1.0), STEPS
    )
    # Step 0: no ratio yet, weights 1 each; L(0) recorded.
    np.testing.assert_allclose(weights[0], [1.0, 1.0, 1.0], rtol=1e-12)
    # Step 1: 0.5 * 1 + 0.5 * BAL_1.
    w1 = [0.9111029286, 1.1777941428, 0.9111029286]
    np.testing.assert_allclose(weights[1], w1, rtol=1e-9)
    # Step 2: 0.5 * w1 + 0.5 * BAL_2.
    w2 = [1.0310290611, 0.9379418778, 1.0310290611]
    np.testing.assert_allclose(weights[2], w2, rtol=1e-9)
    np.testing.assert_allclose(weights.sum(axis=1), [3.0] * 3, rtol=1e-12)
    np.testing.assert_array_equal(
        [float(state.initial_losses[k]) for k in "abc"], [1.0, 2.0, 4.0]
    )


def test_lookback_zero_keeps_no_history():
    # rho = 0 always: lambda(t) = alpha bal(t, 0) + (1 - alpha) bal(t, t-1).
    weights, _ = _run(oil.relobralo(alpha=0.5, temperature=1.0, lookback=0.0), STEPS)
    np.testing.assert_allclose(weights[0], [1.0, 1.0, 1.0], rtol=1e-12)
    # Step 1: L(0) = L(t-1), so both balances are BAL_1.
    np.testing.assert_allclose(weights[1], BAL_1, rtol=1e-9)
    # Step 2: ratios to L(0) = (1, 2, 4) are all 0.5, bal(2, 0) = (1, 1, 1);
    # 0.5 * 1 + 0.5 * BAL_2.
    np.testing.assert_allclose(
        weights[2], [1.0754775968, 0.8490448064, 1.0754775968], rtol=1e-9
    )


def test_alpha_zero_is_the_stepwise_balance():
    weights, _ = _run(oil.relobralo(alpha=0.0, temperature=1.0, lookback=0.5), STEPS)
    np.testing.assert_allclose(weights[1:], [BAL_1, BAL_2], rtol=1e-9)


def test_temperature_scales_the_ratios():
    # T = 2: step 1 ratios / T = (0.25, 0.5, 0.25): e^0.25, e^0.5, e^0.25 =
    # 1.284025, 1.648721, 1.284025 (sum 4.216772) -> 3 * (0.304505, 0.390991, ...).
    weights, _ = _run(oil.relobralo(alpha=0.0, temperature=2.0), STEPS[:2])
    np.testing.assert_allclose(
        weights[1], [0.9135130273, 1.1729739455, 0.9135130273], rtol=1e-9
    )


def test_each_step_is_one_of_the_two_draws():
    # With 0 < lookback < 1 every step takes one of the two branches.
    method = oil.relobralo(alpha=0.5, temperature=1.0, lookback=0.5, key=7)
    weights, _ = _run(method, STEPS)
    w1_keep = 0.5 * 1.0 + 0.5 * np.asarray(BAL_1)  # rho = 1
    w1_look = np.asarray(BAL_1)  # rho = 0: 0.5 * BAL_1 + 0.5 * BAL_1
    assert np.allclose(weights[1], w1_keep, rtol=1e-9) or np.allclose(
        weights[1], w1_look, rtol=1e-9
    )


def test_same_key_same_weights_different_key_different_draws():
    losses = jnp.asarray([[s[k] for k in "abc"] for s in _sequence(16)])

    def weights(key):
        method = oil.relobralo(alpha=0.9, lookback=0.5, key=key)

        def body(state, row):
            w, state = method.update(dict(zip("abc", row, strict=True)), state)
            return state, jnp.stack([w[k] for k in "abc"])

        state = method.init({k: 0.0 for k in "abc"})
        return np.asarray(jax.jit(lambda s: jax.lax.scan(body, s, losses))(state)[1])

    reference = weights(1)
    np.testing.assert_array_equal(weights(1), reference)
    # A seed, a typed key and legacy raw key data for the same seed agree.
    np.testing.assert_array_equal(weights(jax.random.key(1)), reference)
    np.testing.assert_array_equal(weights(jax.random.PRNGKey(1)), reference)
    # 15 draws at probability 1/2: two seeds agree on all of them with
    # probability 2^-15 (and these two, being fixed, never do).
    assert not np.array_equal(weights(2), reference)


@pytest.mark.parametrize("lookback", [0.0, 0.3, 0.9, 1.0])
def test_history_is_kept_with_probability_lookback(lookback):
    # alpha = 1: lambda(1) = rho * 1 + (1 - rho) * bal(1, 0), and bal(1, 0) is
    # not 1 for losses (1, 2) after (1, 1). Over 4000 keys the share of rho = 1
    # is lookback within 5 standard deviations (0.04 at most), exactly at 0, 1.
    method = oil.relobralo(alpha=1.0, temperature=1.0, lookback=lookback)
    state = method.init({"a": 0.0, "b": 0.0})
    keys = jax.random.key_data(jax.random.split(jax.random.key(11), 4000))

    def second_weight(key):
        s = state._replace(lookback_key=key)
        _, s = method.update({"a": 1.0, "b": 1.0}, s)
        w, _ = method.update({"a": 1.0, "b": 2.0}, s)
        return w["a"]

    kept = np.asarray(jax.jit(jax.vmap(second_weight))(keys)) == 1.0
    bound = 5 * np.sqrt(lookback * (1 - lookback) / kept.size)
    assert abs(kept.mean() - lookback) <= bound, (kept.mean(), lookback)


def test_default_key_is_fixed():
    steps = _sequence(10)
    w1, s1 = _run(oil.relobralo(lookback=0.5), steps)
    w2, s2 = _run(oil.relobralo(lookback=0.5), steps)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(s1.lookback_key, s2.lookback_key)
    assert s1.lookback_key.dtype == jnp.uint32


def test_defaults_run_in_scan_and_sum_to_n():
    state, weights = scan_two_terms(
        oil.relobralo(), jnp.linspace(1.0, 0.1, 12), jnp.linspace(0.5, 0.4, 12)
    )
    np.testing.assert_allclose(
        weights["pde"] + weights["bc"], np.full(12, 2.0), rtol=1e-12
    )
    # bc falls more slowly than pde: it gains weight.
    assert float(weights["bc"][-1]) > 1.0 > float(weights["pde"][-1])
    assert int(state.weighting_step) == 12


def test_zero_losses_keep_the_weights_finite():
    steps = [
        {"a": 0.0, "b": 1.0, "c": 1.0},
        {"a": 0.0, "b": 0.0, "c": 1.0},  # a: 0 / 0 counts as 1; b: 0 / 1 = 0
        {"a": 1.0, "b": 0.0, "c": 1.0},  # a: 1 / 0 -> the largest ratio
    ]
    weights, _ = _run(oil.relobralo(alpha=0.0, temperature=1.0), steps)
    assert np.all(np.isfinite(weights))
    # Step 1: ratios (1, 0, 1): e, 1, e (sum 2e + 1) -> 3 e / (2e + 1) for a and c.
    np.testing.assert_allclose(weights[1], [1.2669564, 0.4660872, 1.2669564], rtol=1e-7)
    # Step 2: a takes the whole step-wise share.
    np.testing.assert_allclose(weights[2], [3.0, 0.0, 0.0], atol=1e-12)
    # Also with a temperature below 1, where (largest ratio) / T would overflow.
    weights, _ = _run(oil.relobralo(alpha=0.0, temperature=0.1), steps)
    np.testing.assert_allclose(weights[2], [3.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 1.5}, "alpha must be in"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"lookback": -0.1}, "lookback must be in"),
        ({"key": "seed"}, "key must be"),
        ({"key": jnp.ones(2)}, "key must be"),
        ({"key": True}, "key must be"),
    ],
)
def test_bad_hyperparameters_are_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.relobralo(**kwargs)
