"""Tests of softadapt, against values computed by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import scan_two_terms
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_invloss as oil
from optax_invloss._softadapt import backward_difference_coefficients

# Three terms over three steps: a rises then stays, b falls, c stays then falls.
STEPS = [
    {"a": 1.0, "b": 2.0, "c": 4.0},
    {"a": 1.5, "b": 1.0, "c": 4.0},
    {"a": 1.5, "b": 0.5, "c": 2.0},
]


def _run(method, steps):
    state = method.init(steps[0])
    update = jax.jit(method.update)
    out = []
    for losses in steps:
        weights, state = update(losses, state)
        out.append([float(weights[k]) for k in ("a", "b", "c")])
    return out, state


@pytest.mark.parametrize(
    "window, expected",
    [
        (2, (-1.0, 1.0)),
        (3, (1 / 2, -2.0, 3 / 2)),
        (4, (-1 / 3, 3 / 2, -3.0, 11 / 6)),
        (5, (1 / 4, -4 / 3, 3.0, -4.0, 25 / 12)),
    ],
)
def test_backward_stencils_match_the_tables(window, expected):
    # The standard backward-difference tables for the first derivative,
    # order of accuracy window - 1.
    np.testing.assert_allclose(
        backward_difference_coefficients(window), expected, rtol=1e-15
    )


def test_plain_variant_by_hand():
    weights, state = _run(oil.softadapt(beta=1.0, variant="plain"), STEPS)
    # Step 0: the window (2 values) is not full yet: equal weights 1/3.
    np.testing.assert_allclose(weights[0], [1 / 3] * 3, rtol=1e-12)
    # Step 1: slopes L(1) - L(0) = (0.5, -1, 0);
    # softmax: e^0.5, e^-1, e^0 = 1.648721, 0.367879, 1 (sum 3.016601).
    np.testing.assert_allclose(
        weights[1], [0.5465493873, 0.1219516523, 0.3314989604], rtol=1e-9
    )
    # Step 2: slopes (0, -0.5, -2); e^0, e^-0.5, e^-2 = 1, 0.606531, 0.135335
    # (sum 1.741866).
    np.testing.assert_allclose(
        weights[2], [0.5740969930, 0.3482074279, 0.0776955791], rtol=1e-9
    )
    assert int(state.weighting_step) == 3


def test_window_of_three_uses_the_second_order_stencil():
    steps = [
        {"a": 1.0, "b": 4.0, "c": 3.0},
        {"a": 2.0, "b": 2.0, "c": 3.0},
        {"a": 4.0, "b": 1.0, "c": 3.0},
    ]
    weights, _ = _run(oil.softadapt(beta=1.0, window=3, variant="plain"), steps)
    # Steps 0 and 1: window not full, 1/3 each.
    np.testing.assert_allclose(weights[:2], [[1 / 3] * 3] * 2, rtol=1e-12)
    # Step 2: slope = L(t-2)/2 - 2 L(t-1) + 3 L(t)/2:
    # a: 0.5 - 4 + 6 = 2.5; b: 2 - 4 + 1.5 = -0.5; c: 1.5 - 6 + 4.5 = 0.
    # softmax(2.5, -0.5, 0): e^2.5 = 12.182494, e^-0.5 = 0.606531, 1 (sum 13.789025).
    np.testing.assert_allclose(
        weights[2], [0.8834920740, 0.0439864803, 0.0725214457], rtol=1e-9
    )


def test_normalized_variant_by_hand():
    weights, _ = _run(oil.softadapt(beta=1.0, variant="normalized"), STEPS[:2])
    np.testing.assert_allclose(weights[0], [1 / 3] * 3, rtol=1e-12)
    # Slopes (0.5, -1, 0), sum of |s| = 1.5: normalised (1/3, -2/3, 0);
    # e^(1/3), e^(-2/3), e^0 = 1.395612, 0.513417, 1 (sum 2.909029).
    np.testing.assert_allclose(
        weights[1], [0.4797518911, 0.1764908576, 0.3437572513], rtol=1e-9
    )


def test_default_is_normalized_and_does_not_saturate_on_large_losses():
    # PINN-sized losses: a rises 1000 -> 1100, b falls 1000 -> 900, c flat.
    steps = [
        {"a": 1000.0, "b": 1000.0, "c": 1000.0},
        {"a": 1100.0, "b": 900.0, "c": 1000.0},
    ]
    default, _ = _run(oil.softadapt(), steps)
    # Normalised slopes (0.5, -0.5, 0), beta 0.1: e^0.05, e^-0.05, 1, normalised.
    e = np.exp([0.05, -0.05, 0.0])
    np.testing.assert_allclose(default[1], e / e.sum(), rtol=1e-9)
    plain, _ = _run(oil.softadapt(variant="plain"), steps)
    # Plain slopes (100, -100, 0), beta 0.1: e^10 : e^-10 : 1, saturated on a.
    assert plain[1][0] > 0.9999


def test_normalized_variant_keeps_the_sign_when_all_losses_fall():
    # Slopes (-1, -2, -4): divided by the sum of |s| (7) they stay negative and
    # the slowest-falling term (a) gets the largest weight. (Dividing by the
    # plain sum, -7, as the authors' package does, would flip them.)
    steps = [{"a": 2.0, "b": 3.0, "c": 5.0}, {"a": 1.0, "b": 1.0, "c": 1.0}]
    weights, _ = _run(oil.softadapt(beta=1.0, variant="normalized"), steps)
    assert weights[1][0] > weights[1][1] > weights[1][2]


def test_normalized_variant_with_flat_losses_gives_equal_weights():
    steps = [{"a": 1.0, "b": 2.0, "c": 3.0}] * 2
    weights, _ = _run(oil.softadapt(beta=5.0, variant="normalized"), steps)
    np.testing.assert_allclose(weights[1], [1 / 3] * 3, rtol=1e-12)


def test_loss_weighted_variant_by_hand():
    weights, _ = _run(oil.softadapt(beta=1.0, variant="loss_weighted"), STEPS[:2])
    np.testing.assert_allclose(weights[0], [1 / 3] * 3, rtol=1e-12)
    # Slopes (0.5, -1, 0), window means (1.25, 1.5, 4):
    # 1.25 e^0.5 = 2.060902, 1.5 e^-1 = 0.551819, 4 e^0 = 4 (sum 6.612721).
    np.testing.assert_allclose(
        weights[1], [0.3116571327, 0.0834481271, 0.6048947402], rtol=1e-9
    )


def test_loss_weighted_variant_with_zero_losses_gives_equal_weights():
    steps = [{"a": 0.0, "b": 0.0, "c": 0.0}] * 2
    weights, _ = _run(oil.softadapt(variant="loss_weighted"), steps)
    np.testing.assert_allclose(weights[1], [1 / 3] * 3, rtol=1e-12)


def test_update_every_holds_the_weights_in_between():
    steps = STEPS + [{"a": 1.5, "b": 0.5, "c": 1.0}]
    weights, _ = _run(oil.softadapt(beta=1.0, update_every=2, variant="plain"), steps)
    # The window is full at step 1, so the weights are recomputed on steps 1 and 3.
    np.testing.assert_allclose(weights[0], [1 / 3] * 3, rtol=1e-12)
    np.testing.assert_allclose(
        weights[1], [0.5465493873, 0.1219516523, 0.3314989604], rtol=1e-9
    )
    np.testing.assert_allclose(weights[2], weights[1], rtol=0)  # held
    # Step 3: slopes (0, 0, -1); e^0, e^0, e^-1 = 1, 1, 0.367879 (sum 2.367879).
    np.testing.assert_allclose(
        weights[3], [0.4223187982, 0.4223187982, 0.1553624036], rtol=1e-9
    )


def test_beta_zero_gives_equal_weights():
    weights, _ = _run(oil.softadapt(beta=0.0), STEPS)
    np.testing.assert_allclose(weights, [[1 / 3] * 3] * 3, rtol=1e-12)


@pytest.mark.parametrize("variant", ["plain", "normalized", "loss_weighted"])
def test_defaults_run_in_scan_and_sum_to_one(variant):
    state, weights = scan_two_terms(
        oil.softadapt(window=3, variant=variant),
        jnp.linspace(1.0, 0.1, 8),
        jnp.linspace(0.5, 0.4, 8),
    )
    total = weights["pde"] + weights["bc"]
    np.testing.assert_allclose(total, np.ones(8), rtol=1e-12)
    if variant != "loss_weighted":  # which also favours the larger pde loss
        # The slower-falling bc term gets the larger weight once the window is full.
        assert bool(jnp.all(weights["bc"][2:] > weights["pde"][2:]))
    assert int(state.weighting_step) == 8


_NORMALIZED = oil.softadapt(beta=3.0, window=2, variant="normalized")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.01, 100.0), min_size=6, max_size=6),
    st.floats(1e-3, 1e3),
)
def test_normalized_weights_do_not_depend_on_the_scale(values, scale):
    # One method instance, so that its jitted update compiles once.
    first = {"a": values[0], "b": values[1], "c": values[2]}
    second = {"a": values[3], "b": values[4], "c": values[5]}
    scaled = [{k: v * scale for k, v in d.items()} for d in (first, second)]
    w, _ = _run(_NORMALIZED, [first, second])
    w_scaled, _ = _run(_NORMALIZED, scaled)
    np.testing.assert_allclose(w_scaled[1], w[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 1}, "window must be an integer >= 2"),
        ({"window": 2.0}, "window must be an integer >= 2"),
        ({"variant": "soft"}, "variant must be one of"),
        ({"beta": float("nan")}, "beta must be a finite number"),
        ({"update_every": 0}, "update_every must be an integer >= 1"),
    ],
)
def test_bad_hyperparameters_are_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.softadapt(**kwargs)
