"""The shared shape of a benchmark problem: `Problem`, `Preset` and error helpers.

A problem bundles everything a training loop needs to know about one PDE: how to
draw collocation points, the per-point residuals of each loss term, the exact (or
reference) solution on an evaluation grid, and default training settings ("presets")
for a quick CPU run and for the papers' full-scale run.

Conventions used by every problem:

- ``apply_fn(x)`` maps ONE point ``x`` of shape ``(input_dim,)`` to a scalar; the
  problems ``jax.vmap`` it over points and differentiate it with ``jax.grad`` /
  ``jax.hessian``. A :class:`~benchmarks.problems._mlp.MLP` can be passed directly.
- A batch is a dict ``{term_name: (N_i, input_dim) array}``, one entry per loss term.
- Each loss term is the mean of the squared per-point residuals of that term.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.problems._mlp import INITS, MLP

ApplyFn = Callable[[jax.Array], jax.Array]
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Preset:
    """Default training settings for one problem at one scale.

    The learning rate follows ``learning_rate * decay_rate ** (step / decay_steps)``
    (continuous, not staircase), the papers' ``1e-3 * 0.9 ** (step / 1000)`` by
    default; ``decay_rate=1.0`` gives a constant rate.

    Attributes:
      layers: widths of the MLP, input first, output (1) last.
      batch: points per sampled piece; each problem's ``sample`` says what a piece
        is (a term, or one side of the boundary).
      steps: number of optimizer steps.
      optimizer: ``"adam"`` or ``"sgd"`` (plain gradient descent, no momentum).
      learning_rate: initial learning rate.
      decay_rate: factor applied every ``decay_steps`` steps (smoothly).
      decay_steps: see ``decay_rate``.
      init: the network's initialisation, ``"glorot"``, ``"xavier"`` or
        ``"ntk"`` (see ``benchmarks/problems/_mlp.py``).
      standardize: the network sees its inputs standardized by the problem's
        ``input_mean`` and ``input_std``, as the authors' code does.
      sum_pieces: a term whose points are several equal pieces (the problem's
        ``pieces``: the sides of a boundary) is the sum of the pieces' mean
        squares, as in the authors' code, not the mean over all its points.
    """

    layers: tuple[int, ...]
    batch: int
    steps: int
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    decay_rate: float = 0.9
    decay_steps: int = 1000
    init: str = "glorot"
    standardize: bool = False
    sum_pieces: bool = False

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(
                f"optimizer must be 'adam' or 'sgd', got optimizer = {self.optimizer!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, got {self.init!r}")
        if len(self.layers) < 2 or self.layers[-1] != 1:
            raise ValueError(
                "layers must list at least the input and output widths and end in 1 "
                f"(a scalar output), got layers = {self.layers}"
            )

    def schedule(self) -> optax.Schedule:
        """The learning-rate schedule as an Optax schedule."""
        return optax.exponential_decay(
            self.learning_rate,
            transition_steps=self.decay_steps,
            decay_rate=self.decay_rate,
        )

    def make_optimizer(self) -> optax.GradientTransformation:
        """The Optax optimizer these settings describe."""
        if self.optimizer == "adam":
            return optax.adam(self.schedule())
        return optax.sgd(self.schedule())


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """One PDE benchmark problem.

    Compared and hashed by identity, so a problem can be a static argument of
    ``jax.jit``.

    Attributes:
      name: registry name, e.g. ``"helmholtz"``.
      input_dim: dimension ``d`` of a point (space, then time).
      term_names: names of the loss terms, in a fixed order.
      presets: training settings by name; every problem has ``"quick"`` and
        ``"paper"``.
      sample: ``sample(key, batch) -> {term: (N_i, d)}`` collocation points.
      residuals: ``residuals(apply_fn, points) -> {term: (N_i,)}`` per-point
        residuals; zero for the exact solution.
      exact: exact or reference solution, ``(..., d) -> (...)``.
      eval_points: ``eval_points() -> (N, d)`` numpy evaluation grid.
      eval_shape: shape of the evaluation grid before flattening (for plots).
      full_batch: True when ``sample`` ignores the key and returns a fixed grid.
      input_mean, input_std: per input, the mean and standard deviation of the
        points the residual is sampled from (those of the uniform distribution
        on the domain, or of the fixed grid), for presets that standardize.
      pieces: ``{term: k}`` for a term whose points are ``k`` equal pieces
        (the sides of a boundary), for presets with ``sum_pieces``.
    """

    name: str
    input_dim: int
    term_names: tuple[str, ...]
    presets: Mapping[str, Preset]
    sample: Callable[[jax.Array, int], Batch]
    residuals: Callable[[ApplyFn, Batch], dict[str, jax.Array]]
    exact: Callable[[jax.Array], jax.Array]
    eval_points: Callable[[], np.ndarray]
    eval_shape: tuple[int, ...]
    full_batch: bool = False
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    pieces: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        missing = {"quick", "paper"} - set(self.presets)
        if missing:
            raise ValueError(f"problem {self.name!r} lacks presets {sorted(missing)}")
        for key, preset in self.presets.items():
            if preset.layers[0] != self.input_dim:
                raise ValueError(
                    f"preset {key!r} of problem {self.name!r} has input width "
                    f"{preset.layers[0]}, but the problem has input_dim = "
                    f"{self.input_dim}"
                )
            if preset.standardize and self.input_std is None:
                raise ValueError(
                    f"preset {key!r} of problem {self.name!r} standardizes the "
                    "inputs, but the problem has no input_mean and input_std"
                )
        # A read-only view, so that a shared problem cannot be edited in place.
        object.__setattr__(self, "presets", types.MappingProxyType(dict(self.presets)))
        object.__setattr__(self, "pieces", types.MappingProxyType(dict(self.pieces)))

    def loss_terms(
        self, apply_fn: ApplyFn, batch: Batch, *, sum_pieces: bool = False
    ) -> dict[str, jax.Array]:
        """Mean squared residual of each term: ``{term: scalar}``.

        With ``sum_pieces``, a term of ``k`` equal pieces (``pieces``) is the sum
        of its pieces' mean squares: ``k`` times the mean over its points.
        """
        scale = lambda name: self.pieces.get(name, 1) if sum_pieces else 1
        return {
            name: scale(name) * jnp.mean(jnp.square(r))
            for name, r in self.residuals(apply_fn, batch).items()
        }

    def network(self, preset: Preset, seed: int) -> MLP:
        """The preset's network for this problem, initialised from ``seed``."""
        standardize = dict(input_mean=self.input_mean, input_std=self.input_std)
        return MLP(
            preset.layers,
            rngs=nnx.Rngs(seed),
            init=preset.init,
            **(standardize if preset.standardize else {}),
        )

    def preset(self, name: str) -> Preset:
        """The training settings called ``name``, with a clear error if unknown."""
        try:
            return self.presets[name]
        except KeyError:
            raise ValueError(
                f"problem {self.name!r} has no preset {name!r}; "
                f"choose one of {sorted(self.presets)}"
            ) from None

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation points ``(N, d)`` and the exact solution there ``(N,)``.

        Read-only float64 numpy arrays, computed once per process and cached (the
        Burgers reference needs a quadrature per point).
        """
        return _reference(self)


@functools.cache
def _reference(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(problem.eval_points(), np.float64)
    with jax.enable_x64(True):  # float64 whatever the global setting
        values = np.asarray(problem.exact(points), np.float64)
    points.setflags(write=False)
    values.setflags(write=False)
    return points, values


def relative_l2(pred: jax.Array, exact: jax.Array) -> jax.Array:
    """Relative L2 error ``||pred - exact||_2 / ||exact||_2`` over all entries.

    Both arrays are flattened, so ``(N,)`` and ``(N, 1)`` predictions both work.
    """
    pred = jnp.ravel(jnp.asarray(pred))
    exact = jnp.ravel(jnp.asarray(exact))
    if pred.shape != exact.shape:
        raise ValueError(
            f"pred and exact must have the same number of entries, got "
            f"{pred.shape[0]} and {exact.shape[0]}"
        )
    return jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)


def uniform(key: jax.Array, n: int, low, high) -> jax.Array:
    """``n`` points drawn uniformly from the box ``[low, high]``: shape (n, d)."""
    low = jnp.asarray(low, dtype=float)
    high = jnp.asarray(high, dtype=float)
    return jax.random.uniform(
        key, (n, low.shape[0]), minval=low[None, :], maxval=high[None, :]
    )


def grid(*axes: np.ndarray) -> np.ndarray:
    """Tensor grid of the 1D ``axes`` flattened to ``(N, d)``, first axis slowest."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def per_point(fn: ApplyFn, points: jax.Array) -> jax.Array:
    """``fn`` of one point vmapped over ``points`` of shape (N, d): shape (N,)."""
    return jax.vmap(fn)(points)
