"""What one training run of :mod:`benchmarks.train` produced: :class:`RunResult`."""

from __future__ import annotations

import dataclasses

import numpy as np


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
      kind: the method's family: ``"weighting"``, ``"aggregator"`` or
        ``"point"``. The ``weights`` of an aggregator are the weights ``w`` of
        its update ``J^T w`` at each step (empty for M-ConFIG, which has none);
        those of a per-point method are each term's mean per-point weight.
      pool: points per piece of the fixed pool the run trained on, or None
        (points resampled every step).
      point_weights: a per-point method's final weights, ``{term: (N_pool,)}``
        (the weighted terms only); None for the other families.
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
    kind: str = "weighting"
    pool: int | None = None
    point_weights: dict | None = None

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
