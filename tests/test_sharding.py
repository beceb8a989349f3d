"""Sharded training gives the weights and parameters of one device.

Runs over every method of the registry on 8 CPU devices (tests/conftest.py sets
``--xla_force_host_platform_device_count=8``): under ``jax.jit`` with sharded
inputs (no wrapper needed), and inside ``jax.shard_map`` with
``optax_invloss.sharded`` (an even split, and an uneven split given by ``counts``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _methods import CASES, one_case_per_method, toy_params
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_invloss as oil

N_DEVICES = 8
POINTS = 64
STEPS = 4


def _varying(x, axis_name):
    """Marks a device-invariant value as per-device (pcast in new JAX, pvary before)."""
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axis_name, to="varying")
    return jax.lax.pvary(x, axis_name)


def local_losses(params, x, mask):
    """Mean losses over the valid points of ``x`` (mask 1) on this device."""
    w, b = params["w"][0], params["b"]
    pred = w[0] * x + w[1] * x**2 + b
    count = jnp.sum(mask)
    return {
        "pde": jnp.sum(mask * (pred - jnp.sin(3 * x)) ** 2) / count,
        "bc": 10.0 * (w[0] + w[1] + b - 1.0) ** 2 + 1e-3,
    }


def local_residuals(params, x, mask):
    w, b = params["w"][0], params["b"]
    pred = w[0] * x + w[1] * x**2 + b
    return {
        "pde": mask * (pred - jnp.sin(3 * x)),
        "bc": jnp.stack([w[0] + w[1] + b - 1.0]),
    }


def point_residuals(params, points):
    """``local_residuals`` from the points: pde rows (x, mask), one dummy bc point."""
    w, b = params["w"][0], params["b"]
    x, mask = points["pde"][:, 0], points["pde"][:, 1]
    pred = w[0] * x + w[1] * x**2 + b
    return {
        "pde": mask * (pred - jnp.sin(3 * x)),
        "bc": jnp.zeros_like(points["bc"]) + (w[0] + w[1] + b - 1.0),
    }


def _inputs(case, loss_fn, residual_fn, x, mask):
    inputs = case.inputs(None, loss_fn)
    inputs.pop("params", None)
    if "points" in inputs:
        inputs["residual_fn"] = point_residuals
        # The bc point is the same on every device: taken once, not gathered.
        inputs["points"] = {"pde": jnp.stack([x, mask], axis=1), "bc": jnp.zeros(1)}
    elif "residual_fn" in inputs:
        inputs["residual_fn"] = residual_fn
    return inputs


def _train_one_device(case, x, mask):
    method = case.make()
    params = toy_params(jnp.float64)
    tx = optax.adam(0.05)
    opt_state = tx.init(params)
    state = method.init(local_losses(params, x, mask))

    @jax.jit
    def step(params, opt_state, state):
        weights = oil.loss_weights(state)
        loss_fn = lambda p: local_losses(p, x, mask)
        residual_fn = lambda p: local_residuals(p, x, mask)
        grads = jax.grad(lambda p: oil.weighted_sum(loss_fn(p), weights))(params)
        _, state = method.update(
            loss_fn(params),
            state,
            params=params,
            **_inputs(case, loss_fn, residual_fn, x, mask),
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state

    for _ in range(STEPS):
        params, opt_state, state = step(params, opt_state, state)
    return params, oil.loss_weights(state)


def _train_shard_map(case, x, mask, counts):
    mesh = jax.make_mesh((N_DEVICES,), ("data",))
    method = oil.sharded(case.make(), "data")
    params = toy_params(jnp.float64)
    tx = optax.adam(0.05)
    opt_state = tx.init(params)
    state = method.init(local_losses(params, x[:8], mask[:8]))

    def step(params, opt_state, state, x, mask, count):
        count = count[0] if counts else None
        weights = oil.loss_weights(state)
        loss_fn = lambda p: local_losses(p, x, mask)
        residual_fn = lambda p: local_residuals(p, x, mask)
        # The user's own gradient: of the weighted global losses.
        grads = jax.grad(
            lambda p: oil.weighted_sum(
                oil.global_mean(loss_fn(p), "data", count), weights
            )
        )(params)
        extra = {"counts": count} if counts else {}
        _, state = method.update(
            loss_fn(params),
            state,
            params=params,
            **_inputs(case, loss_fn, residual_fn, x, mask),
            **extra,
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # One copy of the weights per device, to check that they agree.
        per_device = jax.tree.map(
            lambda w: _varying(w, "data")[None], oil.loss_weights(state)
        )
        return params, opt_state, state, per_device

    step = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P(), P(), P("data"), P("data"), P("data")),
            out_specs=(P(), P(), P(), P("data")),
        )
    )
    count = jnp.sum(mask.reshape(N_DEVICES, -1), axis=1)
    x, mask, count = jax.device_put((x, mask, count), NamedSharding(mesh, P("data")))
    for _ in range(STEPS):
        params, opt_state, state, per_device = step(
            params, opt_state, state, x, mask, count
        )
        # One sharded step in flight at a time: simulated CPU devices on few cores
        # can deadlock in XLA's all-reduce when several steps are queued.
        jax.block_until_ready(params)
    return params, oil.loss_weights(state), per_device


SHARDING_CASES = one_case_per_method(CASES)


@pytest.fixture(params=SHARDING_CASES, ids=[c.name for c in SHARDING_CASES])
def case(request):
    return request.param


def _points(uneven: bool):
    x = jnp.linspace(-1.0, 1.0, POINTS, dtype=jnp.float64)
    mask = jnp.ones(POINTS, jnp.float64)
    if uneven:  # device d keeps its first d + 1 of 8 points: 36 of 64 in all.
        mask = (jnp.arange(8)[None, :] <= jnp.arange(8)[:, None]).astype(jnp.float64)
        mask = mask.reshape(-1)
    return x, mask


def _first_of_each_inputs(cases):
    """The first case of each set of keyword inputs (loss values only, loss_fn, ...)."""
    seen, chosen = set(), []
    for c in cases:
        inputs = tuple(sorted(c.inputs(None, None)))
        if inputs not in seen:
            seen.add(inputs)
            chosen.append(c.name)
    return chosen


# An uneven split changes only how the inputs are reduced (counts), which depends
# on the set of keyword inputs, not on the method: one case of each set runs it.
UNEVEN_CASES = _first_of_each_inputs(SHARDING_CASES)
SHARD_MAP_RUNS = [
    pytest.param(c, False, id=f"{c.name}-even") for c in SHARDING_CASES
] + [
    pytest.param(c, True, id=f"{c.name}-uneven")
    for c in SHARDING_CASES
    if c.name in UNEVEN_CASES
]


@pytest.mark.parametrize("case, uneven", SHARD_MAP_RUNS)
def test_shard_map_matches_one_device(case, uneven):
    assert len(jax.devices()) == N_DEVICES
    x, mask = _points(uneven)
    params_1, weights_1 = _train_one_device(case, x[mask > 0], mask[mask > 0])
    params_n, weights_n, per_device = _train_shard_map(case, x, mask, counts=uneven)
    for w in jax.tree.leaves(per_device):  # the same weights on every device
        w = np.asarray(w)
        np.testing.assert_array_equal(w, np.full(N_DEVICES, w[0]))
    np.testing.assert_allclose(
        jax.tree.leaves(weights_n), jax.tree.leaves(weights_1), rtol=1e-9, atol=1e-12
    )
    for a, b in zip(jax.tree.leaves(params_n), jax.tree.leaves(params_1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_jit_with_named_sharding_needs_no_wrapper(case):
    mesh = jax.make_mesh((N_DEVICES,), ("data",))
    x, mask = _points(False)
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    mask_sharded = jax.device_put(mask, NamedSharding(mesh, P("data")))
    method = case.make()
    params = toy_params(jnp.float64)
    state = method.init(local_losses(params, x, mask))

    @jax.jit
    def update(params, state, x, mask):
        loss_fn = lambda p: local_losses(p, x, mask)
        residual_fn = lambda p: local_residuals(p, x, mask)
        return method.update(
            loss_fn(params),
            state,
            params=params,
            **_inputs(case, loss_fn, residual_fn, x, mask),
        )

    w_sharded, _ = update(params, state, x_sharded, mask_sharded)
    w_single, _ = update(params, state, x, mask)
    np.testing.assert_allclose(
        jax.tree.leaves(w_sharded), jax.tree.leaves(w_single), rtol=1e-12
    )


def test_global_mean_by_hand():
    mesh = jax.make_mesh((N_DEVICES,), ("data",))
    # Device d holds loss d and d + 1 points: sum_d d (d + 1) / sum_d (d + 1)
    # = 168 / 36 for d = 0..7; the plain mean over devices is 3.5.
    losses, counts = jax.device_put(
        (jnp.arange(8.0), jnp.arange(8.0) + 1), NamedSharding(mesh, P("data"))
    )

    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
    def reduce(loss, count):
        return jnp.stack(
            [
                oil.global_mean(loss[0], "data"),
                oil.global_mean(loss[0], "data", count[0]),
            ]
        )

    np.testing.assert_allclose(reduce(losses, counts), [3.5, 168 / 36])
