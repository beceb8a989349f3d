"""inverse_loss: hand-computed references, properties, options and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_invloss as oil

BARE = dict(ema_decay=0.0, update_every=1, min_weight=0.0, max_weight=1.0)


def _as_losses(values, names="abcdefgh"):
    return {names[i]: jnp.asarray(v, jnp.float64) for i, v in enumerate(values)}


def _weights(method, sequence, jit=True):
    """Feeds a sequence of loss vectors; returns the weight vectors after each."""
    state = method.init(_as_losses(sequence[0]))
    update = jax.jit(method.update) if jit else method.update
    out = []
    for values in sequence:
        weights, state = update(_as_losses(values), state)
        out.append([float(w) for w in jax.tree.leaves(weights)])
    return np.asarray(out), state


@pytest.mark.parametrize(
    "losses, expected",
    [
        # 1/L = (1, 4), sum 5.
        ((1.0, 0.25), (1 / 5, 4 / 5)),
        # 1/L = (0.5, 2, 10), sum 12.5.
        ((2.0, 0.5, 0.1), (0.04, 0.16, 0.8)),
        # 1/L = (1, 0.5, 0.25, 2, 4), sum 7.75.
        (
            (1.0, 2.0, 4.0, 0.5, 0.25),
            (1 / 7.75, 0.5 / 7.75, 0.25 / 7.75, 2 / 7.75, 4 / 7.75),
        ),
    ],
)
def test_bare_formula_by_hand(losses, expected):
    weights, _ = _weights(oil.inverse_loss(**BARE), [losses])
    np.testing.assert_allclose(weights[0], expected, rtol=1e-12)


def test_eps_floors_small_losses():
    # max(L, eps) = (0.01, 1): 1/L = (100, 1), sum 101.
    weights, _ = _weights(oil.inverse_loss(eps=1e-2, **BARE), [(0.0, 1.0)])
    np.testing.assert_allclose(weights[0], (100 / 101, 1 / 101), rtol=1e-12)


def test_ema_by_hand():
    # Step 0: the average starts at the first losses (1, 1): w = (1/2, 1/2).
    # Step 1: avg = 0.5 * (1, 1) + 0.5 * (3, 0.2) = (2, 0.6); 1/avg = (1/2, 5/3),
    #         sum 13/6: w = (3/13, 10/13).
    method = oil.inverse_loss(ema_decay=0.5, min_weight=0.0)
    weights, state = _weights(method, [(1.0, 1.0), (3.0, 0.2)])
    np.testing.assert_allclose(weights, [(0.5, 0.5), (3 / 13, 10 / 13)], rtol=1e-12)
    np.testing.assert_allclose(jax.tree.leaves(state.loss_average), (2.0, 0.6))


def test_update_every_holds_weights_while_the_average_moves():
    # K = 2, decay 0.5. Step 0: avg (1, 4), w = (4/5, 1/5).
    # Step 1: avg = (2.5, 2.5) but the weights are held at (4/5, 1/5).
    # Step 2: avg = 0.5 * (2.5, 2.5) + 0.5 * (0.5, 4.5) = (1.5, 3.5);
    #         1/avg = (2/3, 2/7), sum 20/21: w = (0.7, 0.3).
    method = oil.inverse_loss(ema_decay=0.5, update_every=2, min_weight=0.0)
    weights, state = _weights(method, [(1.0, 4.0), (4.0, 1.0), (0.5, 4.5)])
    np.testing.assert_allclose(
        weights, [(0.8, 0.2), (0.8, 0.2), (0.7, 0.3)], rtol=1e-12
    )
    assert int(state.weighting_step) == 3


def test_skipped_step_does_not_advance_the_schedule():
    # A NaN at step 1 is not counted: the next good losses are step 1, still held.
    method = oil.inverse_loss(update_every=2, min_weight=0.0)
    weights, state = _weights(
        method, [(1.0, 4.0), (np.nan, 1.0), (4.0, 1.0), (1.0, 1.0)]
    )
    np.testing.assert_allclose(
        weights, [(0.8, 0.2), (0.8, 0.2), (0.8, 0.2), (0.5, 0.5)], rtol=1e-12
    )
    assert int(state.skipped_updates) == 1 and int(state.weighting_step) == 3


def test_negative_loss_is_refused_not_weighted_by_one_over_eps():
    method = oil.inverse_loss(min_weight=0.0)
    weights, state = _weights(method, [(1.0, 3.0), (-1e-3, 1.0)])
    # The second update is skipped: the weights stay at (3/4, 1/4).
    np.testing.assert_allclose(weights[1], (0.75, 0.25), rtol=1e-12)
    assert int(state.skipped_updates) == 1


def test_caps_by_hand_floor_only():
    # 1/L = (1, 1e6, 1e6): the first term is floored at 0.1 and the other two
    # share the remaining 0.9 in their ratio 1:1.
    method = oil.inverse_loss(min_weight=0.1)
    weights, _ = _weights(method, [(1.0, 1e-6, 1e-6)])
    np.testing.assert_allclose(weights[0], (0.1, 0.45, 0.45), rtol=1e-12)


def test_caps_by_hand_floor_and_ceiling_keep_ratios_of_free_terms():
    # 1/L = (1, 2, 100, 0.1) with caps [0.1, 0.5]: the third term sits at the
    # ceiling 0.5, the fourth at the floor 0.1; the first two share 0.4 in the
    # ratio 1:2, i.e. (0.4/3, 0.8/3) = (0.1333, 0.2667), both inside the caps.
    method = oil.inverse_loss(min_weight=0.1, max_weight=0.5)
    weights, _ = _weights(method, [(1.0, 0.5, 0.01, 10.0)])
    np.testing.assert_allclose(weights[0], (0.4 / 3, 0.8 / 3, 0.5, 0.1), rtol=1e-12)


def test_default_floor_is_a_tenth_of_the_equal_share():
    # Two terms: floor 0.1 / 2 = 0.05. Five terms: floor 0.02.
    method = oil.inverse_loss()
    weights, _ = _weights(method, [(1.0, 1e-9)])
    np.testing.assert_allclose(weights[0], (0.05, 0.95), rtol=1e-9)
    weights, _ = _weights(method, [(1.0, 1e-9, 1e-9, 1e-9, 1e-9)])
    np.testing.assert_allclose(
        weights[0], (0.02, 0.245, 0.245, 0.245, 0.245), rtol=1e-9
    )


def test_nested_and_tuple_structures():
    method = oil.inverse_loss(min_weight=0.0)
    losses = {"pde": jnp.asarray(1.0), "bc": (jnp.asarray(0.5), jnp.asarray(0.5))}
    weights, _ = method.update(losses, method.init(losses))
    # 1/L = (2, 2, 1) in leaf order bc[0], bc[1], pde; sum 5.
    np.testing.assert_allclose(weights["bc"], (0.4, 0.4))
    np.testing.assert_allclose(weights["pde"], 0.2)


def test_init_takes_shapes_only():
    method = oil.inverse_loss()
    shapes = {"pde": jax.ShapeDtypeStruct((), jnp.float32), "bc": 0.0}
    state = method.init(shapes)
    assert state.loss_weights["pde"].dtype == jnp.float32
    np.testing.assert_allclose(jax.tree.leaves(oil.loss_weights(state)), (0.5, 0.5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0.0), "eps must be > 0, got eps = 0.0"),
        (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\), got ema_decay = 1.0"),
        (dict(ema_decay=-0.1), "ema_decay = -0.1"),
        (
            dict(update_every=0),
            "update_every must be an integer >= 1, got update_every = 0",
        ),
        (dict(update_every=2.5), "update_every = 2.5"),
        (dict(min_weight=-0.1), "min_weight = -0.1"),
        (dict(max_weight=1.5), "max_weight = 1.5"),
        (dict(max_weight=0.0), "max_weight = 0.0"),
        (dict(min_weight=0.6, max_weight=0.5), "min_weight must not exceed max_weight"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.inverse_loss(**kwargs)


@pytest.mark.parametrize(
    "kwargs, n", [(dict(min_weight=0.4), 3), (dict(max_weight=0.2), 4)]
)
def test_infeasible_caps_name_both_arguments_and_n(kwargs, n):
    method = oil.inverse_loss(**kwargs)
    with pytest.raises(ValueError, match=rf"min_weight.*max_weight.*n = {n}"):
        method.init(_as_losses([1.0] * n))


def test_empty_losses_are_an_error():
    with pytest.raises(ValueError, match="at least one loss term"):
        oil.inverse_loss().init({})


# ----------------------------------------------------------------------------------
# Properties.

positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
loss_lists = st.lists(positive, min_size=1, max_size=7)


@settings(max_examples=25, deadline=None)
@given(losses=loss_lists)
def test_bare_setting_equals_the_formula(losses):
    weights, _ = _weights(oil.inverse_loss(**BARE), [losses], jit=False)
    inverse = 1.0 / np.maximum(np.asarray(losses), 1e-12)
    np.testing.assert_allclose(weights[0], inverse / inverse.sum(), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    losses=loss_lists,
    lo_frac=st.floats(0.0, 1.0),
    hi_frac=st.floats(0.0, 1.0),
)
def test_weights_sum_to_one_and_respect_caps(losses, lo_frac, hi_frac):
    n = len(losses)
    lo = lo_frac / n  # n * lo <= 1
    hi = 1.0 / n + hi_frac * (1.0 - 1.0 / n)  # n * hi >= 1
    hi = max(hi, lo)
    weights, _ = _weights(
        oil.inverse_loss(min_weight=lo, max_weight=hi), [losses], jit=False
    )
    w = weights[0]
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-9)
    assert np.all(w >= lo - 1e-12) and np.all(w <= hi + 1e-12)


@settings(max_examples=40, deadline=None)
@given(losses=st.lists(positive, min_size=2, max_size=6), seed=st.integers(0, 1000))
def test_permuting_terms_permutes_weights(losses, seed):
    perm = np.random.default_rng(seed).permutation(len(losses))
    method = oil.inverse_loss(ema_decay=0.0, min_weight=0.05 / len(losses))
    w, _ = _weights(method, [losses], jit=False)
    w_perm, _ = _weights(method, [[losses[i] for i in perm]], jit=False)
    np.testing.assert_allclose(w_perm[0], w[0][perm], rtol=1e-9, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(losses=loss_lists, c=st.floats(1e-3, 1e3))
def test_scaling_all_losses_leaves_the_weights(losses, c):
    method = oil.inverse_loss(**BARE)
    w, _ = _weights(method, [losses], jit=False)
    w_scaled, _ = _weights(method, [[c * x for x in losses]], jit=False)
    np.testing.assert_allclose(w_scaled[0], w[0], rtol=1e-9)


@settings(max_examples=20, deadline=None)
@given(value=positive, n=st.integers(1, 8))
def test_equal_losses_give_equal_weights(value, n):
    w, _ = _weights(oil.inverse_loss(), [[value] * n], jit=False)
    np.testing.assert_allclose(w[0], np.full(n, 1.0 / n), rtol=1e-12)
