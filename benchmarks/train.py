"""Train one PINN with one weighting method: the loop every benchmark shares.

The training step is the one the README teaches: one forward and one backward pass
per step; the weights applied at a step are those already in the optimizer state
(``optax_invloss.loss_weights(opt_state)``), and the losses of this step update them
through :func:`optax_invloss.with_weighting`. Steps run jitted in chunks under
``lax.scan``; the error on the evaluation grid is measured between chunks, outside
the timed region.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_invloss as oil
from benchmarks.problems import MLP, Problem, relative_l2


@dataclasses.dataclass
class RunResult:
    """What one training run produced.

    Attributes:
      steps: the step counts at which ``errors`` were measured (after the step).
      errors: relative L2 error on the evaluation grid at those steps.
      losses: per-term loss, ``{term: (steps_total,)}``, every step.
      weights: per-term weight applied at each step, ``{term: (steps_total,)}``.
      train_seconds: wall time of the jitted training chunks only (compilation
        of the first chunk excluded).
      compile_seconds: wall time of the first chunk minus an estimate of its
        run time (the median chunk time).
      params: the final parameters (an ``nnx.State``).
      skipped_updates: updates the weighting refused (NaN/Inf/negative losses).
    """

    steps: np.ndarray
    errors: np.ndarray
    losses: dict
    weights: dict
    train_seconds: float
    compile_seconds: float
    params: object
    graphdef: object
    skipped_updates: int

    @property
    def final_error(self) -> float:
        return float(self.errors[-1])

    @property
    def best_error(self) -> float:
        return float(np.min(self.errors))

    @property
    def final_weights(self) -> dict:
        return {k: float(v[-1]) for k, v in self.weights.items()}


def _equal_weights() -> oil.WeightingMethod:
    """Weight 1 on every term: the plain sum (the 'equal weights' baseline)."""

    def init(losses):
        state = oil.inverse_loss().init(losses)
        ones = jax.tree.map(jnp.ones_like, state.loss_weights)
        return state._replace(loss_weights=ones)

    def update(losses, state, **inputs):
        del inputs
        return state.loss_weights, state

    return oil.WeightingMethod(init, update)


def train(
    problem: Problem,
    method: oil.WeightingMethod | None,
    *,
    preset: str = "quick",
    seed: int = 0,
    steps: int | None = None,
    chunk: int = 500,
    optimizer: optax.GradientTransformation | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Trains the problem's MLP with ``method`` (None: equal weights of 1).

    Args:
      problem: a benchmark problem.
      method: a weighting method of the library, or None for the plain sum.
      preset: the problem's preset that gives network, batch, steps and optimizer.
      seed: seeds the network initialisation and the collocation samples.
      steps: number of steps (default: the preset's); rounded up to whole chunks.
      chunk: steps per jitted ``lax.scan`` call; the error is measured after each.
      optimizer: overrides the preset's optimizer.
      progress: called with the number of steps done after each chunk.
    """
    settings = problem.preset(preset)
    steps = settings.steps if steps is None else steps
    chunk = max(1, min(chunk, steps))
    n_chunks = -(-steps // chunk)
    model = MLP(settings.layers, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)

    def apply_fn(params):
        return nnx.merge(graphdef, params)

    def loss_fn(params, batch):
        return problem.loss_terms(apply_fn(params), batch)

    def residual_fn(params, batch):
        return problem.residuals(apply_fn(params), batch)

    key = jax.random.key(seed + 1_000_003)
    example = jax.eval_shape(loss_fn, params, problem.sample(key, settings.batch))
    method = _equal_weights() if method is None else method
    tx = oil.with_weighting(
        optimizer if optimizer is not None else settings.make_optimizer(),
        method,
        losses=example,
    )
    opt_state = tx.init(params)

    def step(carry, key):
        params, opt_state = carry
        batch = problem.sample(key, settings.batch)
        weights = oil.loss_weights(opt_state)

        def total(params):
            losses = loss_fn(params, batch)
            return oil.weighted_sum(losses, weights), losses

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = tx.update(
            grads,
            opt_state,
            params,
            losses=losses,
            loss_fn=lambda p: loss_fn(p, batch),
            residual_fn=lambda p: residual_fn(p, batch),
        )
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (losses, weights)

    @jax.jit
    def run_chunk(params, opt_state, keys):
        return jax.lax.scan(step, (params, opt_state), keys)

    points, exact = problem.reference()
    points = jnp.asarray(points, jnp.float32)

    @jax.jit
    def error(params):
        return relative_l2(apply_fn(params)(points), exact)

    keys = jax.random.split(key, n_chunks * chunk).reshape(n_chunks, chunk)
    if problem.full_batch:
        keys = jnp.broadcast_to(key, (n_chunks, chunk))
    times, errors, at, losses_h, weights_h = [], [], [], [], []
    for i in range(n_chunks):
        start = time.perf_counter()
        (params, opt_state), (losses, weights) = run_chunk(params, opt_state, keys[i])
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
        errors.append(float(error(params)))
        at.append((i + 1) * chunk)
        losses_h.append(jax.device_get(losses))
        weights_h.append(jax.device_get(weights))
        if progress is not None:
            progress(chunk)
    run_times = times[1:] if len(times) > 1 else times
    median = float(np.median(run_times))
    cat = lambda hs: {k: np.concatenate([h[k] for h in hs]) for k in hs[0]}
    return RunResult(
        steps=np.asarray(at),
        errors=np.asarray(errors),
        losses=cat(losses_h),
        weights=cat(weights_h),
        train_seconds=float(sum(run_times) + (median if len(times) > 1 else 0.0)),
        compile_seconds=max(0.0, times[0] - median) if len(times) > 1 else 0.0,
        params=params,
        graphdef=graphdef,
        skipped_updates=int(opt_state.weighting_state.skipped_updates),
    )
