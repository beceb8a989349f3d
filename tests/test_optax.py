"""with_weighting: keyword routing, Optax combinators, scan loops and NNX."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil


def loss_terms(params):
    """Two terms of very different scale that can both reach zero."""
    return {"a": jnp.sum((params[:2] - 1.0) ** 2), "b": 0.01 * (params[2] + 1.0) ** 2}


def _recording_optimizer(seen: list):
    """An inner optimizer that records the keyword arguments it receives."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, **extra):
        del params
        seen.append(sorted(extra))
        return updates, state

    return optax.GradientTransformationExtraArgs(init, update)


class _ProbeState(NamedTuple):
    loss_weights: Any
    weighting_step: jax.Array
    skipped_updates: jax.Array
    last_probe: jax.Array


def _probe_method(received):
    """A method that declares two inputs, ``probe`` and ``params``.

    Its ``update`` takes any keywords (no keyword-only arguments), so routing
    can only come from ``inputs``; it records the keywords it is given.
    """

    def init(losses):
        weights = jax.tree.map(lambda _: jnp.ones(()), losses)
        zero = jnp.zeros((), jnp.int32)
        return _ProbeState(weights, zero, zero, jnp.zeros(()))

    def update(losses, state, **inputs):
        del losses
        received.append(sorted(inputs))
        probe = inputs["probe"] + jnp.sum(inputs["params"])
        return state.loss_weights, state._replace(last_probe=probe)

    return oil.WeightingMethod(init, update, inputs=frozenset({"probe", "params"}))


def test_with_weighting_routes_keywords_by_the_declared_inputs():
    seen, received = [], []
    params = jnp.ones(2)
    method = _probe_method(received)
    tx = oil.with_weighting(_recording_optimizer(seen), method, {"a": 0.0})
    state = tx.init(params)
    _, state = tx.update(
        params,
        state,
        params,
        losses={"a": 1.0},
        probe=3.0,
        value=1.0,
        value_fn=None,
        loss_fn=len,  # a gradient method's input, not declared by this one
    )
    # The method got exactly probe and params (3 + 1 + 1); the optimizer got
    # every other keyword, losses excepted.
    assert received == [["params", "probe"]]
    np.testing.assert_allclose(state.weighting_state.last_probe, 5.0)
    assert seen == [["loss_fn", "value", "value_fn"]]
    # sharded passes the inner method's inputs on, plus its own counts.
    assert oil.sharded(method, "data").inputs == {"probe", "params", "counts"}


def test_every_method_declares_a_frozenset_of_inputs():
    with pytest.raises(TypeError, match="method.inputs must be a frozenset"):
        oil.with_weighting(
            optax.sgd(0.1), oil.WeightingMethod(len, len, inputs="loss_fn"), {"a": 0.0}
        )
    with pytest.raises(TypeError, match="method must be a WeightingMethod"):
        oil.with_weighting(optax.sgd(0.1), (len, len), {"a": 0.0})


def test_update_without_losses_says_what_to_pass():
    tx = oil.with_weighting(optax.sgd(0.1), oil.inverse_loss(), {"a": 0.0, "b": 0.0})
    state = tx.init(jnp.zeros(2))
    with pytest.raises(TypeError, match="losses=losses"):
        tx.update(jnp.zeros(2), state, jnp.zeros(2))


def test_example_losses_are_validated_at_construction():
    with pytest.raises(ValueError, match=r"\['a'\].*shape \(3,\)"):
        oil.with_weighting(optax.sgd(0.1), oil.inverse_loss(), {"a": jnp.ones(3)})


def _step(tx):
    def step(carry, _):
        params, opt_state = carry
        weights = oil.loss_weights(opt_state)

        def total(p):
            losses = loss_terms(p)
            return oil.weighted_sum(losses, weights), losses

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
        return (optax.apply_updates(params, updates), opt_state), losses

    return step


def test_training_loop_in_lax_scan_with_inject_hyperparams():
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=0.05)
    tx = oil.with_weighting(
        inner, oil.inverse_loss(), jax.eval_shape(loss_terms, jnp.zeros(3))
    )
    params = jnp.zeros(3)
    opt_state = tx.init(params)
    # The inner hyperparameters stay reachable and changeable.
    opt_state.optimizer_state.hyperparams["learning_rate"] = jnp.asarray(0.02)
    (params, opt_state), losses = jax.jit(
        lambda c: jax.lax.scan(_step(tx), c, length=300)
    )((params, opt_state))
    assert float(losses["a"][-1]) < float(losses["a"][0])
    assert float(losses["b"][-1]) < float(losses["b"][0])
    np.testing.assert_allclose(optax.tree.get(opt_state, "learning_rate"), 0.02)
    assert int(opt_state.weighting_state.weighting_step) == 300


def test_inside_multisteps():
    # MultiSteps applies the wrapped optimizer every k-th call; the weighting is
    # updated with the losses of the calls on which the inner update runs.
    tx = optax.MultiSteps(
        oil.with_weighting(optax.sgd(0.05), oil.inverse_loss(), {"a": 0.0, "b": 0.0}),
        every_k_schedule=2,
    )
    params = jnp.zeros(3)
    state = tx.init(params)
    step = jax.jit(_step(tx))
    for _ in range(6):
        (params, state), _ = step((params, state), None)
    weighting = optax.tree.get(state, "weighting_step")
    assert int(weighting) == 3
    np.testing.assert_allclose(sum(oil.loss_weights(state).values()), 1.0, rtol=1e-6)
