"""The contract every weighting method keeps (model: optax/contrib/_common_test.py).

Runs over every entry of ``_methods.CASES``: jit without retrace, ``lax.scan``,
dtypes, unknown keyword inputs, the checkpoint round trip, the Optax wrapper with
Adam and with L-BFGS, Flax NNX, and bad inputs.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import factories, factory_of
from _methods import CASES, one_case_per_method, toy_loss_fn, toy_params

import optax_invloss as oil

IDS = [case.name for case in CASES]
# Tests of what the wrappers do with a method's update (route keyword inputs, call
# it under L-BFGS) depend on the update and its declared inputs, not on a variant's
# hyperparameters: they run for the first case of each method and set of inputs.
PER_METHOD = one_case_per_method(CASES)
per_method = pytest.mark.parametrize(
    "case", PER_METHOD, ids=[c.name for c in PER_METHOD]
)


def _update(case, method, losses, state, params, **extra):
    """``method.update``, under strict dtype promotion (see ``MethodCase.strict``)."""
    promotion = "strict" if case.strict else "standard"
    with jax.numpy_dtype_promotion(promotion):
        inputs = case.inputs(params, toy_loss_fn)
        return method.update(losses, state, **inputs, **extra)


def test_every_public_factory_has_a_contract_case():
    covered = {factory_of(case.make()) for case in CASES}
    missing = sorted(set(factories()) - covered)
    assert not missing, f"add a MethodCase to tests/_methods.py for {missing}"


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    return request.param


def test_weights_have_the_losses_structure_and_are_finite(case):
    method = case.make()
    params = toy_params()
    losses = toy_loss_fn(params)
    state = method.init(losses)
    weights, state = jax.jit(lambda ls, s: _update(case, method, ls, s, params))(
        losses, state
    )
    assert jax.tree.structure(weights) == jax.tree.structure(losses)
    for w in jax.tree.leaves(weights):
        assert w.shape == () and bool(jnp.isfinite(w)) and float(w) >= 0
    assert jax.tree.structure(oil.loss_weights(state)) == jax.tree.structure(losses)
    assert int(state.skipped_updates) == 0


@per_method
def test_unknown_keyword_inputs_are_ignored(case):
    method = case.make()
    params = toy_params()
    losses = toy_loss_fn(params)
    state = method.init(losses)
    w1, _ = _update(case, method, losses, state, params)
    w2, _ = _update(case, method, losses, state, params, not_an_input=3, value=1.0)
    np.testing.assert_array_equal(jax.tree.leaves(w1), jax.tree.leaves(w2))


def test_no_retrace_when_values_change(case):
    method = case.make()
    params = toy_params()
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(None)
        losses = toy_loss_fn(params)
        return _update(case, method, losses, state, params)

    state = method.init(toy_loss_fn(params))
    for scale in (1.0, 2.0, 0.5):
        params = jax.tree.map(lambda p: p * scale, params)  # noqa: B023
        _, state = step(params, state)
    assert len(traces) == 1


def test_runs_inside_lax_scan(case):
    method = case.make()
    params = toy_params()
    state = method.init(toy_loss_fn(params))

    def body(state, scale):
        p = jax.tree.map(lambda x: x * scale, params)
        weights, state = _update(case, method, toy_loss_fn(p), state, p)
        return state, weights

    scales = jnp.linspace(1.0, 2.0, 7, dtype=jnp.float32)
    state, weights = jax.jit(lambda s: jax.lax.scan(body, s, scales))(state)
    assert int(state.weighting_step) == 7
    for w in jax.tree.leaves(weights):
        assert w.shape == (7,) and bool(jnp.all(jnp.isfinite(w)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_kept(case, dtype):
    method = case.make()
    params = toy_params(dtype)
    losses = toy_loss_fn(params)
    state = method.init(losses)
    weights, state = jax.jit(lambda ls, s: _update(case, method, ls, s, params))(
        losses, state
    )
    for w in jax.tree.leaves(weights):
        assert w.dtype == dtype
    # The state's types do not change from one step to the next.
    _, state2 = _update(case, method, losses, state, params)
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(
        lambda x: x.dtype, state2
    )


def test_bfloat16_losses_give_finite_weights(case):
    method = case.make()
    params = toy_params(jnp.float32)
    losses = jax.tree.map(lambda x: x.astype(jnp.bfloat16), toy_loss_fn(params))
    state = method.init(losses)
    weights, state = jax.jit(lambda ls, s: _update(case, method, ls, s, params))(
        losses, state
    )
    for w in jax.tree.leaves(weights):
        assert w.dtype == jnp.bfloat16 and bool(jnp.isfinite(w))


def _save(state) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(x) for x in jax.tree.leaves(state)])
    return buffer.getvalue()


def _restore(data: bytes, like):
    loaded = np.load(io.BytesIO(data))
    leaves = [jnp.asarray(loaded[f"arr_{i}"]) for i in range(len(loaded.files))]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def test_checkpoint_round_trip_is_bit_identical(case):
    method = case.make()
    params = toy_params()
    state = method.init(toy_loss_fn(params))
    step = jax.jit(
        lambda s, k: _update(
            case,
            method,
            toy_loss_fn(jax.tree.map(lambda p: p * k, params)),
            s,
            params,
        )
    )
    scales = [1.0, 0.9, 0.7, 1.3, 0.5, 0.8, 1.1]
    uninterrupted = state
    for k in scales:
        w_ref, uninterrupted = step(uninterrupted, k)
    resumed = state
    for k in scales[:3]:
        _, resumed = step(resumed, k)
    resumed = _restore(_save(resumed), like=state)
    for k in scales[3:]:
        w, resumed = step(resumed, k)
    np.testing.assert_array_equal(jax.tree.leaves(w), jax.tree.leaves(w_ref))
    for a, b in zip(
        jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_loss_value_skips_the_update(case):
    method = case.make()
    params = toy_params()
    losses = toy_loss_fn(params)
    update = jax.jit(lambda ls, s: _update(case, method, ls, s, params))
    _, state = update(losses, method.init(losses))
    # NaN, Inf and a negative loss: one compilation, the same values of another
    # dtype-and-shape-identical input each time.
    for bad in (np.nan, np.inf, -1.0):
        bad_losses = dict(losses, bc=jnp.asarray(bad, losses["bc"].dtype))
        weights, new_state = update(bad_losses, state)
        assert int(new_state.skipped_updates) == int(state.skipped_updates) + 1, bad
        new_leaves = jax.tree.leaves(new_state._replace(skipped_updates=0))
        old_leaves = jax.tree.leaves(state._replace(skipped_updates=0))
        for a, b in zip(new_leaves, old_leaves, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for w in jax.tree.leaves(weights):
            assert bool(jnp.isfinite(w)), bad


def test_wrong_structure_shape_and_dtype_name_the_term(case):
    method = case.make()
    params = toy_params()
    losses = toy_loss_fn(params)
    state = method.init(losses)
    with pytest.raises(ValueError, match="structure"):
        _update(case, method, {"pde": losses["pde"]}, state, params)
    with pytest.raises(ValueError, match=r"\['bc'\].*shape \(3,\)"):
        _update(case, method, dict(losses, bc=jnp.ones(3)), state, params)
    with pytest.raises(ValueError, match=r"\['bc'\].*int32"):
        _update(case, method, dict(losses, bc=jnp.asarray(1, jnp.int32)), state, params)
    with pytest.raises(ValueError, match=r"\['pde'\].*shape \(2,\)"):
        method.init(dict(losses, pde=jnp.ones(2)))


def test_the_inputs_update_uses_are_declared(case):
    method = case.make()
    assert isinstance(method.inputs, frozenset)
    assert set(case.inputs(toy_params(), toy_loss_fn)) <= method.inputs


def test_update_without_its_state_says_which_state_it_expected(case):
    method = case.make()
    params = toy_params()
    losses = toy_loss_fn(params)
    kind = type(method.init(losses)).__name__
    with pytest.raises(TypeError, match=f"update expected a {kind}.*got NoneType"):
        _update(case, method, losses, None, params)
    # Another method's state, or the optimizer state that holds one, likewise.
    other = (oil.inverse_loss() if kind == "DWAState" else oil.dwa()).init(losses)
    with pytest.raises(TypeError, match=f"expected a {kind}.*got [A-Z]"):
        _update(case, method, losses, other, params)
    wrapped = oil.WeightedOptimizerState(optimizer_state=(), weighting_state=other)
    with pytest.raises(TypeError, match=f"expected a {kind}.*opt_state.weighting"):
        _update(case, method, losses, wrapped, params)


def _train(tx, params, steps, **extra):
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        weights = oil.loss_weights(opt_state)

        def total(p):
            losses = toy_loss_fn(p)
            return oil.weighted_sum(losses, weights), losses

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params, losses=losses, **extra)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params, opt_state


def test_optax_wrapper_with_adam_lowers_both_terms(case):
    params = toy_params(jnp.float64)
    method = case.make()
    extra = case.inputs(params, toy_loss_fn)
    extra.pop("params", None)
    tx = oil.with_weighting(optax.adam(1e-2), method, losses=toy_loss_fn(params))
    new_params, opt_state = _train(tx, params, 200, **extra)
    before, after = toy_loss_fn(params), toy_loss_fn(new_params)
    for name in before:
        assert float(after[name]) < float(before[name]), name
    assert int(opt_state.weighting_state.weighting_step) == 200


@per_method
def test_optax_wrapper_around_lbfgs_accepts_losses(case):
    params = toy_params(jnp.float64)
    method = case.make()
    extra = case.inputs(params, toy_loss_fn)
    extra.pop("params", None)
    losses = toy_loss_fn(params)
    tx = oil.with_weighting(optax.lbfgs(), method, losses=losses)
    opt_state = tx.init(params)
    weights = oil.loss_weights(opt_state)
    value_fn = lambda p: oil.weighted_sum(toy_loss_fn(p), weights)
    value, grads = jax.value_and_grad(value_fn)(params)
    updates, opt_state = tx.update(
        grads,
        opt_state,
        params,
        losses=losses,
        value=value,
        grad=grads,
        value_fn=value_fn,
        **extra,
    )
    new_params = optax.apply_updates(params, updates)
    assert float(value_fn(new_params)) < float(value)


def test_flax_nnx_optimizer(case):
    nnx = pytest.importorskip("flax.nnx")

    class Toy(nnx.Module):
        def __init__(self):
            p = toy_params(jnp.float64)
            self.w = nnx.Param(p["w"])
            self.b = nnx.Param(p["b"])

    model = Toy()
    params_of = lambda m: {"w": m.w[...], "b": m.b[...]}
    method = case.make()
    losses = toy_loss_fn(params_of(model))
    tx = oil.with_weighting(optax.adam(1e-2), method, losses=losses)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    # nnx.Optimizer hands the optimizer the parameters as a pure nnx.State.
    state_loss_fn = lambda state: toy_loss_fn({"w": state["w"], "b": state["b"]})
    extra = case.inputs(None, state_loss_fn)
    extra.pop("params", None)

    @nnx.jit
    def step(model, optimizer):
        weights = oil.loss_weights(optimizer)

        def total(model):
            losses = toy_loss_fn(params_of(model))
            return oil.weighted_sum(losses, weights), losses

        (_, losses), grads = nnx.value_and_grad(total, has_aux=True)(model)
        optimizer.update(model, grads, losses=losses, **extra)
        return losses

    first = step(model, optimizer)
    for _ in range(50):
        last = step(model, optimizer)
    for name in first:
        assert float(last[name]) < float(first[name]), name
    weights = oil.loss_weights(optimizer)
    assert jax.tree.structure(weights) == jax.tree.structure(losses)
    np.testing.assert_allclose(
        sum(jax.tree.leaves(weights)),
        sum(jax.tree.leaves(oil.loss_weights(optimizer.opt_state))),
    )
