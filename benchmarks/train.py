"""Train one PINN with one method: the loop every benchmark shares.

The training step is :func:`benchmarks.step.weighted_step`, the one the docs teach
for each family: a term weighting (one forward and one backward pass, the weights
in the optimizer state), a gradient aggregator (a
:class:`benchmarks.methods.Aggregator` chained in front of the optimizer, the
per-term gradients computed by its ``update`` from ``loss_fn=``) or a per-point
weighting (``rba``, ``self_adaptive``; updated inside the differentiated function).

Per-point weights belong to points, so those runs train on a fixed *pool* of
collocation points, drawn once per seed (``problem.sample`` with ``pool`` points
per piece): when the pool is the batch size, every step uses the whole pool (a
fixed collocation set, as the RBA and SA-PINN papers train); when it is larger,
each step draws ``batch`` points of each term from it without replacement and
passes their positions as ``indices`` (the library's index-addressed mode). Any
method can be trained on a pool (``pool=``); without one, the points are
resampled every step.

Steps run jitted in chunks under ``lax.scan``; the error on the evaluation grid is
measured between chunks, outside the timed region. :class:`Trainer` compiles the
chunk once for a (problem, method, settings) and runs it for any number of seeds;
:func:`train` is the one-run shortcut.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_invloss as oil
from benchmarks import methods as specs
from benchmarks.problems import Preset, Problem, relative_l2
from benchmarks.run_result import RunResult
from benchmarks.step import draw_from_pool, point_loss_fn, weighted_step

__all__ = ["LBFGS_BATCH_KEY", "RunResult", "Trainer", "train", "weighted_step"]


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


#: Offset of the seed in the key of its fixed pool of collocation points.
POOL_KEY_OFFSET = 2_000_003


def method_kind(method: Any) -> str:
    """``"weighting"`` (None too), ``"aggregator"`` or ``"point"``."""
    if isinstance(method, specs.Aggregator):
        return "aggregator"
    if isinstance(method, oil.PointWeightingMethod):
        return "point"
    return "weighting"


#: Key of the fixed batch every L-BFGS phase runs on (the same for every seed, so
#: that the compiled phase is shared; the seeds differ by initialisation and by
#: the Adam phase's samples).
LBFGS_BATCH_KEY = 20_250_101


class Trainer:
    """Compiles the training chunk of one (problem, method, settings) once.

    Args:
      problem: a benchmark problem.
      method: a weighting method of the library, or None for the plain sum; a
        :class:`benchmarks.methods.Aggregator`; or a per-point method
        (``optax_invloss.PointWeightingMethod``).
      settings: network, batch, steps and optimizer (a problem's preset,
        possibly edited with ``dataclasses.replace``).
      steps: number of steps (default: the settings'); rounded up to whole chunks.
      chunk: steps per jitted ``lax.scan`` call; the error is measured after each.
      optimizer: overrides the settings' optimizer.
      lbfgs_steps: L-BFGS iterations after the first-order phase (0: none), by
        :func:`optax_invloss.run_lbfgs` on one fixed batch (drawn with
        ``LBFGS_BATCH_KEY``, the same for every seed).
      lbfgs: keyword arguments of ``run_lbfgs`` for that phase: ``policy``
        (``"frozen"`` by default), ``refresh_every``, ``eps``. The weighting
        method and, for ``"refreshed"``, ``residual_fn`` are passed along.
        Term weightings only.
      pool: train on a fixed pool of this many points per piece, drawn once
        per seed (at least ``settings.batch``); None resamples every step,
        except for a per-point method, whose default pool is ``settings.batch``
        points (a fixed collocation set).
    """

    def __init__(
        self,
        problem: Problem,
        method: oil.WeightingMethod | None,
        settings: Preset,
        *,
        steps: int | None = None,
        chunk: int = 500,
        optimizer: optax.GradientTransformation | None = None,
        lbfgs_steps: int = 0,
        lbfgs: Mapping[str, Any] | None = None,
        pool: int | None = None,
    ):
        self.problem = problem
        self.settings = settings
        self.steps = settings.steps if steps is None else int(steps)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got steps = {self.steps}")
        if lbfgs_steps < 0:
            raise ValueError(f"lbfgs_steps must be >= 0, got {lbfgs_steps}")
        if lbfgs_steps and not hasattr(oil, "run_lbfgs"):
            raise ValueError(
                f"lbfgs_steps = {lbfgs_steps} asks for an L-BFGS phase, but this "
                "version of optax_invloss has no L-BFGS weighting policies "
                "(optax_invloss.run_lbfgs)"
            )
        self.kind = method_kind(method)
        if lbfgs_steps and self.kind != "weighting":
            raise ValueError(
                f"lbfgs_steps = {lbfgs_steps}: the runner's L-BFGS phase follows a "
                f"term weighting only, not a{'n' if self.kind[0] == 'a' else ''} "
                f"{'aggregator' if self.kind == 'aggregator' else 'per-point method'}"
            )
        if pool is None and self.kind == "point":
            pool = settings.batch
        if pool is not None and (isinstance(pool, bool) or int(pool) < settings.batch):
            raise ValueError(
                f"pool must be at least the batch size {settings.batch} (points per "
                f"piece), got pool = {pool!r}"
            )
        self.pool = None if pool is None else int(pool)
        self.chunk = max(1, min(int(chunk), self.steps))
        self.n_chunks = -(-self.steps // self.chunk)
        self.method = _equal_weights() if method is None else method
        self.lbfgs_steps = int(lbfgs_steps)
        self.lbfgs = dict(lbfgs or {})
        self.graphdef, params = nnx.split(problem.network(settings, 0))
        graphdef = self.graphdef

        def apply_fn(params):
            return nnx.merge(graphdef, params)

        def loss_fn(params, batch):
            return problem.loss_terms(
                apply_fn(params), batch, sum_pieces=settings.sum_pieces
            )

        def residual_fn(params, batch):
            return problem.residuals(apply_fn(params), batch)

        if self.lbfgs_steps:  # one function object each: compiled once
            fixed = problem.sample(jax.random.key(LBFGS_BATCH_KEY), settings.batch)
            # Points in the parameters' dtype, so that the objective is too:
            # optax.lbfgs's line search needs one dtype (with x64 on, sampled
            # points are float64 and the network float32).
            dtype = optax.tree.dtype(params, "lowest")
            fixed = jax.tree.map(lambda x: x.astype(dtype), fixed)
            self._lbfgs_loss = lambda params: loss_fn(params, fixed)
            self._lbfgs_inputs = {}
            if self.lbfgs.get("policy") == "refreshed":
                self._lbfgs_inputs["method_inputs"] = {
                    "residual_fn": lambda params: residual_fn(params, fixed)
                }
        batch = jax.eval_shape(
            lambda k: problem.sample(k, settings.batch), jax.random.key(0)
        )
        example = jax.eval_shape(loss_fn, params, batch)
        if optimizer is None:
            optimizer = settings.make_optimizer()
            if self.kind == "aggregator" and self.method.plain_sgd:
                optimizer = optax.sgd(settings.schedule())
        if self.kind == "weighting":
            tx = oil.with_weighting(optimizer, self.method, losses=example)
        elif self.kind == "aggregator":
            tx = optax.chain(self.method.transform, optimizer)
        else:
            tx = optimizer
        self.tx = tx
        point_loss = None
        if self.kind == "point":
            point_loss = point_loss_fn(problem, settings, self.method, residual_fn)
        draw = None
        if self.pool is not None:
            pool_shape = jax.eval_shape(
                lambda k: problem.sample(k, self.pool), jax.random.key(0)
            )
            draw = draw_from_pool(batch, pool_shape)

        step = weighted_step(
            tx,
            loss_fn,
            residual_fn,
            lambda key: problem.sample(key, settings.batch),
            aggregator=self.kind == "aggregator",
            point_loss=point_loss,
            draw=draw,
        )

        def run_chunk(params, opt_state, extra, keys):
            return jax.lax.scan(step, (params, opt_state, extra), keys)

        # Every seed of a run in one program (each with its own parameters,
        # optimizer and weighting state, and keys): the chunk vmapped over seeds,
        # or, for a gradient-based method, the seeds one after the other in the
        # program. Under vmap a method's lax.cond on "an update is due" becomes a
        # select (its predicate depends on the per-seed state), which would run
        # the per-term gradients on every step, due or not. Aggregators: vmapped
        # with a refresh every step (no conditional); seed by seed with
        # update_every > 1 and for M-ConFIG (a lax.switch over the terms).
        # Per-point methods: vmapped.
        if self.kind == "weighting":
            self.vmapped = not specs.needs_gradients(self.method)
        elif self.kind == "aggregator":
            self.vmapped = self.method.vmappable
        else:
            self.vmapped = True
        self._batched_chunk = jax.jit(
            jax.vmap(run_chunk) if self.vmapped else _seed_by_seed(run_chunk)
        )
        self._params_example = params
        self._compiled: dict[int, Any] = {}
        self._compile_reported: set[int] = set()
        self.compile_seconds = self._compile(1)

        points, exact = problem.reference()
        points = jnp.asarray(points, jnp.float32)
        self._error = jax.jit(
            jax.vmap(lambda params: relative_l2(apply_fn(params)(points), exact))
        )

    def _compile(self, n: int) -> float:
        """Compiles the chunk for ``n`` seeds ahead of time; returns the seconds."""
        if n in self._compiled:
            return 0.0
        batched = lambda tree: jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype), tree
        )
        params = batched(self._params_example)
        opt_state, extra = batched(
            jax.eval_shape(self._init, self._params_example, jax.random.key(0))
        )
        keys = jax.eval_shape(
            lambda: jax.random.split(jax.random.key(0), (n, self.chunk))
        )
        start = time.perf_counter()
        lowered = self._batched_chunk.lower(params, opt_state, extra, keys)
        self._compiled[n] = lowered.compile()
        return time.perf_counter() - start

    def _init(self, params, pool_key) -> tuple[Any, dict]:
        """One seed's ``(opt_state, extra)``: ``extra`` holds its fixed pool of
        points (``"pool"``) and a per-point method's state (``"point_state"``)."""
        extra = {}
        if self.pool is not None:
            extra["pool"] = self.problem.sample(pool_key, self.pool)
        if self.kind == "point":
            residuals = jax.eval_shape(
                lambda p, x: self.problem.residuals(nnx.merge(self.graphdef, p), x),
                params,
                extra["pool"],
            )
            extra["point_state"] = self.method.init(residuals)
        return self.tx.init(params), extra

    def _skipped(self, opt_state, extra) -> jax.Array:
        """Updates the method refused (NaN/Inf), per seed."""
        if self.kind == "point":
            return extra["point_state"].skipped_updates
        if self.kind == "aggregator":
            for name in ("aggregation_skipped", "m_config_skipped"):
                value = optax.tree.get(opt_state, name)
                if value is not None:
                    return value
            raise RuntimeError("the aggregator's state has no skip counter")
        return opt_state.weighting_state.skipped_updates

    def _keys(self, seed: int) -> jax.Array:
        """The step keys of ``seed``: shape ``(n_chunks, chunk)``."""
        key = jax.random.key(seed + 1_000_003)
        # A fixed grid needs no keys, unless batches are drawn from a pool.
        if self.problem.full_batch and self.pool is None:
            return jnp.broadcast_to(key, (self.n_chunks, self.chunk))
        keys = jax.random.split(key, self.n_chunks * self.chunk)
        return keys.reshape(self.n_chunks, self.chunk)

    def run(
        self,
        seed: int = 0,
        *,
        progress: Callable[[int], None] | None = None,
        on_eval: Callable[[int, float], None] | None = None,
    ) -> RunResult:
        """Trains from the initialisation of ``seed``.

        Args:
          seed: seeds the network initialisation and the collocation samples.
          progress: called with the number of steps done after each chunk.
          on_eval: called with ``(step, error)`` after each evaluation.
        """
        on_evals = None if on_eval is None else lambda step, e: on_eval(step, e[0])
        return self.run_seeds([seed], progress=progress, on_eval=on_evals)[0]

    def run_seeds(
        self,
        seeds: Sequence[int],
        *,
        progress: Callable[[int], None] | None = None,
        on_eval: Callable[[int, np.ndarray], None] | None = None,
    ) -> list[RunResult]:
        """Trains every seed in one compiled program (``jax.vmap`` over seeds).

        Gradient-based methods run their seeds one after the other inside the
        program instead (``vmapped`` False): under ``vmap`` their "update due"
        conditional would run on every step.

        Each seed's result is the one :meth:`run` gives for it (to float
        tolerance: batched matrix products may round differently). Its times
        are the batch's divided by the number of seeds: the cost of one seed
        when all are trained together.

        Args:
          seeds: the seeds, each as in :meth:`run`.
          progress: called with the number of steps done (per seed) per chunk.
          on_eval: called with ``(step, errors)``, one error per seed (after
            an L-BFGS phase, which runs seed by seed: that seed's alone).
        """
        seeds, chunk = [int(s) for s in seeds], self.chunk
        n = len(seeds)
        if n < 1 or len(set(seeds)) != n:
            raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
        compile_seconds = self._compile(n)
        program = self._compiled[n]
        inits = [nnx.split(self.problem.network(self.settings, s)) for s in seeds]
        if any(g != self.graphdef for g, _ in inits):  # pragma: no cover
            raise RuntimeError("the network's structure changed between seeds")
        params = jax.tree.map(lambda *x: jnp.stack(x), *[p for _, p in inits])
        pool_keys = jnp.stack([jax.random.key(s + POOL_KEY_OFFSET) for s in seeds])
        opt_state, extra = jax.vmap(self._init)(params, pool_keys)
        keys = jnp.stack([self._keys(s) for s in seeds], axis=1)
        times, cpu_times, errors, at, losses_h, weights_h = [], [], [], [], [], []
        for i in range(self.n_chunks):
            start, cpu_start = time.perf_counter(), time.process_time()
            (params, opt_state, extra), (losses, weights) = program(
                params, opt_state, extra, keys[i]
            )
            jax.block_until_ready(params)
            times.append((time.perf_counter() - start) / n)
            cpu_times.append((time.process_time() - cpu_start) / n)
            errors.append(np.asarray(self._error(params), np.float64))
            at.append((i + 1) * chunk)
            losses_h.append(jax.device_get(losses))
            weights_h.append(jax.device_get(weights))
            if progress is not None:
                progress(chunk)
            if on_eval is not None:
                on_eval(at[-1], errors[-1])
        cat = lambda hs, j: {k: np.concatenate([h[k][j] for h in hs]) for k in hs[0]}
        seed_of = lambda tree, j: jax.tree.map(lambda x: x[j], tree)
        skipped = np.asarray(self._skipped(opt_state, extra))
        point_weights = None
        if self.kind == "point":
            point_weights = jax.device_get(extra["point_state"].point_weights)
        results = []
        for j in range(n):
            result = RunResult(
                steps=np.asarray(at),
                errors=np.asarray([e[j] for e in errors]),
                losses=cat(losses_h, j),
                weights=cat(weights_h, j),
                train_seconds=sum(times),
                compile_seconds=0.0,
                params=seed_of(params, j),
                graphdef=self.graphdef,
                skipped_updates=int(skipped[j]),
                adam_steps=at[-1],
                chunk_seconds=tuple(times),
                chunk_cpu_seconds=tuple(cpu_times),
                batch_seeds=n,
                kind=self.kind,
                pool=self.pool,
                point_weights=None
                if point_weights is None
                else {k: np.asarray(v[j]) for k, v in point_weights.items()},
            )
            if self.lbfgs_steps:
                weighting_state = seed_of(opt_state.weighting_state, j)
                result = self._lbfgs_phase(result, weighting_state, progress, on_eval)
            results.append(result)
        if n not in self._compile_reported:
            self._compile_reported.add(n)
            first = self.compile_seconds if n == 1 else compile_seconds
            results[0] = dataclasses.replace(results[0], compile_seconds=first)
        return results

    def _lbfgs_phase(self, result, weighting_state, progress, on_eval) -> RunResult:
        """``result`` continued by the L-BFGS phase from its parameters."""
        start = time.perf_counter()
        params, weighting_state, info = oil.run_lbfgs(
            self._lbfgs_loss,
            result.params,
            weighting_state,
            iterations=self.lbfgs_steps,
            method=self.method,
            **self.lbfgs,
            **self._lbfgs_inputs,
        )
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        error = float(self._error(jax.tree.map(lambda x: x[None], params))[0])
        if progress is not None:
            progress(self.lbfgs_steps)
        if on_eval is not None:
            on_eval(result.adam_steps + self.lbfgs_steps, np.asarray([error]))
        return dataclasses.replace(
            result,
            steps=np.append(result.steps, result.adam_steps + self.lbfgs_steps),
            errors=np.append(result.errors, error),
            params=params,
            lbfgs_seconds=seconds,
            lbfgs_weights={
                k: float(v) for k, v in oil.loss_weights(weighting_state).items()
            },
            lbfgs_linesearch_failures=int(np.sum(info.linesearch_failed)),
            skipped_updates=int(weighting_state.skipped_updates),
        )


def _seed_by_seed(run_chunk: Callable) -> Callable:
    """``run_chunk`` over a leading seed axis, one seed after the other."""

    def run(params, opt_state, extra, keys):
        seed = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
        outs = [
            run_chunk(seed(params, i), seed(opt_state, i), seed(extra, i), keys[i])
            for i in range(keys.shape[0])
        ]
        return jax.tree.map(lambda *x: jnp.stack(x), *outs)

    return run


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
    lbfgs_steps: int = 0,
    lbfgs: Mapping[str, Any] | None = None,
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
      lbfgs_steps: L-BFGS iterations after the first-order phase (0: none).
      lbfgs: options of the L-BFGS phase (see :class:`Trainer`).
    """
    trainer = Trainer(
        problem,
        method,
        problem.preset(preset),
        steps=steps,
        chunk=chunk,
        optimizer=optimizer,
        lbfgs_steps=lbfgs_steps,
        lbfgs=lbfgs,
    )
    return trainer.run(seed, progress=progress)
