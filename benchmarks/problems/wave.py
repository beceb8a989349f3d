r"""1D wave equation (Wang, Yu & Perdikaris 2022, the NTK paper).

.. math::

  u_{tt} - 4 u_{xx} = 0 \quad \text{on } (0, 1)^2, \qquad u(0, t) = u(1, t) = 0,

  u(x, 0) = \sin(\pi x) + \tfrac12 \sin(4 \pi x), \qquad u_t(x, 0) = 0,

with exact solution :math:`u = \sin(\pi x) \cos(2 \pi t) + \tfrac12 \sin(4 \pi x)
\cos(8 \pi t)`. Points are ``(x, t)``. Terms ``"pde"``, ``"bc"``, ``"ic"`` (the
initial value) and ``"ic_t"`` (the initial velocity), each with ``batch`` points
drawn uniformly every step (the paper's 300); the ``"bc"`` points are split evenly
between ``x = 0`` and ``x = 1``.

The ``"paper"`` preset is the paper's 5 hidden layers of 500 and 80,000 Adam steps at
``1e-3 * 0.9 ** (step / 1000)``; ``"quick"`` uses 3 hidden layers of 64 and 10,000
steps, which shows the methods' separation only qualitatively.

References:
  Wang, Yu, Perdikaris, `When and why PINNs fail to train: a neural tangent kernel
  perspective <https://arxiv.org/abs/2007.14527>`_, J. Comput. Phys. 449, 2022.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.problems._base import (
    ApplyFn,
    Batch,
    Preset,
    Problem,
    grid,
    per_point,
    uniform,
)

C = 2.0  # wave speed; the equation is u_tt - C**2 u_xx = 0

_PRESETS = {
    "quick": Preset(layers=(2, 64, 64, 64, 1), batch=300, steps=10_000),
    "paper": Preset(layers=(2, *[500] * 5, 1), batch=300, steps=80_000),
    # The sweep's budget (issue 20): the quick network, the learning rate decayed
    # 0.9 every 200 steps (1e-3 to 1.5e-5 by step 8,000), so that the
    # equal-weights curve has flattened by the end (benchmarks/results/pinn/standard/).
    "standard": Preset(
        layers=(2, 64, 64, 64, 1), batch=300, steps=10_000, decay_steps=200
    ),
}


def initial_value(x: jax.Array) -> jax.Array:
    """``u(x, 0) = sin(pi x) + 0.5 sin(4 pi x)`` for positions ``x`` of any shape."""
    return jnp.sin(jnp.pi * x) + 0.5 * jnp.sin(4.0 * jnp.pi * x)


def exact(x: jax.Array) -> jax.Array:
    """Exact solution at points ``(x, t)``: shape (..., 2) -> (...)."""
    pos, t = x[..., 0], x[..., 1]
    return jnp.sin(jnp.pi * pos) * jnp.cos(C * jnp.pi * t) + 0.5 * jnp.sin(
        4.0 * jnp.pi * pos
    ) * jnp.cos(4.0 * C * jnp.pi * t)


def sample(key: jax.Array, batch: int) -> Batch:
    """``{"pde", "bc", "ic", "ic_t"}``, each of shape (batch, 2), drawn uniformly."""
    k_pde, k_bc, k_ic, k_ic_t = jax.random.split(key, 4)
    n_left = batch // 2
    wall = jnp.concatenate(
        [jnp.zeros((n_left, 1)), jnp.ones((batch - n_left, 1))], axis=0
    )
    at_t0 = lambda k: jnp.concatenate(
        [uniform(k, batch, [0.0], [1.0]), jnp.zeros((batch, 1))], axis=1
    )
    return {
        "pde": uniform(k_pde, batch, [0.0, 0.0], [1.0, 1.0]),
        "bc": jnp.concatenate([wall, uniform(k_bc, batch, [0.0], [1.0])], axis=1),
        "ic": at_t0(k_ic),
        "ic_t": at_t0(k_ic_t),
    }


def _pde_residual(apply_fn: ApplyFn, x: jax.Array) -> jax.Array:
    """``u_tt - c^2 u_xx`` at one point ``(x, t)``."""
    hessian = jax.hessian(apply_fn)(x)
    return hessian[1, 1] - C**2 * hessian[0, 0]


def residuals(apply_fn: ApplyFn, batch: Batch) -> dict[str, jax.Array]:
    """Per-point residuals of the four terms."""
    u_t = lambda x: jax.grad(apply_fn)(x)[1]
    return {
        "pde": per_point(lambda x: _pde_residual(apply_fn, x), batch["pde"]),
        "bc": per_point(apply_fn, batch["bc"]),
        "ic": per_point(apply_fn, batch["ic"]) - initial_value(batch["ic"][:, 0]),
        "ic_t": per_point(u_t, batch["ic_t"]),
    }


def eval_points() -> np.ndarray:
    """The 100 x 100 uniform grid on [0, 1]^2 in ``(x, t)``: shape (10000, 2)."""
    axis = np.linspace(0.0, 1.0, 100)
    return grid(axis, axis)


WAVE = Problem(
    name="wave",
    input_dim=2,
    term_names=("pde", "bc", "ic", "ic_t"),
    presets=_PRESETS,
    sample=sample,
    residuals=residuals,
    exact=exact,
    eval_points=eval_points,
    eval_shape=(100, 100),
)
