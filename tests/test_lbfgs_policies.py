"""The L-BFGS policies benchmark's own loop (the naive one) runs and records."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optax_invloss as oil
from benchmarks import lbfgs_policies


def test_naive_phase_records_every_iteration():
    # The benchmark runs in float32, as it is committed; the suite enables x64.
    with jax.enable_x64(False):
        target = jnp.array([1.0, -2.0], jnp.float32)

        def loss_fn(p):
            return {"a": jnp.sum((p - target) ** 2), "b": jnp.sum(p**2)}

        params = jnp.zeros(2, jnp.float32)
        method = oil.inverse_loss()
        run = lbfgs_policies.make_naive_phase(loss_fn, params, method, 4)
        new, wstate, info, used = run(params, method.init(loss_fn(params)))
    assert isinstance(info, oil.LBFGSInfo)
    assert info.objective.shape == used.shape == (4,)
    assert not np.any(info.rejected | info.stopped | info.refreshed)
    # L-BFGS moved the parameters; each iteration's objective at its new iterate
    # is recomputed (finite), and the first iteration lowered it.
    assert np.all(np.isfinite(info.objective_after))
    assert float(info.objective_after[0]) < float(info.objective[0])
    assert int(wstate.weighting_step) == 4 and not np.allclose(new, params)
