"""PDE benchmark problems for loss-weighting methods (see shared BENCHMARKS.md).

Each problem is a :class:`Problem`: collocation sampling, per-point residuals of each
loss term, the exact or reference solution on an evaluation grid, and default
training settings (presets ``"quick"`` and ``"paper"``).

Examples:
  >>> import jax
  >>> from flax import nnx
  >>> from benchmarks.problems import MLP, get_problem
  >>> problem = get_problem("helmholtz")
  >>> model = MLP(problem.preset("quick").layers, rngs=nnx.Rngs(0))
  >>> batch = problem.sample(jax.random.key(0), 16)
  >>> sorted(problem.loss_terms(model, batch))
  ['bc', 'pde']
"""

from benchmarks.problems._base import Preset, Problem, relative_l2
from benchmarks.problems._mlp import MLP
from benchmarks.problems.allen_cahn import ALLEN_CAHN
from benchmarks.problems.burgers import BURGERS
from benchmarks.problems.helmholtz import HELMHOLTZ, HELMHOLTZ5
from benchmarks.problems.poisson import POISSON
from benchmarks.problems.wave import WAVE

PROBLEMS: dict[str, Problem] = {
    problem.name: problem
    for problem in (HELMHOLTZ, HELMHOLTZ5, POISSON, WAVE, BURGERS, ALLEN_CAHN)
}


def get_problem(name: str) -> Problem:
    """The registered problem called ``name``."""
    try:
        return PROBLEMS[name]
    except KeyError:
        raise ValueError(
            f"unknown problem {name!r}; choose one of {sorted(PROBLEMS)}"
        ) from None


__all__ = [
    "MLP",
    "PROBLEMS",
    "Preset",
    "Problem",
    "get_problem",
    "relative_l2",
]
