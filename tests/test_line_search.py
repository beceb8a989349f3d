"""Tests for optax_invloss/_line_search.py: resets, and with_weighting around L-BFGS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _toy_net import (
    BARE,
    DEFAULT,
    LINESEARCH_RTOL,
    lbfgs_steps,
    loss_fn,
    net_params,
)

import optax_invloss as oil
from optax_invloss import _line_search


def test_reset_lbfgs_gives_the_initial_lbfgs_state():
    opt = optax.lbfgs(memory_size=4)
    params = net_params()
    value_fn = oil.weighted_objective(loss_fn, {"fit": 0.5, "bc": 0.5})
    params, state = lbfgs_steps(opt, params, value_fn, 6)
    lbfgs_state = state[0]
    assert int(lbfgs_state.count) == 6
    assert float(jnp.abs(lbfgs_state.weights_memory).sum()) > 0
    reset = oil.reset_lbfgs(state)
    fresh = opt.init(params)
    for a, b in zip(jax.tree.leaves(reset[0]), jax.tree.leaves(fresh[0]), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert float(optax.tree.get(reset, "value")) == np.inf
    for g in jax.tree.leaves(optax.tree.get(reset, "grad")):
        np.testing.assert_array_equal(g, 0.0)
    assert float(optax.tree.get(reset, "learning_rate")) == 1.0
    # value_and_grad_from_state now recomputes instead of reusing the cache.
    value, _ = optax.value_and_grad_from_state(value_fn)(params, state=reset)
    np.testing.assert_allclose(value, value_fn(params), rtol=1e-14)


@pytest.mark.parametrize(
    ("factor", "memory_kept", "value_cached"),
    [
        (1.0, True, True),  # unchanged weights: the state as it was
        (1.0 + 1e-6, True, False),  # rounding-size change: drop the cached value
        (1.01, False, False),  # a real change: a fresh L-BFGS
    ],
)
def test_reset_for_new_weights_by_size_of_the_change(factor, memory_kept, value_cached):
    opt = optax.lbfgs(memory_size=4)
    old = {"fit": 0.25, "bc": 0.75}
    params, state = lbfgs_steps(
        opt, net_params(), oil.weighted_objective(loss_fn, old), 6
    )
    new = {"fit": 0.25 * factor, "bc": 0.75}
    old_a = jax.tree.map(jnp.asarray, old)
    new_a = jax.tree.map(jnp.asarray, new)
    out, moved = jax.jit(_line_search.reset_for_new_weights)(state, old_a, new_a)
    assert bool(moved) == (factor != 1.0)
    assert (int(out[0].count) == 6) == memory_kept
    assert (float(optax.tree.get(out, "value")) < np.inf) == value_cached
    if memory_kept:
        for x, y in zip(
            jax.tree.leaves(out[0]), jax.tree.leaves(state[0]), strict=True
        ):
            np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------
# Through the core's Optax wrapper and Flax NNX.


def _with_inputs(method):
    """``method`` with an update that names keyword inputs, as gradient methods do."""

    def update(losses, state, *, loss_fn, params, **inputs):
        assert callable(loss_fn) and params is not None
        return method.update(losses, state, **inputs)

    return oil.WeightingMethod(
        method.init, update, inputs=frozenset({"loss_fn", "params"})
    )


def test_with_weighting_forwards_value_grad_and_value_fn_to_lbfgs():
    # One step through the wrapper equals one step of the plain optimizer with
    # the same arguments: value=, grad= and value_fn= reached the line search,
    # and the wrapper's own keywords (losses=, and the method's loss_fn=) did not,
    # or the line search would raise for keywords value_fn does not take.
    params = net_params()
    method = _with_inputs(BARE)
    tx = oil.reset_on_new_weights(
        oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(params))
    )
    opt_state = tx.init(params)
    value_fn = oil.weighted_objective(loss_fn, oil.loss_weights(opt_state))

    @jax.jit
    def step(params, opt_state):
        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
        return tx.update(
            grad,
            opt_state,
            params,
            value=value,
            grad=grad,
            value_fn=value_fn,
            losses=loss_fn(params),
            loss_fn=loss_fn,
        )

    @jax.jit
    def plain_step(params):
        plain = optax.lbfgs()
        value, grad = jax.value_and_grad(value_fn)(params)
        return plain.update(
            grad, plain.init(params), params, value=value, grad=grad, value_fn=value_fn
        )

    updates, new_state = step(params, opt_state)
    plain_updates, plain_state = plain_step(params)
    for a, b in zip(
        jax.tree.leaves(updates), jax.tree.leaves(plain_updates), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # The weights changed (equal -> inverse-loss), so the wrapper state was reset
    # after the step; the plain state kept the line search's value of f_{w0}.
    assert float(optax.tree.get(new_state, "value")) == np.inf
    np.testing.assert_allclose(
        optax.tree.get(plain_state, "value"),
        value_fn(optax.apply_updates(params, plain_updates)),
        rtol=1e-12,
    )


def _step(tx, params, opt_state):
    """One L-BFGS step of a user's loop through with_weighting."""
    value_fn = oil.weighted_objective(loss_fn, oil.loss_weights(opt_state))
    value, grad = optax.value_and_grad_from_state(value_fn)(params, state=opt_state)
    updates, opt_state = tx.update(
        grad,
        opt_state,
        params,
        value=value,
        grad=grad,
        value_fn=value_fn,
        losses=loss_fn(params),
    )
    return optax.apply_updates(params, updates), opt_state


