"""Tests for optax_invloss/_lbfgs.py: run_lbfgs, one fixed objective at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _toy_net import (
    BARE,
    DEFAULT,
    ITERATIONS,
    LINESEARCH_RTOL,
    REFRESH,
    first_weights_state,
    loss_fn,
    net,
    net_params,
    residual_fn,
)

import optax_invloss as oil

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


# ----------------------------------------------------------------------------------
# Failed line searches: the step is rejected, the phase never rises.

# One trial step per line search: on the toy problem it often finds no
# sufficient decrease (Optax then returns that trial step anyway).
SHORT_LINESEARCH = optax.lbfgs(
    linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=1)
)


@pytest.mark.parametrize("policy", ["frozen", "log"])
def test_failed_line_searches_are_rejected_and_the_phase_never_rises(policy):
    params = net_params()
    state = first_weights_state(BARE, params)
    extra = {"eps": 1e-8} if policy == "log" else {}
    new_params, _, info = oil.run_lbfgs(
        loss_fn,
        params,
        state,
        iterations=24,
        policy=policy,
        optimizer=SHORT_LINESEARCH,
        **extra,
    )
    objective, after = np.asarray(info.objective), np.asarray(info.objective_after)
    failed, rejected = np.asarray(info.linesearch_failed), np.asarray(info.rejected)
    stopped = np.asarray(info.stopped)
    assert failed.any(), "the short line search should fail on this problem"
    # No iteration ends above where it started, so neither does the phase.
    assert np.all(after <= objective)
    assert after[-1] <= objective[0]
    # Every failed line search was rejected, and a rejected step kept the iterate.
    assert np.all(rejected[failed])
    np.testing.assert_array_equal(after[rejected], objective[rejected])
    # The record is the objective at the parameters returned.
    if policy == "log":
        value_fn = oil.log_objective(loss_fn, eps=1e-8)
    else:
        value_fn = oil.weighted_objective(loss_fn, oil.loss_weights(state))
    np.testing.assert_allclose(after[-1], value_fn(new_params), rtol=1e-10)
    # Stopped exactly from the iteration after the second rejection in a row,
    # and for good (no refresh in these policies).
    pairs = np.flatnonzero(rejected[:-1] & rejected[1:])
    if pairs.size:
        first = pairs[0] + 2
        np.testing.assert_array_equal(np.flatnonzero(stopped), np.arange(first, 24))
        assert not rejected[stopped].any()
    else:
        assert not stopped.any()


def test_refreshed_policy_with_failed_line_searches_never_rises_between_refreshes():
    params = net_params()
    state = first_weights_state(BARE, params)
    _, _, info = oil.run_lbfgs(
        loss_fn,
        params,
        state,
        iterations=ITERATIONS,
        policy="refreshed",
        method=BARE,
        refresh_every=REFRESH,
        optimizer=SHORT_LINESEARCH,
    )
    objective, after = np.asarray(info.objective), np.asarray(info.objective_after)
    assert np.all(after <= objective)
    # Each stretch on one objective ends at or below where it started.
    for start in range(0, ITERATIONS, REFRESH):
        assert after[start + REFRESH - 1] <= objective[start]
    # A refresh that changed the weights starts a stopped phase again.
    stopped = np.asarray(info.stopped)
    if np.asarray(info.refreshed)[REFRESH]:
        assert not stopped[REFRESH]


@pytest.mark.parametrize(
    "method",
    [
        oil.lr_annealing(reference="fit", update_every=10),
        oil.inverse_loss(update_every=10),
        oil.sharded(oil.grad_norm_balance(update_every=10), "data"),
    ],
    ids=["lr_annealing", "inverse_loss", "sharded"],
)
def test_refreshed_policy_with_a_method_that_holds_its_weights_is_an_error(method):
    params = net_params()
    state = first_weights_state(oil.inverse_loss(), params)
    with pytest.raises(ValueError, match=r"cannot refresh as asked.*update_every=10"):
        oil.run_lbfgs(
            loss_fn,
            params,
            state,
            iterations=30,
            policy="refreshed",
            method=method,
            refresh_every=10,
        )


@pytest.mark.parametrize("weight_rtol", [-1e-3, "1e-4"])
def test_run_lbfgs_checks_weight_rtol(weight_rtol):
    params = net_params()
    state = first_weights_state(oil.inverse_loss(), params)
    with pytest.raises((TypeError, ValueError), match="weight_rtol must be"):
        oil.run_lbfgs(loss_fn, params, state, iterations=3, weight_rtol=weight_rtol)
