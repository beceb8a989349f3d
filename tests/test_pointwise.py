"""The contract of the per-point methods (rba, self_adaptive) and pointwise_loss."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil

METHODS = {
    "rba": lambda: oil.rba(terms=("pde", "ic")),
    "self_adaptive": lambda: oil.self_adaptive(key=1, init_scale={"ic": 100.0}),
}
X = jnp.linspace(-1.0, 1.0, 8)


def residual_fn(p, dtype=jnp.float64):
    """Zero for a = 0.5, b = -0.3; no residual is zero at PARAMS."""
    x = X.astype(dtype)
    a, b = p["a"].astype(dtype), p["b"].astype(dtype)
    return {
        "pde": (a - 0.5) * x + (b + 0.3) * x**2,
        "ic": (a - 0.5) * jnp.arange(1, 4, dtype=dtype),
    }


PARAMS = {"a": jnp.asarray(0.3), "b": jnp.asarray(-0.2)}


@pytest.fixture(params=sorted(METHODS))
def method(request):
    return METHODS[request.param]()


def test_weights_have_the_residuals_shapes(method):
    residuals = residual_fn(PARAMS)
    state = method.init(residuals)
    weights, state = jax.jit(method.update)(residuals, state)
    assert jax.tree.structure(weights) == jax.tree.structure(residuals)
    for w, r in zip(jax.tree.leaves(weights), jax.tree.leaves(residuals), strict=True):
        assert w.shape == r.shape and w.dtype == r.dtype
        assert bool(jnp.all(jnp.isfinite(w))) and bool(jnp.all(w >= 0))
    assert set(state.point_weights) == {"pde", "ic"}
    assert int(state.weighting_step) == 1 and int(state.skipped_updates) == 0


def test_no_retrace_and_lax_scan(method):
    traces = []

    @jax.jit
    def step(p, state):
        traces.append(None)
        return method.update(residual_fn(p), state)

    state = method.init(residual_fn(PARAMS))
    for scale in (1.0, 2.0, 0.5):
        _, state = step(jax.tree.map(lambda x: x * scale, PARAMS), state)  # noqa: B023
    assert len(traces) == 1

    def body(state, scale):
        p = jax.tree.map(lambda x: x * scale, PARAMS)
        weights, state = method.update(residual_fn(p), state)
        return state, weights["pde"]

    state, ws = jax.lax.scan(body, state, jnp.linspace(1.0, 2.0, 5))
    assert int(state.weighting_step) == 8 and ws.shape == (5, 8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_is_kept(method, dtype):
    residuals = residual_fn(PARAMS, dtype)
    state = method.init(residuals)
    weights, state2 = method.update(residuals, state)
    for w in jax.tree.leaves(weights):
        assert w.dtype == dtype
    assert all(x.dtype == jnp.float32 for x in state.point_weights.values())
    assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(
        lambda x: x.dtype, state2
    )


def test_unknown_keyword_inputs_are_ignored(method):
    residuals = residual_fn(PARAMS)
    state = method.init(residuals)
    w1, _ = method.update(residuals, state)
    w2, _ = method.update(residuals, state, losses=3.0, params=PARAMS, value=1.0)
    for a, b in zip(jax.tree.leaves(w1), jax.tree.leaves(w2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_is_bit_identical(method):
    step = jax.jit(lambda s, k: method.update(residual_fn({"a": k, "b": -k}), s))
    scales = [0.3, 0.2, 0.7, 1.3, 0.5]
    state = method.init(residual_fn(PARAMS))
    uninterrupted = state
    for k in scales:
        w_ref, uninterrupted = step(uninterrupted, k)
    resumed = state
    for k in scales[:2]:
        _, resumed = step(resumed, k)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(x) for x in jax.tree.leaves(resumed)])
    loaded = np.load(io.BytesIO(buffer.getvalue()))
    leaves = [jnp.asarray(loaded[f"arr_{i}"]) for i in range(len(loaded.files))]
    resumed = jax.tree.unflatten(jax.tree.structure(state), leaves)
    for k in scales[2:]:
        w, resumed = step(resumed, k)
    for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(w_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    pairs = zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bad_residual_is_a_counted_skip(method, bad):
    residuals = residual_fn(PARAMS)
    state = method.init(residuals)
    _, state = method.update(residuals, state)
    bad_residuals = dict(residuals, ic=residuals["ic"].at[1].set(bad))
    weights, new = jax.jit(method.update)(bad_residuals, state)
    assert int(new.skipped_updates) == 1
    old_leaves = jax.tree.leaves(state._replace(skipped_updates=0))
    new_leaves = jax.tree.leaves(new._replace(skipped_updates=0))
    for a, b in zip(new_leaves, old_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(weights["pde"], state.point_weights["pde"])


def test_negative_residuals_are_ordinary(method):
    residuals = jax.tree.map(lambda r: -jnp.abs(r) - 0.1, residual_fn(PARAMS))
    state = method.init(residuals)
    _, state = method.update(residuals, state)
    assert int(state.skipped_updates) == 0 and int(state.weighting_step) == 1


def test_bad_structure_and_shapes_name_the_term(method):
    residuals = residual_fn(PARAMS)
    state = method.init(residuals)
    with pytest.raises(ValueError, match=r"'pde'.*shape \(7,\).*shape \(8,\)"):
        method.update(dict(residuals, pde=residuals["pde"][:7]), state)
    with pytest.raises(ValueError, match="no term 'ic'"):
        method.update({"pde": residuals["pde"]}, state)
    with pytest.raises(ValueError, match="'ic'.*scalar"):
        method.init(dict(residuals, ic=jnp.asarray(1.0)))
    with pytest.raises(ValueError, match="'ic'.*int32"):
        method.init(dict(residuals, ic=jnp.arange(3, dtype=jnp.int32)))


def test_indices_update_only_their_entries(method):
    pool = {"pde": jnp.zeros(8), "ic": jnp.zeros(3)}
    state = method.init(pool)
    full = residual_fn(PARAMS)
    idx = jnp.asarray([6, 1, 3])
    batch = dict(full, pde=full["pde"][idx])
    weights, new = jax.jit(method.update)(batch, state, indices={"pde": idx})
    assert weights["pde"].shape == (3,)
    old, moved = state.point_weights["pde"], new.point_weights["pde"]
    others = np.setdiff1d(np.arange(8), np.asarray(idx))
    if isinstance(state, oil.RBAState):
        np.testing.assert_array_equal(moved[others], old[others])
        np.testing.assert_array_equal(weights["pde"], moved[idx])
    else:  # self_adaptive returns this step's (old) weights
        np.testing.assert_array_equal(weights["pde"], old[idx])
    assert bool(jnp.all(moved[idx] != old[idx]))
    # The ic term had no indices: all of it was updated.
    assert bool(jnp.all(new.point_weights["ic"] != state.point_weights["ic"]))


def test_bad_indices(method):
    pool = {"pde": jnp.zeros(8), "ic": jnp.zeros(3)}
    state = method.init(pool)
    batch = dict(residual_fn(PARAMS), pde=jnp.ones(2))
    with pytest.raises(ValueError, match=r"'pde'.*\[0, 8\)"):
        method.update(batch, state, indices={"pde": jnp.asarray([3, 8])})
    with pytest.raises(ValueError, match=r"'pde'.*\[0, 8\)"):
        method.update(batch, state, indices={"pde": np.asarray([-1, 2])})
    with pytest.raises(ValueError, match="'pde'.*integer"):
        method.update(batch, state, indices={"pde": jnp.asarray([1.0, 2.0])})
    with pytest.raises(ValueError, match="'pde'.*3 indices"):
        method.update(batch, state, indices={"pde": jnp.asarray([1, 2, 3])})
    with pytest.raises(ValueError, match="'bc'.*not a term"):
        method.update(batch, state, indices={"bc": jnp.asarray([1, 2])})
    # Inside jit the range is not known until run time: a counted skip.
    weights, new = jax.jit(method.update)(
        batch, state, indices={"pde": jnp.asarray([3, 8])}
    )
    assert int(new.skipped_updates) == 1 and int(new.weighting_step) == 0
    np.testing.assert_array_equal(new.point_weights["pde"], state.point_weights["pde"])
    assert float(weights["pde"][1]) == 0.0  # out of range: weight 0


def test_training_recipe_lowers_the_weighted_loss(method):
    # The module's recipe: update inside the differentiated function.
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, point_state):
        def total(p):
            residuals = residual_fn(p)
            weights, new_point_state = method.update(residuals, point_state)
            losses = method.loss(residuals, weights)
            return sum(jax.tree.leaves(losses)), new_point_state

        (value, point_state), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, point_state, value

    params, opt_state = PARAMS, optimizer.init(PARAMS)
    point_state = method.init(residual_fn(params))
    plain = lambda p: sum(jnp.mean(r**2) for r in jax.tree.leaves(residual_fn(p)))
    before = plain(params)
    for _ in range(30):
        params, opt_state, point_state, value = step(params, opt_state, point_state)
    assert bool(jnp.isfinite(value)) and float(plain(params)) < float(before)
    assert int(point_state.weighting_step) == 30


def test_pointwise_loss_holds_the_weights_constant():
    r = {"pde": jnp.asarray([1.0, -2.0])}
    w = {"pde": jnp.asarray([0.5, 3.0])}
    for power in (1, 2):
        g = jax.grad(lambda w, k=power: oil.pointwise_loss(r, w, power=k)["pde"])(w)
        np.testing.assert_array_equal(g["pde"], [0.0, 0.0])
    # d/dr mean((w r)^2) = w^2 r; d/dr mean(w r^2) = w r (N = 2).
    g2 = jax.grad(lambda r: oil.pointwise_loss(r, w, power=2)["pde"])(r)
    np.testing.assert_allclose(g2["pde"], [0.25, -18.0])
    g1 = jax.grad(lambda r: oil.pointwise_loss(r, w, power=1)["pde"])(r)
    np.testing.assert_allclose(g1["pde"], [0.5, -6.0])
    with pytest.raises(ValueError, match="power"):
        oil.pointwise_loss(r, w, power=3)
    with pytest.raises(ValueError, match="'pde'.*shape"):
        oil.pointwise_loss(r, {"pde": jnp.ones(3)}, power=2)
    with pytest.raises(ValueError, match="structure"):
        oil.pointwise_loss(r, {"bc": jnp.ones(2)}, power=2)
