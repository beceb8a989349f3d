"""Tests for optax_invloss/_lbfgs.py: L-BFGS policies for weighted losses.

The suite runs in float64 (see conftest.py). The toy problem is a small tanh
network fitted to sin(3x) with a boundary term: non-convex, so L-BFGS does not
converge within the iterations used here and every iteration is a real step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil
from optax_invloss import _lbfgs as _lbfgs_module

# The line search of optax.lbfgs accepts a step whose value is within
# approx_dec_rtol = 1e-6 (relative) of the start value (Hager-Zhang's approximate
# Wolfe condition), so "never increases" is checked to that tolerance.
LINESEARCH_RTOL = 1e-6
X = jnp.linspace(-1.0, 1.0, 24)


def net_params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "w1": 0.8 * jax.random.normal(k1, (6,)),
        "b1": jnp.zeros(6),
        "w2": 0.5 * jax.random.normal(k2, (6,)),
        "b2": jnp.zeros(()),
    }


def net(p, x):
    hidden = jnp.tanh(x[:, None] * p["w1"][None, :] + p["b1"][None, :])
    return hidden @ p["w2"] + p["b2"]


def loss_fn(p):
    dtype = p["w1"].dtype
    x, ends = X.astype(dtype), jnp.asarray([-1.0, 1.0], dtype)
    return {
        "fit": jnp.mean((net(p, x) - jnp.sin(3.0 * x)) ** 2),
        "bc": 0.05 * jnp.sum((net(p, ends) - jnp.sin(3.0 * ends)) ** 2),
    }


# Shared settings, so that run_lbfgs compiles once for several tests.
ITERATIONS = 16
REFRESH = 8
BARE = oil.inverse_loss(min_weight=0.0)
DEFAULT = oil.inverse_loss()


def first_weights_state(method, params):
    losses = loss_fn(params)
    _, state = method.update(losses, method.init(losses))
    return state


# ----------------------------------------------------------------------------------
# Objectives.


def test_weighted_objective_value_and_gradient_by_hand():
    f = lambda p: {"a": p**2, "b": (p - 1.0) ** 3}
    value_fn = oil.weighted_objective(f, {"a": 0.2, "b": 0.8})
    value, grad = jax.value_and_grad(value_fn)(jnp.asarray(3.0))
    # value: 0.2 * 9 + 0.8 * 8 = 8.2; grad: 0.2 * 2 * 3 + 0.8 * 3 * 2**2 = 10.8
    np.testing.assert_allclose(value, 8.2, rtol=1e-14)
    np.testing.assert_allclose(grad, 10.8, rtol=1e-14)


def test_weighted_objective_does_not_differentiate_the_weights():
    f = lambda p: {"a": p**2, "b": p}
    # Weights that depend on p: only the losses are differentiated.
    value_fn = lambda p: oil.weighted_objective(f, {"a": p, "b": 2.0 * p})(p)
    # d/dp [w_a p^2 + w_b p] with w held at p = 2: 2 * 2 * 2 + 4 * 1 = 12
    np.testing.assert_allclose(jax.grad(value_fn)(jnp.asarray(2.0)), 12.0)


def test_weighted_objective_rejects_mismatched_weights():
    value_fn = oil.weighted_objective(loss_fn, {"fit": 1.0})
    with pytest.raises(ValueError, match="same structure"):
        value_fn(net_params())


def test_log_objective_value_by_hand():
    f = lambda p: {"a": p**2, "b": 0.5 * p}
    # log(4 + 0.5) + log(1 + 0.5) = log 4.5 + log 1.5 = log 6.75
    value = oil.log_objective(f, eps=0.5)(jnp.asarray(2.0))
    np.testing.assert_allclose(value, np.log(6.75), rtol=1e-14)
    with pytest.raises(ValueError, match=r"eps must be >= 0, got eps = -1"):
        oil.log_objective(f, eps=-1.0)


@pytest.mark.parametrize("seed", range(5))
def test_log_objective_gradient_is_parallel_to_inverse_weighted_gradient(seed):
    # A random two-term least-squares problem in float64.
    ka, kb, kp = jax.random.split(jax.random.key(seed), 3)
    a = jax.random.normal(ka, (7, 4))
    b = jax.random.normal(kb, (3, 4))
    f = lambda p: {"r": jnp.sum((a @ p - 1.0) ** 2), "s": 1e-3 * jnp.sum((b @ p) ** 2)}
    p = jax.random.normal(kp, (4,))
    losses = np.asarray([float(v) for v in f(p).values()])
    # The bare formula by hand: w_i = (1 / L_i) / sum_j (1 / L_j).
    inv = 1.0 / losses
    weights = dict(zip(f(p), inv / inv.sum(), strict=True))
    g_weighted = jax.grad(oil.weighted_objective(f, weights))(p)
    g_log = jax.grad(oil.log_objective(f, eps=0.0))(p)
    cosine = jnp.vdot(g_weighted, g_log) / (
        jnp.linalg.norm(g_weighted) * jnp.linalg.norm(g_log)
    )
    np.testing.assert_allclose(cosine, 1.0, atol=1e-14)
    # And the lengths differ by exactly (sum_j 1 / L_j)^-1.
    np.testing.assert_allclose(g_weighted, g_log / inv.sum(), rtol=1e-12)
    # The library's bare inverse_loss gives the same weights.
    method = oil.inverse_loss(min_weight=0.0, eps=1e-300)
    w_method, _ = method.update(f(p), method.init(f(p)))
    np.testing.assert_allclose(
        jax.grad(oil.weighted_objective(f, w_method))(p), g_weighted, rtol=1e-12
    )


# ----------------------------------------------------------------------------------
# Resetting an L-BFGS state.


def _lbfgs_steps(opt, params, value_fn, steps):
    def body(carry, _):
        params, state = carry
        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=value_fn
        )
        return (optax.apply_updates(params, updates), state), None

    run = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[0])
    return run((params, opt.init(params)))


def test_reset_lbfgs_gives_the_initial_lbfgs_state():
    opt = optax.lbfgs(memory_size=4)
    params = net_params()
    value_fn = oil.weighted_objective(loss_fn, {"fit": 0.5, "bc": 0.5})
    params, state = _lbfgs_steps(opt, params, value_fn, 6)
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
    params, state = _lbfgs_steps(
        opt, net_params(), oil.weighted_objective(loss_fn, old), 6
    )
    new = {"fit": 0.25 * factor, "bc": 0.75}
    old_a = jax.tree.map(jnp.asarray, old)
    new_a = jax.tree.map(jnp.asarray, new)
    out, moved = jax.jit(_lbfgs_module._reset_for_new_weights)(state, old_a, new_a)
    assert bool(moved) == (factor != 1.0)
    assert (int(out[0].count) == 6) == memory_kept
    assert (float(optax.tree.get(out, "value")) < np.inf) == value_cached
    if memory_kept:
        for x, y in zip(
            jax.tree.leaves(out[0]), jax.tree.leaves(state[0]), strict=True
        ):
            np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------
# run_lbfgs.


def _check_monotone_between_refreshes(info):
    objective = np.asarray(info.objective)
    after = np.asarray(info.objective_after)
    refreshed = np.asarray(info.refreshed)
    ok = ~np.asarray(info.linesearch_failed)
    assert ok.all(), "the line search failed on the toy problem"
    # Each accepted step lowers the objective it was taken on ...
    assert np.all(after <= objective + LINESEARCH_RTOL * np.abs(objective))
    # ... and the next iteration starts from exactly that value, unless a refresh
    # changed the objective in between.
    same = ~refreshed[1:]
    np.testing.assert_array_equal(objective[1:][same], after[:-1][same])
    return objective, after


def test_frozen_objective_never_increases_and_weights_are_kept():
    params = net_params()
    state = first_weights_state(DEFAULT, params)
    new_params, new_state, info = oil.run_lbfgs(
        loss_fn, params, state, iterations=ITERATIONS
    )
    objective, after = _check_monotone_between_refreshes(info)
    assert not np.asarray(info.refreshed).any()
    assert after[-1] < 0.5 * objective[0]
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    # The record is of the objective with the frozen weights, at the final params.
    value_fn = oil.weighted_objective(loss_fn, oil.loss_weights(state))
    np.testing.assert_allclose(after[-1], value_fn(new_params), rtol=1e-10)


def test_refreshed_objective_never_increases_between_refreshes():
    params = net_params()
    state = first_weights_state(BARE, params)
    _, new_state, info = oil.run_lbfgs(
        loss_fn,
        params,
        state,
        iterations=ITERATIONS,
        policy="refreshed",
        method=BARE,
        refresh_every=REFRESH,
    )
    _check_monotone_between_refreshes(info)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(info.refreshed)), [REFRESH])
    assert int(new_state.weighting_step) == 2  # the first update and 1 refresh


def test_refresh_keeps_no_curvature_pairs_from_before_it():
    # A refreshed run of 2N iterations must equal: N frozen iterations, one
    # method update at the iterate reached, then N frozen iterations started from
    # a FRESH optax.lbfgs state. Any pair remembered across the refresh (or a
    # stale cached value) would make the second half differ.
    n = REFRESH
    params = net_params(1)
    method = BARE
    state = first_weights_state(method, params)
    p_ref, s_ref, info_ref = oil.run_lbfgs(
        loss_fn,
        params,
        state,
        iterations=2 * n,
        policy="refreshed",
        method=method,
        refresh_every=n,
    )
    assert bool(info_ref.refreshed[n])
    p_half, _, info_a = oil.run_lbfgs(loss_fn, params, state, iterations=n)
    _, s_half = method.update(loss_fn(p_half), state)
    p_two, _, info_b = oil.run_lbfgs(loss_fn, p_half, s_half, iterations=n)
    for a, b in zip(jax.tree.leaves(p_two), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        info_ref.objective,
        np.concatenate([info_a.objective, info_b.objective]),
        rtol=1e-9,
    )
    for a, b in zip(jax.tree.leaves(s_ref), jax.tree.leaves(s_half), strict=True):
        np.testing.assert_array_equal(a, b)


def residual_fn(p):
    """The residuals behind ``loss_fn``, in sum-of-squares form (for NTK weights)."""
    dtype = p["w1"].dtype
    x, ends = X.astype(dtype), jnp.asarray([-1.0, 1.0], dtype)
    return {
        "fit": (net(p, x) - jnp.sin(3.0 * x)) / jnp.sqrt(jnp.asarray(24.0, dtype)),
        "bc": jnp.sqrt(jnp.asarray(0.05, dtype)) * (net(p, ends) - jnp.sin(3.0 * ends)),
    }


@pytest.mark.parametrize(
    "method, method_inputs",
    [
        # Gradient-based methods get params= and loss_fn= from run_lbfgs ...
        (oil.lr_annealing(reference="fit", update_every=1, mask=None), None),
        # ... and anything else through method_inputs.
        (oil.ntk_weights(update_every=1), {"residual_fn": residual_fn}),
    ],
    ids=["lr_annealing", "ntk_weights"],
)
def test_refreshed_policy_with_gradient_based_methods(method, method_inputs):
    params = net_params()
    losses = loss_fn(params)
    extra = dict(method_inputs or {})
    _, state = method.update(
        losses, method.init(losses), params=params, loss_fn=loss_fn, **extra
    )
    _, new_state, info = oil.run_lbfgs(
        loss_fn,
        params,
        state,
        iterations=ITERATIONS,
        policy="refreshed",
        method=method,
        refresh_every=REFRESH,
        method_inputs=method_inputs,
    )
    _check_monotone_between_refreshes(info)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(info.refreshed)), [REFRESH])
    assert int(new_state.weighting_step) == 2


def test_refresh_that_leaves_the_weights_alone_does_not_reset():
    # With every weight on a cap (0.5 each for two terms), method.update cannot
    # change the weights, so refreshing is the same as freezing.
    params = net_params()
    method = oil.inverse_loss(min_weight=0.5, max_weight=0.5)
    state = first_weights_state(method, params)
    _, _, info_frozen = oil.run_lbfgs(loss_fn, params, state, iterations=ITERATIONS)
    _, _, info_refr = oil.run_lbfgs(
        loss_fn,
        params,
        state,
        iterations=ITERATIONS,
        policy="refreshed",
        method=method,
        refresh_every=3,
    )
    assert not np.asarray(info_refr.refreshed).any()
    np.testing.assert_allclose(info_refr.objective, info_frozen.objective, rtol=1e-12)


def test_log_policy_minimises_the_log_objective():
    params = net_params()
    new_params, state, info = oil.run_lbfgs(
        loss_fn, params, None, iterations=ITERATIONS, policy="log", eps=1e-8
    )
    assert state is None
    _check_monotone_between_refreshes(info)
    value_fn = oil.log_objective(loss_fn, eps=1e-8)
    np.testing.assert_allclose(info.objective[0], value_fn(params), rtol=1e-12)
    np.testing.assert_allclose(
        info.objective_after[-1], value_fn(new_params), rtol=1e-10
    )
    for name, before in loss_fn(params).items():
        assert float(loss_fn(new_params)[name]) < float(before), name


@pytest.mark.parametrize("policy", ["frozen", "log"])
def test_float32_params_with_float64_losses(policy):
    # With x64 on (as in this suite), points made by NumPy or jnp.linspace are
    # float64 and make float64 losses of float32 parameters: the line search
    # would mix the two dtypes.
    params = jax.tree.map(lambda x: x.astype(jnp.float32), net_params())
    x64 = jnp.linspace(-1.0, 1.0, 24, dtype=jnp.float64)

    def losses_f64(p):
        pred = net(p, x64)
        return {"fit": jnp.mean((pred - jnp.sin(3 * x64)) ** 2), "bc": pred[0] ** 2}

    assert losses_f64(params)["fit"].dtype == jnp.float64
    state = oil.inverse_loss().init(losses_f64(params))
    new_params, _, info = oil.run_lbfgs(
        losses_f64, params, state, iterations=5, policy=policy
    )
    assert info.objective.dtype == jnp.float32
    for leaf in jax.tree.leaves(new_params):
        assert leaf.dtype == jnp.float32
    assert float(info.objective_after[-1]) < float(info.objective[0])


def test_run_lbfgs_inside_jit_and_with_float32():
    params = jax.tree.map(lambda x: x.astype(jnp.float32), net_params())
    method = oil.inverse_loss()
    state = first_weights_state(method, params)

    @jax.jit
    def phase(params, state):
        return oil.run_lbfgs(
            loss_fn,
            params,
            state,
            iterations=10,
            policy="refreshed",
            method=method,
            refresh_every=5,
        )

    new_params, new_state, info = phase(params, state)
    assert info.objective.dtype == jnp.float32 and info.objective.shape == (10,)
    assert jax.tree.map(lambda x: x.dtype, new_params) == jax.tree.map(
        lambda x: x.dtype, params
    )
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
        lambda x: x.dtype, state
    )
    assert float(info.objective_after[-1]) < float(info.objective[0])


def test_run_lbfgs_without_a_line_search_cache():
    # An optimizer whose state keeps no value/grad: value and gradient are
    # recomputed each iteration, and nothing is recorded as a line-search failure.
    params = net_params()
    state = first_weights_state(DEFAULT, params)
    _, _, info = oil.run_lbfgs(
        loss_fn, params, state, iterations=5, optimizer=optax.sgd(1e-2)
    )
    assert not np.asarray(info.linesearch_failed).any()
    assert float(info.objective_after[-1]) < float(info.objective[0])


def test_run_lbfgs_accepts_an_optimizer_state_that_holds_the_weights():
    params = net_params()
    tx = oil.with_weighting(optax.adam(1e-2), DEFAULT, losses=loss_fn(params))
    opt_state = tx.init(params)
    _, ws, _ = oil.run_lbfgs(loss_fn, params, opt_state, iterations=ITERATIONS)
    assert isinstance(ws, oil.InverseLossState)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(policy="sometimes"), "policy must be one of"),
        (dict(iterations=0), "iterations must be an integer >= 1"),
        (dict(policy="refreshed", refresh_every=5), "pass method="),
        (dict(policy="refreshed", method=oil.inverse_loss()), "refresh_every must"),
        (dict(refresh_every=5), "refresh_every is only used"),
        (dict(policy="log", eps=-1.0), "eps must be >= 0"),
        (dict(method_inputs={"residual_fn": len}), "only used with policy='refreshed'"),
        (
            dict(
                policy="refreshed",
                method=BARE,
                refresh_every=2,
                method_inputs={"loss_fn": len},
            ),
            "must not hold 'loss_fn'",
        ),
        (
            dict(
                policy="refreshed",
                method=BARE,
                refresh_every=2,
                method_inputs={"weights": {"a": 1.0}},
            ),
            r"method_inputs\['weights'\] must be hashable",
        ),
    ],
)
def test_run_lbfgs_bad_arguments(kwargs, match):
    params = net_params()
    state = first_weights_state(oil.inverse_loss(), params)
    kwargs = {"iterations": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        oil.run_lbfgs(loss_fn, params, state, **kwargs)


def test_run_lbfgs_needs_weights_and_a_plain_optimizer():
    params = net_params()
    with pytest.raises(ValueError, match="needs the weights"):
        oil.run_lbfgs(loss_fn, params, None, iterations=3)
    state = first_weights_state(oil.inverse_loss(), params)
    wrapped = oil.with_weighting(optax.lbfgs(), oil.inverse_loss(), loss_fn(params))
    with pytest.raises(ValueError, match="plain optimizer"):
        oil.run_lbfgs(loss_fn, params, state, iterations=3, optimizer=wrapped)


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


def test_naive_recomputation_reuses_a_value_of_the_old_objective():
    # The hazard this module exists for: weights that change and no reset. After
    # one step the state caches f_{w0}(x1), but the next step's objective is
    # f_{w1} with the new weights.
    params = net_params()
    method = oil.inverse_loss(min_weight=0.0)
    tx = oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(params))
    p1, state = jax.jit(lambda p, s: _step(tx, p, s))(params, tx.init(params))
    new_objective = oil.weighted_objective(loss_fn, oil.loss_weights(state))
    cached, _ = optax.value_and_grad_from_state(new_objective)(p1, state=state)
    assert abs(float(cached) - float(new_objective(p1))) > 1e-3 * float(cached)
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
    # (reset_on_new_weights clears that cache: see the test above.)


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


def test_adam_then_lbfgs_recipe():
    params = net_params()
    method = BARE  # shares run_lbfgs's compiled "refreshed" program with others
    tx = oil.with_weighting(optax.adam(1e-2), method, losses=loss_fn(params))
    opt_state = tx.init(params)

    def adam_step(carry, _):
        params, opt_state = carry
        objective = oil.weighted_objective(loss_fn, oil.loss_weights(opt_state))
        grads = jax.grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params, losses=loss_fn(params))
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.jit(
        lambda c: jax.lax.scan(adam_step, c, None, length=300)
    )((params, opt_state))
    adam_weights = oil.loss_weights(opt_state)
    adam_total = oil.weighted_sum(loss_fn(params), adam_weights)
    for policy, extra in [
        ("frozen", {}),
        ("refreshed", dict(method=method, refresh_every=REFRESH)),
        ("log", dict(eps=1e-8)),
    ]:
        new_params, ws, info = oil.run_lbfgs(
            loss_fn, params, opt_state, iterations=ITERATIONS, policy=policy, **extra
        )
        _check_monotone_between_refreshes(info)
        if policy == "frozen":
            for a, b in zip(
                jax.tree.leaves(oil.loss_weights(ws)),
                jax.tree.leaves(adam_weights),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(info.objective[0], adam_total, rtol=1e-12)
        if policy != "log":
            total = oil.weighted_sum(loss_fn(new_params), adam_weights)
            assert float(total) < float(adam_total), policy
