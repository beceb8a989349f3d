"""Tests of dwa (dynamic weight average), against values computed by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import scan_two_terms

import optax_invloss as oil


def _run(method, steps):
    state = method.init(steps[0])
    update = jax.jit(method.update)
    out = []
    for losses in steps:
        weights, state = update(losses, state)
        out.append([float(weights[k]) for k in ("a", "b", "c")])
    return np.asarray(out), state


STEPS = [
    {"a": 1.0, "b": 2.0, "c": 4.0},
    {"a": 0.5, "b": 2.0, "c": 2.0},
    {"a": 0.5, "b": 1.0, "c": 2.0},
]


def test_stepwise_form_by_hand():
    weights, state = _run(oil.dwa(temperature=1.0), STEPS)
    # Step 0: one average only, weights 1 each.
    np.testing.assert_allclose(weights[0], [1.0, 1.0, 1.0], rtol=1e-12)
    # Step 1: r = L(1) / L(0) = (0.5, 1, 0.5); e^0.5, e^1, e^0.5 =
    # 1.648721, 2.718282, 1.648721 (sum 6.015724) -> 3 * (0.274069, 0.451863, ...).
    np.testing.assert_allclose(
        weights[1], [0.8222058572, 1.3555882856, 0.8222058572], rtol=1e-9
    )
    # Step 2: r = (1, 0.5, 1); e^1, e^0.5, e^1 (sum 7.085285).
    np.testing.assert_allclose(
        weights[2], [1.1509551936, 0.6980896129, 1.1509551936], rtol=1e-9
    )
    np.testing.assert_allclose(weights.sum(axis=1), [3.0] * 3, rtol=1e-12)
    assert int(state.weighting_step) == 3


def test_default_temperature_two():
    weights, _ = _run(oil.dwa(), STEPS[:2])
    # r / T = (0.25, 0.5, 0.25): e^0.25, e^0.5, e^0.25 = 1.284025, 1.648721,
    # 1.284025 (sum 4.216772) -> 3 * (0.304505, 0.390991, 0.304505).
    np.testing.assert_allclose(
        weights[1], [0.9135130273, 1.1729739455, 0.9135130273], rtol=1e-9
    )


def test_averaging_window_by_hand():
    steps = [
        {"a": 1.0, "b": 2.0, "c": 4.0},
        {"a": 3.0, "b": 2.0, "c": 4.0},  # first average (2, 2, 4)
        {"a": 1.0, "b": 1.0, "c": 4.0},
        {"a": 1.0, "b": 1.0, "c": 2.0},  # second average (1, 1, 3)
        {"a": 1.0, "b": 1.0, "c": 2.0},
        {"a": 0.5, "b": 1.0, "c": 2.0},  # third average (0.75, 1, 2)
    ]
    weights, _ = _run(oil.dwa(temperature=1.0, window=2), steps)
    # Updates 0-2: fewer than two averages, weights 1 each.
    np.testing.assert_allclose(weights[:3], np.ones((3, 3)), rtol=1e-12)
    # Update 3: r = (1/2, 1/2, 3/4); e^0.5, e^0.5, e^0.75 = 1.648721, 1.648721,
    # 2.117000 (sum 5.414443) -> 3 * (0.304505, 0.304505, 0.390991).
    w3 = [0.9135130273, 0.9135130273, 1.1729739455]
    np.testing.assert_allclose(weights[3], w3, rtol=1e-9)
    np.testing.assert_array_equal(weights[4], weights[3])  # held mid-window
    # Update 5: r = (0.75 / 1, 1 / 1, 2 / 3); e^0.75, e^1, e^(2/3) = 2.117000,
    # 2.718282, 1.947734 (sum 6.783016).
    np.testing.assert_allclose(
        weights[5], [0.9363091811, 1.2022447864, 0.8614460325], rtol=1e-9
    )


def test_skipped_step_does_not_count_toward_the_window():
    method = oil.dwa(temperature=1.0, window=2)
    losses = {"a": 1.0, "b": 2.0, "c": 4.0}
    state = method.init(losses)
    _, state = method.update(losses, state)
    _, state = method.update(dict(losses, a=float("nan")), state)
    assert int(state.skipped_updates) == 1 and int(state.weighting_step) == 1
    # The window holds each loss divided by the window: 1 / 2.
    np.testing.assert_array_equal(float(state.window_loss_sum["a"]), 0.5)
    _, state = method.update(dict(losses, a=3.0), state)  # completes the window
    np.testing.assert_array_equal(float(state.latest_average["a"]), 2.0)


def test_zero_losses_keep_the_weights_finite():
    steps = [
        {"a": 0.0, "b": 1.0, "c": 0.0},
        {"a": 0.0, "b": 1.0, "c": 1.0},  # r = (0/0 -> 1, 1, 1/0 -> largest)
    ]
    for temperature in (2.0, 0.1):  # 0.1: (largest ratio) / T would overflow
        weights, _ = _run(oil.dwa(temperature=temperature), steps)
        assert np.all(np.isfinite(weights))
        np.testing.assert_allclose(weights[1], [0.0, 0.0, 3.0], atol=1e-12)


def test_defaults_run_in_scan():
    _, weights = scan_two_terms(
        oil.dwa(), jnp.linspace(1.0, 0.1, 6), jnp.linspace(0.5, 0.4, 6)
    )
    np.testing.assert_allclose(weights["pde"] + weights["bc"], np.full(6, 2.0))
    # bc falls relatively more slowly: it gets the larger weight from step 1 on.
    assert bool(jnp.all(weights["bc"][1:] > weights["pde"][1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"window": 0}, "window must be an integer >= 1"),
        ({"window": 1.5}, "window must be an integer >= 1"),
    ],
)
def test_bad_hyperparameters_are_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.dwa(**kwargs)
