r"""1D Poisson equation with a high-frequency solution (Wang, Yu & Perdikaris 2022).

.. math::

  u_{xx} = f \quad \text{on } (0, 1), \qquad u(0) = u(1) = 0,

with :math:`f` chosen so that the exact solution is :math:`u = \sin(4 \pi x)`. Terms
``"pde"`` and ``"bc"``.

Full batch: ``sample`` ignores its key and returns a fixed grid, ``batch`` uniformly
spaced residual points on [0, 1] and ``batch`` boundary points, half at ``x = 0`` and
half at ``x = 1`` (the paper's 100 and 100). The boundary loss is the same for any
split, but the point count enters NTK traces, which sum over points.

The ``"paper"`` preset is the paper's: one hidden layer of 100, plain full-batch
gradient descent with learning rate 1e-5, 40,000 steps (seconds on a CPU, so it is
also the ``"quick"`` preset). The ``"adam"`` preset trains the same network with
Adam at ``1e-3 * 0.9 ** (step / 1000)``.

References:
  Wang, Yu, Perdikaris, `When and why PINNs fail to train: a neural tangent kernel
  perspective <https://arxiv.org/abs/2007.14527>`_, J. Comput. Phys. 449, 2022.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.problems._base import ApplyFn, Batch, Preset, Problem, per_point

FREQ = 4.0

_PAPER = Preset(
    layers=(1, 100, 1),
    batch=100,
    steps=40_000,
    optimizer="sgd",
    learning_rate=1e-5,
    decay_rate=1.0,
)
_PRESETS = {
    "quick": _PAPER,
    "paper": _PAPER,
    "adam": Preset(layers=(1, 100, 1), batch=100, steps=10_000),
    # The sweep's budgets (issue 20): the paper's plain gradient descent as it is
    # (a 1 x 100 network on 100 + 100 fixed points is seconds per run), and the
    # same network under Adam with the learning rate decayed 0.9 every 200 steps.
    "standard": _PAPER,
    "standard_adam": Preset(
        layers=(1, 100, 1), batch=100, steps=10_000, decay_steps=200
    ),
}


def exact(x: jax.Array) -> jax.Array:
    """Exact solution ``sin(4 pi x)``: shape (..., 1) -> (...)."""
    return jnp.sin(FREQ * jnp.pi * x[..., 0])


def source(x: jax.Array) -> jax.Array:
    """Right-hand side ``f = u_xx`` of the exact solution: (..., 1) -> (...)."""
    return -((FREQ * jnp.pi) ** 2) * exact(x)


def sample(key: jax.Array, batch: int) -> Batch:
    """Fixed points ``{"pde": (batch, 1), "bc": (batch, 1)}``; the key is unused."""
    del key
    pde = jnp.linspace(0.0, 1.0, batch)[:, None]
    bc = jnp.concatenate(
        [jnp.zeros((batch // 2, 1)), jnp.ones((batch - batch // 2, 1))], axis=0
    )
    return {"pde": pde, "bc": bc}


def _pde_residual(apply_fn: ApplyFn, x: jax.Array) -> jax.Array:
    """``u_xx - f`` at one point of shape (1,)."""
    u_xx = jax.hessian(apply_fn)(x)[0, 0]
    return u_xx - source(x)


def residuals(apply_fn: ApplyFn, batch: Batch) -> dict[str, jax.Array]:
    """Per-point residuals: ``u_xx - f`` inside and ``u`` on the boundary."""
    return {
        "pde": per_point(lambda x: _pde_residual(apply_fn, x), batch["pde"]),
        "bc": per_point(apply_fn, batch["bc"]),
    }


def eval_points() -> np.ndarray:
    """1000 uniformly spaced points on [0, 1]: shape (1000, 1)."""
    return np.linspace(0.0, 1.0, 1000)[:, None]


POISSON = Problem(
    name="poisson",
    input_dim=1,
    term_names=("pde", "bc"),
    presets=_PRESETS,
    sample=sample,
    residuals=residuals,
    exact=exact,
    eval_points=eval_points,
    eval_shape=(1000,),
    full_batch=True,
)
