"""Extreme loss values on the paths around the methods (issue 17): Flax NNX's
optimizer, ``jax.pmap`` of a sharded update, uneven shards."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil


def test_nnx_optimizer_with_a_loss_value_method_on_extreme_losses():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray([0.1, -0.2], jnp.float32))

    def toy_losses(w):
        return {"pde": jnp.sum((w - 1.0) ** 2), "bc": jnp.sum(w**2) + 1e-3}

    model = Model()
    method = oil.softadapt(beta=5.8, variant="plain")
    tx = oil.with_weighting(optax.adam(1e-2), method, losses=toy_losses(model.w[...]))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, scale):
        weights = oil.loss_weights(optimizer)

        def total(model):
            losses = toy_losses(model.w[...])
            return oil.weighted_sum(losses, weights), losses

        (_, losses), grads = nnx.value_and_grad(total, has_aux=True)(model)
        # The weighting sees the losses scaled to the extremes of float32.
        scaled = jax.tree.map(lambda x: x * scale, losses)
        optimizer.update(model, grads, losses=scaled)

    # The losses start near 2.3 and 0.05: scaled by 1e38 they stay finite.
    for scale in (1.0, 1e12, 1e38, 1e-30, 0.0, 1e38):
        step(model, optimizer, jnp.float32(scale))
        w = np.asarray(jax.tree.leaves(oil.loss_weights(optimizer)))
        assert np.all(np.isfinite(w)) and abs(w.sum() - 1.0) < 1e-6, (scale, w)
        assert np.all(np.isfinite(model.w[...]))
    state = oil._base.find_weighting_state(optimizer)
    assert int(state.skipped_updates) == 0 and int(state.weighting_step) == 6


@pytest.mark.parametrize("uneven", [False, True])
def test_pmap_of_a_sharded_update_matches_one_device(uneven):
    devices = jax.local_device_count()
    assert devices == 8  # tests/conftest.py
    method = oil.inverse_loss(max_weight=0.5)
    names = ("a", "b", "c")
    rng = np.random.default_rng(0)
    local = {
        "a": np.full(devices, 3e38),  # the sum over devices overflows float32
        "b": rng.choice([0.0, 1e-30, 1.0, 1e26], devices),
        "c": np.zeros(devices),
    }
    counts = np.arange(1, devices + 1) if uneven else np.ones(devices)
    state = method.init({k: jnp.zeros((), jnp.float32) for k in names})
    wrapped = oil.sharded(method, "devices")

    def update(losses, count):
        extra = {"counts": count} if uneven else {}
        return wrapped.update(losses, state, **extra)[0]

    losses = {k: jnp.asarray(v, jnp.float32) for k, v in local.items()}
    got = jax.pmap(update, axis_name="devices")(
        losses, jnp.asarray(counts, jnp.float32)
    )
    for k in names:  # every device holds the same weights
        assert np.all(np.asarray(got[k]) == np.asarray(got[k])[0])
    # One device on the global losses (float64 means, cast to float32).
    share = counts / counts.sum()
    global_losses = {k: jnp.float32(np.sum(share * v)) for k, v in local.items()}
    expected, _ = jax.jit(method.update)(global_losses, state)
    w = np.asarray([got[k][0] for k in names])
    np.testing.assert_allclose(w, [expected[k] for k in names], rtol=1e-5)
    assert np.all(np.isfinite(w)) and abs(w.sum() - 1.0) < 1e-6
