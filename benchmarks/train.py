"""Train one PINN with one weighting method: the loop every benchmark shares.

The training step is the one the README teaches: one forward and one backward pass
per step; the weights applied at a step are those already in the optimizer state
(``optax_invloss.loss_weights(opt_state)``), and the losses of this step update them
through :func:`optax_invloss.with_weighting`. Steps run jitted in chunks under
``lax.scan``; the error on the evaluation grid is measured between chunks, outside
the timed region.

:class:`Trainer` compiles the chunk once for a (problem, method, settings) and runs
it for any number of seeds; :func:`train` is the one-run shortcut.
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


@dataclasses.dataclass
class RunResult:
    """What one training run produced.

    Attributes:
      steps: the step counts at which ``errors`` were measured (after the step).
      errors: relative L2 error on the evaluation grid at those steps.
      losses: per-term loss, ``{term: (steps_total,)}``, every step.
      weights: per-term weight applied at each step, ``{term: (steps_total,)}``.
      train_seconds: wall time of the jitted training chunks only (compilation
        excluded: the chunk is compiled ahead of time, see ``compile_seconds``).
      compile_seconds: wall time of compiling the chunk; 0 for every run of a
        :class:`Trainer` after its first.
      params: the final parameters (an ``nnx.State``).
      graphdef: the network's ``nnx.GraphDef``; ``nnx.merge(graphdef, params)``
        rebuilds the trained model.
      skipped_updates: updates the weighting refused (NaN/Inf/negative losses).
      adam_steps: steps of the first-order phase (``steps[-1]`` when no L-BFGS
        phase follows).
      chunk_seconds: wall time of each chunk of the first-order phase.
      chunk_cpu_seconds: CPU time of the process (all threads) during each
        chunk; steadier than wall time on a shared machine.
      lbfgs_seconds: wall time of the L-BFGS phase (its compilation included on
        a :class:`Trainer`'s first run); 0 without one.
      lbfgs_weights: the weights at the end of the L-BFGS phase, or None.
      lbfgs_linesearch_failures: L-BFGS iterations whose line search found no
        step of sufficient decrease.
      batch_seeds: seeds trained together in the run's compiled program; its
        times are the batch's divided by this.
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
    adam_steps: int = 0
    chunk_seconds: tuple[float, ...] = ()
    chunk_cpu_seconds: tuple[float, ...] = ()
    lbfgs_seconds: float = 0.0
    lbfgs_weights: dict | None = None
    lbfgs_linesearch_failures: int = 0
    batch_seeds: int = 1

    @property
    def final_error(self) -> float:
        return float(self.errors[-1])

    @property
    def best_error(self) -> float:
        return float(np.min(self.errors))

    @property
    def seconds_per_step(self) -> float:
        """Time per first-order step, without the first chunk when there are more.

        The first call of a compiled chunk carries a one-off cost (a fraction of
        a second on a CPU) that would dominate short runs; periodic work (an
        update every K steps) is still counted as long as the run spans it.
        """
        return self._per_step(self.chunk_seconds)

    @property
    def cpu_seconds_per_step(self) -> float:
        """Like ``seconds_per_step``, in CPU time of all the process's threads."""
        return self._per_step(self.chunk_cpu_seconds)

    def _per_step(self, times) -> float:
        if len(times) < 2:
            return sum(times) / max(self.adam_steps, 1)
        return sum(times[1:]) / (self.adam_steps * (1 - 1 / len(times)))

    @property
    def final_weights(self) -> dict:
        if self.lbfgs_weights is not None:
            return dict(self.lbfgs_weights)
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


#: Key of the fixed batch every L-BFGS phase runs on (the same for every seed, so
#: that the compiled phase is shared; the seeds differ by initialisation and by
#: the Adam phase's samples).
LBFGS_BATCH_KEY = 20_250_101


class Trainer:
    """Compiles the training chunk of one (problem, method, settings) once.

    Args:
      problem: a benchmark problem.
      method: a weighting method of the library, or None for the plain sum.
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
        self.tx = tx = oil.with_weighting(
            optimizer if optimizer is not None else settings.make_optimizer(),
            self.method,
            losses=example,
        )

        step = weighted_step(
            tx, loss_fn, residual_fn, lambda key: problem.sample(key, settings.batch)
        )

        def run_chunk(params, opt_state, keys):
            return jax.lax.scan(step, (params, opt_state), keys)

        # Every seed of a run in one program (each with its own parameters,
        # optimizer and weighting state, and keys): the chunk vmapped over seeds,
        # or, for a gradient-based method, the seeds one after the other in the
        # program. Under vmap a method's lax.cond on "an update is due" becomes a
        # select (its predicate depends on the per-seed state), which would run
        # the per-term gradients on every step, due or not.
        self.vmapped = not specs.needs_gradients(self.method)
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
        opt_state = batched(jax.eval_shape(self.tx.init, self._params_example))
        keys = jax.eval_shape(
            lambda: jax.random.split(jax.random.key(0), (n, self.chunk))
        )
        start = time.perf_counter()
        self._compiled[n] = self._batched_chunk.lower(params, opt_state, keys).compile()
        return time.perf_counter() - start

    def _keys(self, seed: int) -> jax.Array:
        """The step keys of ``seed``: shape ``(n_chunks, chunk)``."""
        key = jax.random.key(seed + 1_000_003)
        if self.problem.full_batch:
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
        opt_state = jax.vmap(self.tx.init)(params)
        keys = jnp.stack([self._keys(s) for s in seeds], axis=1)
        times, cpu_times, errors, at, losses_h, weights_h = [], [], [], [], [], []
        for i in range(self.n_chunks):
            start, cpu_start = time.perf_counter(), time.process_time()
            (params, opt_state), (losses, weights) = program(params, opt_state, keys[i])
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
                skipped_updates=int(opt_state.weighting_state.skipped_updates[j]),
                adam_steps=at[-1],
                chunk_seconds=tuple(times),
                chunk_cpu_seconds=tuple(cpu_times),
                batch_seeds=n,
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

    def run(params, opt_state, keys):
        seed = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
        outs = [
            run_chunk(seed(params, i), seed(opt_state, i), keys[i])
            for i in range(keys.shape[0])
        ]
        return jax.tree.map(lambda *x: jnp.stack(x), *outs)

    return run


def weighted_step(
    tx: optax.GradientTransformationExtraArgs,
    loss_fn: Callable,
    residual_fn: Callable,
    sample: Callable,
) -> Callable:
    """The training step every benchmark times: ``(carry, key) -> (carry, out)``.

    ``carry = (params, opt_state)`` with ``tx`` from ``with_weighting``; the batch
    is ``sample(key)``. One forward and one backward pass of the weighted sum with
    the weights in the state; the same forward pass's losses update them, and
    ``loss_fn(params, batch)``, ``residual_fn(params, points)`` and the points go
    to ``tx.update`` for the gradient-based methods. ``out = (losses, weights)``.
    """

    def step(carry, key):
        params, opt_state = carry
        batch = sample(key)
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
            residual_fn=residual_fn,
            points=batch,
        )
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (losses, weights)

    return step


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
