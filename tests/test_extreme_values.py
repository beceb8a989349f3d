"""Losses anywhere in the floating-point range (issue 17), under jit and eagerly.

Every method gets losses from 0 and denormals up to the dtype's largest value,
with jumps between steps and constant histories, in float32 and float64, and
must return finite weights with the documented sum and caps, or a counted skip.
The paths around the methods (``nnx.Optimizer``, ``jax.pmap`` of a
``sharded`` update with uneven ``counts``) are in test_extreme_paths.py.

Each method is jitted once per dtype (same shapes, new values: no recompiles)
and the hypothesis budgets are small, to keep the file fast.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_invloss as oil

TERMS = ("a", "b", "c")
DTYPES = (jnp.float32, jnp.float64)
# The same positions in both lists, so that one drawn index is "denormal" or
# "largest finite" in either dtype.
EXTREMES = {
    jnp.float32: [0.0, 1e-45, 1e-40, 1e-38, 1e-30, 1e-10, 1.0, 2.0, 1e10, 1e12]
    + [1e30, 1e37, 3e38, float(np.finfo(np.float32).max)],
    jnp.float64: [0.0, 5e-324, 1e-310, 1e-300, 1e-30, 1e-10, 1.0, 2.0, 1e10, 1e12]
    + [1e30, 1e300, 3e38, float(np.finfo(np.float64).max)],
}
N_EXTREMES = len(EXTREMES[jnp.float32])
FAST = settings(max_examples=12, deadline=None, derandomize=True)


class Case:
    """A loss-value method and what its weights promise.

    ``total``: the documented sum of the weights (None: not normalised);
    ``caps``: ``(lo, hi)`` bounds on each weight.
    """

    def __init__(self, make, total=None, caps=(0.0, np.inf)):
        self.make, self.total, self.caps = make, total, caps


CASES = {
    "inverse_bare": Case(lambda: oil.inverse_loss(min_weight=0.0), 1.0, (0.0, 1.0)),
    "inverse_default": Case(lambda: oil.inverse_loss(), 1.0, (0.1 / 3, 1.0)),
    "inverse_ceiling": Case(
        lambda: oil.inverse_loss(max_weight=0.5), 1.0, (0.1 / 3, 0.5)
    ),
    "inverse_caps_ema_every2": Case(
        lambda: oil.inverse_loss(
            min_weight=0.2, max_weight=0.4, ema_decay=0.9, update_every=2
        ),
        1.0,
        (0.2, 0.4),
    ),
    "softadapt_plain": Case(lambda: oil.softadapt(beta=5.8, variant="plain"), 1.0),
    "softadapt_normalized_window4": Case(
        lambda: oil.softadapt(beta=1.0, window=4), 1.0
    ),
    "softadapt_loss_weighted_window3": Case(
        lambda: oil.softadapt(beta=0.3, window=3, variant="loss_weighted"), 1.0
    ),
    "relobralo": Case(lambda: oil.relobralo(lookback=0.5, temperature=0.1), 3.0),
    "dwa": Case(lambda: oil.dwa(temperature=0.1), 3.0),
    "dwa_window2": Case(lambda: oil.dwa(window=2), 3.0),
    "uncertainty_weighting": Case(
        lambda: oil.uncertainty_weighting(learning_rate=0.1), None, (0.0, 0.5e12)
    ),
    "static_weights": Case(
        lambda: oil.static_weights(
            {"a": 1.0, "b": 2.0, "c": 3.0},
            schedules={"b": optax.linear_schedule(0.0, 1.0, 3)},
        ),
        None,
        (0.0, 3.0),
    ),
}


@functools.cache
def _method(name: str, dtype, jit: bool):
    method = CASES[name].make()
    update = jax.jit(method.update) if jit else method.update
    init = method.init({k: jnp.zeros((), dtype) for k in TERMS})
    return update, init


def _losses(values, dtype):
    return {k: jnp.asarray(v, dtype) for k, v in zip(TERMS, values, strict=True)}


def _check_state(state, dtype):
    for leaf in jax.tree.leaves(state):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating):
            assert leaf.dtype == dtype
            assert np.all(np.isfinite(leaf)), state


def _check(name, weights, state, dtype):
    case = CASES[name]
    w = np.asarray([weights[k] for k in TERMS], np.float64)
    assert all(weights[k].dtype == dtype for k in TERMS)
    assert np.all(np.isfinite(w)), (name, w)
    lo, hi = case.caps
    tol = 1e-6 if dtype == jnp.float32 else 1e-12
    assert np.all(w >= lo - tol) and np.all(w <= hi * (1 + tol) + tol), (name, w)
    if case.total is not None:
        np.testing.assert_allclose(w.sum(), case.total, rtol=10 * tol, err_msg=name)
    _check_state(state, dtype)


def _run(name, dtype, jit, steps):
    update, state = _method(name, dtype, jit)
    for values in steps:
        weights, state = update(_losses(values, dtype), state)
        _check(name, weights, state, dtype)
    # Finite non-negative losses are never refused.
    assert int(state.skipped_updates) == 0
    return weights, state


# Steps of three losses, each an extreme of the dtype or any float32 number.
value_index = st.integers(0, N_EXTREMES - 1)
steps_strategy = st.lists(
    st.tuples(value_index, value_index, value_index), min_size=5, max_size=5
)


def _values(steps, dtype):
    return [[EXTREMES[dtype][i] for i in step] for step in steps]


@pytest.mark.parametrize("name", sorted(CASES))
@FAST
@given(steps=steps_strategy)
def test_extreme_losses_and_jumps_give_finite_documented_weights(name, steps):
    for dtype in DTYPES:
        _run(name, dtype, True, _values(steps, dtype))


# Every extreme at least once, with jumps of the whole range between steps.
EAGER_STEPS = [(0, 1, 12), (12, 0, 6), (4, 9, 13), (6, 6, 6), (13, 3, 0), (2, 13, 10)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_extreme_losses_eagerly(name):
    _run(name, jnp.float32, False, _values(EAGER_STEPS, jnp.float32))


# ----------------------------------------------------------------------------------
# Constant histories: zero slopes and unit ratios at every window.

CONSTANT_CASES = [("softadapt", w, "plain") for w in (2, 3, 4, 5, 6)]
CONSTANT_CASES += [("softadapt", 4, "normalized"), ("softadapt", 6, "normalized")]
CONSTANT_CASES += [("softadapt", 4, "loss_weighted")]
CONSTANT_CASES += [("dwa", 1, None), ("dwa", 3, None), ("relobralo", 1, None)]
# Eagerly too for these (the others under jit only, to keep the file fast).
EAGER_CONSTANT = {("softadapt", 4, "normalized"), ("dwa", 3, None)}


@functools.cache
def _constant_method(kind, window, variant, dtype, jit):
    if kind == "softadapt":
        method = oil.softadapt(beta=1.0, window=window, variant=variant)
    elif kind == "dwa":
        method = oil.dwa(temperature=0.5, window=window)
    else:
        method = oil.relobralo(lookback=0.5)
    update = jax.jit(method.update) if jit else method.update
    return update, method.init({k: jnp.zeros((), dtype) for k in TERMS})


@pytest.mark.parametrize("kind, window, variant", CONSTANT_CASES)
@settings(max_examples=5, deadline=None, derandomize=True)
@given(indices=st.tuples(value_index, value_index, value_index))
def test_constant_losses_give_the_documented_weights(kind, window, variant, indices):
    steps = 2 * window + 1  # fills softadapt's window and two DWA windows
    eager = (kind, window, variant) in EAGER_CONSTANT
    for dtype in DTYPES:
        for jit in (True, False) if dtype == jnp.float32 and eager else (True,):
            values = [EXTREMES[dtype][i] for i in indices]
            update, state = _constant_method(kind, window, variant, dtype, jit)
            for _ in range(steps):
                weights, state = update(_losses(values, dtype), state)
            w = np.asarray([weights[k] for k in TERMS])
            assert int(state.skipped_updates) == 0
            _check_state(state, dtype)
            if kind != "softadapt":
                # Every ratio is 1 (0 / 0 counts as 1) up to the rounding of the
                # window's average, which XLA may fuse differently in the step
                # that completes a window and in the one after: not amplified.
                eps = np.finfo(dtype).eps
                np.testing.assert_allclose(w, np.ones(3), rtol=4 * eps, atol=0)
            elif variant != "loss_weighted":  # all slopes zero: exactly equal
                np.testing.assert_array_equal(w, np.full(3, 1 / 3, dtype))
            else:  # w_i proportional to the (constant) mean loss
                x = np.asarray(values, np.float64)
                x = x * (x >= np.finfo(dtype).tiny)  # XLA flushes denormals
                x = x / x.max() if x.max() > 0 else np.ones(3)  # no overflow
                expected = x / x.sum()
                np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------
# The cases of issue 17, with the weights worked out by hand.

BIG = 3e38


@pytest.mark.parametrize(
    "make, steps, expected",
    [
        # Item 1: slopes (1e12 - 1, 0); beta * slope = 1e11: exp(-1e11) = 0.
        (
            lambda: oil.softadapt(beta=0.1, variant="plain"),
            [(1.0, 1.0), (1e12, 1.0)],
            (1.0, 0.0),
        ),
        (
            lambda: oil.softadapt(beta=0.3, variant="plain"),
            [(1.0, 1.0), (1e10, 1.0)],
            (1.0, 0.0),
        ),
        (
            lambda: oil.softadapt(beta=0.1, variant="loss_weighted"),
            [(1.0, 1.0), (1e12, 1.0)],
            (1.0, 0.0),
        ),
        # Item 2: the second-order slope of (1, 1, 3e38) is 4.5e38 (it overflows
        # float32), normalised to 1 against 0: softmax(0.1, 0).
        (
            lambda: oil.softadapt(window=3),
            [(1.0, 1.0), (1.0, 1.0), (BIG, 1.0)],
            (1 / (1 + np.exp(-0.1)), 1 / (1 + np.exp(0.1))),
        ),
        (
            lambda: oil.softadapt(beta=2.0, variant="plain"),
            [(1.0, 1.0), (BIG, 1.0)],
            (1.0, 0.0),
        ),
        (
            lambda: oil.softadapt(variant="loss_weighted"),
            [(1.0, 1.0), (BIG, 1.0)],
            (1.0, 0.0),
        ),
        (
            lambda: oil.softadapt(variant="loss_weighted"),
            [(BIG, BIG), (BIG, BIG)],
            (0.5, 0.5),
        ),
        # Both averages are 3e38 and 1 in every window: ratios 1, weights 1.
        (lambda: oil.dwa(window=2), [(BIG, 1.0)] * 4, (1.0, 1.0)),
        # Item 3: the zero loss is floored at eps = 1e-12 and takes the ceiling;
        # the other two share the rest equally.
        (
            lambda: oil.inverse_loss(max_weight=0.5),
            [(0.0, 1e26, 1e26)],
            (0.5, 0.25, 0.25),
        ),
        (
            lambda: oil.inverse_loss(min_weight=0.2, max_weight=0.4),
            [(0.0, 1e26, 1e26)],
            (0.4, 0.3, 0.3),
        ),
        (
            lambda: oil.inverse_loss(max_weight=0.5),
            [(0.0, BIG, 1.0)],
            (0.5, 0.1 / 3, 0.5 - 0.1 / 3),
        ),
        # Item 4: constant losses, window 4: all slopes zero, equal weights.
        (
            lambda: oil.softadapt(beta=1.0, window=4, variant="normalized"),
            [(2.0, 1.0, 5.0)] * 4,
            (1 / 3, 1 / 3, 1 / 3),
        ),
    ],
)
def test_the_cases_of_issue_17(make, steps, expected):
    for dtype, jit in ((jnp.float32, True), (jnp.float32, False), (jnp.float64, True)):
        method = make()
        names = [f"t{i}" for i in range(len(steps[0]))]
        state = method.init({k: jnp.zeros((), dtype) for k in names})
        update = jax.jit(method.update) if jit else method.update
        for values in steps:
            losses = {
                k: jnp.asarray(v, dtype) for k, v in zip(names, values, strict=True)
            }
            weights, state = update(losses, state)
        w = [float(weights[k]) for k in names]
        np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
        assert int(state.skipped_updates) == 0
        _check_state(state, dtype)


# ----------------------------------------------------------------------------------
# Gradient-based methods: per-term scales from 1e-30 to 3e38.

SCALES = [1e-30, 1e-10, 1.0, 1e10, 1e20, 1e30, 3e38]
INPUT = np.asarray([1.0, 0.5])


def _params(dtype):
    return {
        "W": jnp.asarray([[0.3, -0.2], [0.1, 0.4]], dtype),
        "b": jnp.asarray([0.1, -0.1], dtype),
    }


def _hidden(p):
    return jnp.tanh(p["W"] @ jnp.asarray(INPUT, p["W"].dtype) + p["b"])


def _loss_fn(scale):
    """Two terms of size ``scale * (0.5 +- 0.25)``; gradients about as large."""

    def loss_fn(p):
        h = _hidden(p)
        return {
            "pde": scale[0] * (0.5 + 0.25 * jnp.sin(h[0] + h[1])),
            "bc": scale[1] * (0.5 + 0.25 * jnp.cos(h[0] - 2.0 * h[1])),
        }

    return loss_fn


def _residual_fn(scale):
    """Residuals (and Jacobian entries) of size ``scale``: traces of ``scale**2``."""

    def residual_fn(p):
        h = _hidden(p)
        x = jnp.linspace(-1.0, 1.0, 3, dtype=h.dtype)
        return {
            "pde": scale[0] * jnp.sin(h[0] * x + h[1]),
            "bc": scale[1] * jnp.cos(h[1] - x[:2]),
        }

    return residual_fn


GRADIENT_CASES = {
    "grad_norm_balance": (lambda: oil.grad_norm_balance(update_every=1), "loss"),
    "lr_annealing": (lambda: oil.lr_annealing(update_every=1, mask=None), "loss"),
    "ntk_weights": (lambda: oil.ntk_weights(update_every=1), "residual"),
    "gradnorm_sgd": (lambda: oil.gradnorm(mask=None, optimizer=optax.sgd(0.1)), "loss"),
    "gradnorm_adam": (lambda: oil.gradnorm(mask=None), "loss"),
}


@functools.cache
def _gradient_method(name, dtype, jit):
    make, kind = GRADIENT_CASES[name]
    method = make()
    params = _params(dtype)

    def update(losses, state, scale):
        if kind == "loss":
            inputs = {"loss_fn": _loss_fn(scale)}
        else:
            inputs = {"residual_fn": _residual_fn(scale)}
        return method.update(losses, state, params=params, **inputs)

    losses = {"bc": jnp.zeros((), dtype), "pde": jnp.zeros((), dtype)}
    return (jax.jit(update) if jit else update), method.init(losses)


def _gradient_run(name, dtype, jit, scale):
    update, state = _gradient_method(name, dtype, jit)
    scale = jnp.asarray(scale, dtype)
    losses = _loss_fn(scale)(_params(dtype))
    if GRADIENT_CASES[name][1] == "residual":  # checked only: any finite values
        losses = {"pde": scale[0], "bc": scale[1]}
    for _ in range(2):
        weights, state = update(losses, state, scale)
    w = np.asarray([weights["bc"], weights["pde"]], np.float64)
    assert np.all(np.isfinite(w)) and np.all(w >= 0), (name, w)
    _check_state(state, dtype)
    return w, int(state.skipped_updates)


def _norms_at_unit_scale():
    """Each term's gradient norm at scale 1, in float64, by jax.grad + numpy."""
    fn = _loss_fn(jnp.ones(2, jnp.float64))
    params = _params(jnp.float64)
    out = {}
    for term in ("bc", "pde"):
        g = jax.grad(lambda p, t=term: fn(p)[t])(params)
        out[term] = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
    return out


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
@settings(max_examples=10, deadline=None, derandomize=True)
@given(i=st.integers(0, len(SCALES) - 1), j=st.integers(0, len(SCALES) - 1))
def test_gradient_methods_stay_finite_on_large_losses(name, i, j):
    scale = (SCALES[i], SCALES[j])
    w, skipped = _gradient_run(name, jnp.float32, True, scale)
    spread = max(scale) / min(scale)
    if name in ("grad_norm_balance", "ntk_weights", "gradnorm_sgd"):
        assert skipped == 0, (name, scale)  # ratios out of range keep a weight
    elif name == "lr_annealing":
        # The weight is about the ratio of the scales: skipped only beyond the
        # range of float32.
        assert skipped == 0 or spread > 1e30, (name, scale)
    else:  # Adam on the weights squares gradient norms of size max(scale).
        assert skipped == 0 or max(scale) > 1e15, (name, scale)
    if scale[0] == scale[1] and name in ("grad_norm_balance", "lr_annealing"):
        # These weights do not depend on a common scale of the losses.
        unit, _ = _gradient_run(name, jnp.float32, True, (1.0, 1.0))
        np.testing.assert_allclose(w, unit, rtol=1e-5)
    if scale[0] == scale[1] and name == "ntk_weights":
        unit, _ = _gradient_run(name, jnp.float32, True, (1.0, 1.0))
        np.testing.assert_allclose(w, unit, rtol=1e-5)
    if name == "grad_norm_balance" and spread <= 1e30:
        # By hand: norms scale with the losses; two updates of 0.9 * w + 0.1 * est.
        norms = _norms_at_unit_scale()
        n = np.asarray([scale[1] * norms["bc"], scale[0] * norms["pde"]])
        estimate = n.sum() / n
        expected = 0.9 * (0.9 + 0.1 * estimate) + 0.1 * estimate
        np.testing.assert_allclose(w, expected, rtol=1e-4)


@pytest.mark.parametrize("name", ["grad_norm_balance", "ntk_weights"])
def test_gradient_methods_eagerly_and_in_float64(name):
    for dtype, jit in ((jnp.float32, False), (jnp.float64, True)):
        big, skipped = _gradient_run(name, dtype, jit, (3e38, 3e38))
        assert skipped == 0
        unit, _ = _gradient_run(name, jnp.float32, True, (1.0, 1.0))
        np.testing.assert_allclose(big, unit, rtol=1e-5)