def test_with_weighting_drops_the_cached_value_when_the_weights_change():
    # The hazard: weights that change under L-BFGS. After one step the line
    # search has cached f_{w0}(x1), but the next step's objective is f_{w1} with
    # the new weights; with_weighting clears that cache itself, so
    # value_and_grad_from_state recomputes the value under the new weights.
    params = net_params()
    method = oil.inverse_loss(min_weight=0.0)
    tx = oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(params))
    state0 = tx.init(params)
    p1, state = jax.jit(lambda p, s: _step(tx, p, s))(params, state0)
    old_objective = oil.weighted_objective(loss_fn, oil.loss_weights(state0))
    new_objective = oil.weighted_objective(loss_fn, oil.loss_weights(state))
    # The two objectives differ at x1: a stale value would be wrong by that much.
    gap = abs(float(old_objective(p1)) - float(new_objective(p1)))
    assert gap > 1e-3 * float(new_objective(p1))
    assert float(optax.tree.get(state, "value")) == np.inf
    cached, _ = optax.value_and_grad_from_state(new_objective)(p1, state=state)
    np.testing.assert_allclose(cached, new_objective(p1), rtol=1e-14)
    # Only the cache: the curvature memory is reset_on_new_weights's business.
    assert int(state.optimizer_state[0].count) == 1
    # reset_lbfgs clears the L-BFGS parts and leaves the weighting state alone.
    reset = oil.reset_lbfgs(state)
    assert int(state.weighting_state.weighting_step) == 1
    for a, b in zip(
        jax.tree.leaves(reset.weighting_state),
        jax.tree.leaves(state.weighting_state),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert int(reset.optimizer_state[0].count) == 0


def test_with_weighting_keeps_the_cache_while_the_weights_hold():
    # inverse_loss(update_every=3) holds the weights on method steps 1 and 2:
    # there the line search's cached value is of the same objective and is kept.
    params = net_params()
    method = oil.inverse_loss(min_weight=0.0, update_every=3)
    tx = oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(params))
    step = jax.jit(lambda p, s: _step(tx, p, s))
    p1, s1 = step(params, tx.init(params))  # weights change: cache cleared
    p2, s2 = step(p1, s1)  # weights held: cache kept
    assert float(optax.tree.get(s1, "value")) == np.inf
    objective = oil.weighted_objective(loss_fn, oil.loss_weights(s2))
    np.testing.assert_allclose(optax.tree.get(s2, "value"), objective(p2), rtol=1e-10)


def test_reset_on_new_weights_in_a_scanned_loop():
    params = net_params()
    method = oil.inverse_loss(min_weight=0.0, update_every=6)
    tx = oil.reset_on_new_weights(
        oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(params))
    )

    def body(carry, _):
        params, state = carry
        objective = oil.weighted_objective(loss_fn, oil.loss_weights(state))
        value, _ = optax.value_and_grad_from_state(objective)(params, state=state)
        params, new_state = _step(tx, params, state)
        after = optax.tree.get(new_state.optimizer_state, "value")
        after = jnp.where(jnp.isinf(after), objective(params), after)
        lbfgs_state = optax.tree.get(new_state, "ScaleByLBFGSState")
        pairs = jnp.count_nonzero(lbfgs_state.weights_memory)
        return (params, new_state), (value, after, lbfgs_state.count, pairs)

    _, (value, after, count, pairs) = jax.jit(
        lambda c: jax.lax.scan(body, c, None, length=21)
    )((params, tx.init(params)))
    value, after, count, pairs = map(np.asarray, (value, after, count, pairs))
    # The weights change on method steps 0, 6, 12, 18: L-BFGS restarts there.
    np.testing.assert_array_equal(np.flatnonzero(count == 0), [0, 6, 12, 18])
    assert np.all(after <= value + LINESEARCH_RTOL * np.abs(value))
    # After a reset the memory is empty; the first step after it stores no pair
    # (it has no previous iterate), and each later one a pair of two iterates
    # after the reset. Step 17 held 4 pairs; none of them survives step 18.
    np.testing.assert_array_equal(pairs[12:], [0, 0, 1, 2, 3, 4, 0, 0, 1])


