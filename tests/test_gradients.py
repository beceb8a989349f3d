"""Tests for the shared per-term gradient machinery (optax_invloss/_gradients.py).

Also the one property all four gradient-based methods share: the per-term
gradients (or Jacobians) are evaluated only on the steps where an update is due.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _methods import toy_loss_fn, toy_params, toy_residual_fn

import optax_invloss as oil
from optax_invloss import _gradients, _numerics


def test_weight_matrix_mask_selects_leaves_with_two_or_more_dims():
    params = {
        "a": jnp.ones((2, 3)),
        "b": jnp.ones(3),
        "c": jnp.ones(()),
        "d": [jnp.ones((1, 1, 2))],
    }
    mask = oil.weight_matrix_mask(params)
    assert mask == {"a": True, "b": False, "c": False, "d": [True]}


def test_last_layer_mask_uses_natural_order_of_names():
    # Lexicographic order would put Dense_10 before Dense_2; natural order does not.
    params = {
        f"Dense_{i}": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
        for i in (0, 1, 2, 10)
    }
    mask = oil.last_layer_mask(params)
    selected = [(k, j) for k, v in mask.items() for j, flag in v.items() if flag]
    assert selected == [("Dense_10", "kernel")]


def test_last_layer_mask_on_a_list_of_layers():
    params = [(jnp.ones((2, 4)), jnp.ones(4)) for _ in range(12)] + [
        (jnp.ones((4, 1)), jnp.ones(1))
    ]
    mask = oil.last_layer_mask(params)
    flat = jax.tree.leaves(mask)
    assert flat.count(True) == 1 and flat[-2] is True  # the last W, not its bias


def test_last_layer_mask_on_flax_nnx_state():
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs) for _ in range(11)])
            self.layers.append(nnx.Linear(3, 1, rngs=rngs))

    state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    with_path = jax.tree_util.tree_flatten_with_path(oil.last_layer_mask(state))[0]
    selected = [jax.tree_util.keystr(p) for p, flag in with_path if flag]
    assert len(selected) == 1
    assert "11" in selected[0] and "kernel" in selected[0]


def test_last_layer_mask_without_a_matrix_raises():
    with pytest.raises(ValueError, match="no weight matrix"):
        oil.last_layer_mask({"w": jnp.ones(2), "b": jnp.ones(())})


def test_selected_leaves_none_callable_tree_and_prefix():
    params = {"W": jnp.ones((2, 2)), "b": jnp.ones(2), "n": jnp.asarray(3)}
    # None: every floating-point leaf; the int leaf is never selected.
    assert _gradients.selected_leaves(params, None, method="m") == [True, True, False]
    assert _gradients.selected_leaves(params, oil.weight_matrix_mask, method="m") == [
        True,
        False,
        False,
    ]
    tree = {"W": False, "b": True, "n": True}
    assert _gradients.selected_leaves(params, tree, method="m") == [False, True, False]
    # A prefix of the params' structure selects whole subtrees.
    nested = {"layer": {"W": jnp.ones((2, 2)), "b": jnp.ones(2)}, "out": jnp.ones(2)}
    flags = _gradients.selected_leaves(
        nested, {"layer": True, "out": False}, method="m"
    )
    assert flags == [True, True, False]


def test_selected_leaves_errors():
    params = {"w": jnp.ones(2), "b": jnp.ones(())}
    with pytest.raises(ValueError, match="needs the parameters"):
        _gradients.selected_leaves(None, None, method="lr_annealing")
    with pytest.raises(ValueError, match="selects no floating-point"):
        _gradients.selected_leaves(params, {"w": False, "b": False}, method="m")
    with pytest.raises(ValueError, match="does not match the structure"):
        _gradients.selected_leaves(params, {"w": True}, method="m")
    with pytest.raises(ValueError, match="mask must be None"):
        _gradients.check_mask(True)


@pytest.mark.parametrize("strategy", ["unrolled", "batched"])
def test_term_gradients_by_hand(strategy):
    # Gradients with respect to the selected leaves only (W; not b):
    #   a = sum(W**2) + b**2  ->  dW = 2 W = [[2, -4]]
    #   c = 3 * W[0, 1] + b   ->  dW = [[0, 3]]
    params = {"W": jnp.asarray([[1.0, -2.0]]), "b": jnp.asarray(5.0)}
    loss_fn = lambda p: {
        "a": jnp.sum(p["W"] ** 2) + p["b"] ** 2,
        "c": 3.0 * p["W"][0, 1] + p["b"],
    }
    losses = loss_fn(params)
    grads = _gradients.per_term_gradients(
        loss_fn, params, [True, False], losses, jnp.float64, method="m",
        strategy=strategy,
    )  # fmt: skip
    # One array per selected leaf (W only), the terms along the first axis.
    assert len(grads) == 1 and grads[0].shape == (2, 1, 2)
    np.testing.assert_array_equal(grads[0][0], [[2.0, -4.0]])
    np.testing.assert_array_equal(grads[0][1], [[0.0, 3.0]])
    assert grads[0].dtype == jnp.float64


def test_term_gradients_loss_fn_structure_must_match():
    params = {"w": jnp.ones(2)}
    losses = {"a": jnp.asarray(1.0), "b": jnp.asarray(1.0)}
    with pytest.raises(ValueError, match="loss_fn"):
        _gradients.per_term_gradients(
            lambda p: {"a": jnp.sum(p["w"])},
            params,
            [True],
            losses,
            jnp.float32,
            method="m",
        )


def test_ratio_or_never_divides_by_zero():
    num, den = jnp.asarray(3.0), jnp.asarray([2.0, 0.0, -1.0])
    np.testing.assert_array_equal(
        _numerics.ratio_or(num, den, jnp.asarray(7.0)), [1.5, 7.0, 7.0]
    )
    # The gradient through the unselected branch stays finite too.
    g = jax.grad(lambda d: _numerics.ratio_or(1.0, d, 0.0))(0.0)
    assert bool(jnp.isfinite(g))


# ----------------------------------------------------------------------------------
# Per-term gradients are computed only on update steps.

EVERY = 5
STEPS = 10


def _counted(fn, calls):
    def wrapped(params):
        jax.debug.callback(lambda: calls.append(None))
        return fn(params)

    return wrapped


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: oil.lr_annealing(update_every=EVERY, mask=None), "loss_fn"),
        (lambda: oil.grad_norm_balance(update_every=EVERY), "loss_fn"),
        (lambda: oil.gradnorm(update_every=EVERY, mask=None), "loss_fn"),
        (lambda: oil.ntk_weights(update_every=EVERY, chunk_size=4), "residual_fn"),
    ],
    ids=["lr_annealing", "grad_norm_balance", "gradnorm", "ntk_weights"],
)
def test_gradients_are_evaluated_only_on_update_steps(make, key):
    method = make()
    params = toy_params(jnp.float64)
    calls = []
    fn = toy_loss_fn if key == "loss_fn" else toy_residual_fn
    counted = _counted(fn, calls)

    @jax.jit
    def run(params):
        state = method.init(toy_loss_fn(params))

        def body(state, scale):
            p = jax.tree.map(lambda x: x * scale, params)
            weights, state = method.update(
                toy_loss_fn(p), state, params=p, **{key: counted}
            )
            return state, weights

        return jax.lax.scan(body, state, jnp.linspace(1.0, 0.5, STEPS))

    state, weights = run(params)
    jax.effects_barrier()
    # Steps 0 and 5 of 0..9, not all ten: on each, one evaluation per term of
    # loss_fn (a jax.grad of each term alone), or one of residual_fn.
    per_update = len(toy_loss_fn(params)) if key == "loss_fn" else 1
    assert len(calls) == (STEPS // EVERY) * per_update
    assert int(state.weighting_step) == STEPS
    # The weights change only on update steps: after steps 0 and 5.
    w = np.stack(jax.tree.leaves(weights))
    changed = np.flatnonzero(np.any(np.diff(w, axis=1) != 0, axis=0)) + 1
    assert set(changed) <= {5}