def test_reset_on_new_weights_needs_a_weighting_state():
    with pytest.raises(ValueError, match="Expected a weighting state"):
        oil.reset_on_new_weights(optax.lbfgs()).init(net_params())


def test_flax_nnx_optimizer_with_lbfgs():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self):
            p = net_params()
            self.w1, self.b1 = nnx.Param(p["w1"]), nnx.Param(p["b1"])
            self.w2, self.b2 = nnx.Param(p["w2"]), nnx.Param(p["b2"])

    names = ("w1", "b1", "w2", "b2")
    as_dict = lambda model: {k: getattr(model, k)[...] for k in names}
    state_as_dict = lambda state: {k: state[k] for k in names}
    model = Net()
    method = oil.inverse_loss(min_weight=0.0, update_every=5)
    tx = oil.reset_on_new_weights(
        oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(net_params()))
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        weights = oil.loss_weights(optimizer)
        # nnx.Optimizer hands the line search the parameters as a pure nnx.State.
        value_fn = oil.weighted_objective(lambda s: loss_fn(state_as_dict(s)), weights)

        def total(model):
            losses = loss_fn(as_dict(model))
            return oil.weighted_sum(losses, weights), losses

        (value, losses), grads = nnx.value_and_grad(total, has_aux=True)(model)
        optimizer.update(
            model, grads, value=value, grad=grads, value_fn=value_fn, losses=losses
        )
        return value, optax.tree.get(
            nnx.as_pure(optimizer.opt_state), "ScaleByLBFGSState"
        ).count

    first = loss_fn(as_dict(model))
    counts = [int(step(model, optimizer)[1]) for _ in range(12)]
    # Weights change at method steps 0, 5, 10, each resetting the L-BFGS count.
    assert counts == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    last = loss_fn(as_dict(model))
    assert float(oil.weighted_sum(last, oil.loss_weights(optimizer))) < float(
        oil.weighted_sum(first, oil.loss_weights(optimizer))
    )


@pytest.mark.parametrize(
    "line_search",
    [
        optax.lbfgs(),
        optax.chain(
            optax.sgd(1e-2),
            optax.scale_by_backtracking_linesearch(max_backtracking_steps=4),
        ),
    ],
    ids=["lbfgs", "backtracking"],
)
def test_line_search_updated_like_adam_points_to_run_lbfgs(line_search):
    params = net_params()
    tx = oil.with_weighting(line_search, BARE, losses=loss_fn(params))
    grads = jax.grad(lambda p: sum(loss_fn(p).values()))(params)
    with pytest.raises(TypeError, match=r"run_lbfgs.*weighted_objective") as err:
        tx.update(grads, tx.init(params), params, losses=loss_fn(params))
    assert "'value_fn'" in str(err.value)  # Optax's own message is kept


def test_with_weighting_starts_from_a_given_weighting_state():
    params = net_params()
    adam = oil.with_weighting(optax.adam(1e-2), DEFAULT, losses=loss_fn(params))
    _, adam_state = adam.update(
        jax.tree.map(jnp.zeros_like, params),
        adam.init(params),
        params,
        losses=loss_fn(params),
    )
    tx = oil.with_weighting(
        optax.lbfgs(), DEFAULT, loss_fn(params), weighting_state=adam_state
    )
    state = tx.init(params)
    for a, b in zip(
        jax.tree.leaves(state.weighting_state),
        jax.tree.leaves(adam_state.weighting_state),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # Not equal weights: the state of the first update.
    assert int(state.weighting_state.weighting_step) == 1
    with pytest.raises(ValueError, match=r"weighting_state=\.\.\.\) must hold a state"):
        oil.with_weighting(
            optax.lbfgs(), oil.softadapt(), loss_fn(params), weighting_state=adam_state
        )


def test_reset_on_new_weights_with_weight_rtol_zero_resets_on_any_change():
    opt = optax.lbfgs(memory_size=4)
    old = {"fit": 0.25, "bc": 0.75}
    _, state = lbfgs_steps(opt, net_params(), oil.weighted_objective(loss_fn, old), 3)
    new = {"fit": 0.25 * (1.0 + 1e-9), "bc": 0.75}
    old_a, new_a = jax.tree.map(jnp.asarray, old), jax.tree.map(jnp.asarray, new)
    out, _ = _line_search.reset_for_new_weights(state, old_a, new_a, 0.0)
    assert int(out[0].count) == 0
    with pytest.raises(ValueError, match="weight_rtol must be >= 0"):
        oil.reset_on_new_weights(optax.lbfgs(), weight_rtol=-1.0)
