"""Nash-MTL: the Nash bargaining solution between the terms, solved in-graph."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _aggregation


def nash_solve(g: jax.Array, previous: jax.Array | None, iterations: int = 20):
    r"""``alpha > 0`` with ``alpha_i (G alpha)_i = 1``, by damped Newton steps.

    The solution is the minimiser of the strictly convex, self-concordant
    :math:`\phi(\alpha) = \tfrac12 \alpha^\top G \alpha - \sum_i \log \alpha_i`
    (:math:`\nabla\phi = G\alpha - 1/\alpha`). Newton steps damped by
    :math:`1/(1+\lambda)` (:math:`\lambda` the Newton decrement) while
    :math:`\lambda > 1/4` stay positive and converge from anywhere, quadratically
    near the solution. The solve runs on :math:`G/|G|_F` (plus a tiny ridge) and
    is scaled back; it starts from ``previous`` when that is positive on every
    active term, else from :math:`1/|g_i|`. Terms with a zero gradient get 0.
    """
    n, active = _aggregation.norms(g)
    both = active[:, None] & active[None, :]
    fro = jnp.sqrt(jnp.sum(jnp.where(both, g * g, 0)))
    fro = jnp.where(fro > 0, fro, 1)
    m = g.shape[0]
    eye = jnp.eye(m, dtype=g.dtype)
    ridge = 100 * jnp.finfo(g.dtype).eps
    gn = jnp.where(both, g / fro, eye) + ridge * eye
    cold = jnp.where(active, jnp.sqrt(fro) / jnp.where(active, n, 1), 1)
    start = cold
    if previous is not None:
        warm = previous.astype(g.dtype) * jnp.sqrt(fro)
        good = jnp.all(jnp.where(active, (warm > 0) & jnp.isfinite(warm), True))
        start = jnp.where(good, jnp.where(active, warm, 1), cold)

    def body(_, alpha):
        grad = gn @ alpha - 1 / alpha
        hess = gn + jnp.diag(1 / alpha**2)
        delta = -jnp.linalg.solve(hess, grad)
        lam = jnp.sqrt(jnp.maximum(-(grad @ delta), 0))
        t = jnp.where(lam > 0.25, 1 / (1 + lam), 1)
        return alpha + t * delta

    alpha = jax.lax.fori_loop(0, iterations, body, start)
    return jnp.where(active, alpha / jnp.sqrt(fro), 0)


def nash_mtl(
    *,
    max_norm: float | None = 1.0,
    iterations: int = 20,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Nash-MTL: the update that is the Nash bargaining solution between the terms.

    The weights :math:`\alpha > 0` solve :math:`\alpha_i\,(G\alpha)_i = 1` for
    every term, i.e. :math:`g_i \cdot (J^\top\alpha) = 1/\alpha_i`: every term
    improves, the improvements are balanced in the bargaining sense, and
    :math:`|J^\top\alpha|^2 = m`. The update :math:`J^\top\alpha` is then clipped
    to norm ``max_norm`` (on every step, as the official code clips the
    gradient). For two terms :math:`\alpha_i \propto 1/|g_i|` and the direction
    is ConFIG's.

    The official code solves with cvxpy (up to 20 rounds of a convexified
    problem on :math:`G/|G|_F`, warm-started from the previous
    :math:`\alpha`). Here the same equations are solved in-graph by
    ``iterations`` damped Newton steps on
    :math:`\tfrac12\alpha^\top G\alpha - \sum_i\log\alpha_i`, warm-started from
    the previous :math:`\alpha` when the state keeps it (``num_terms`` given),
    so the solution is exact to the dtype where the official one stops at its
    tolerance (torchjd's test values agree to 1e-4). The official
    ``update_weights_every`` is ``update_every``. A term with a zero gradient
    gets weight zero (the equations have no solution for it).

    Args:
      max_norm: clip the update to this norm; None or 0 for no clip.
      iterations: Newton steps per refresh.
      num_terms: the number of loss terms; with it the state keeps
        :math:`\alpha` for the warm start and ``update_every > 1`` works.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights, clipped alike).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.nash_mtl()
      >>> grads = {"a": jnp.array([-4.0, 1.0, 1.0]), "b": jnp.array([6.0, 1.0, 1.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(3)))
      >>> print(np.asarray(update, float).round(4))
      [0.0542 0.7061 0.7061]

    References:
      Navon et al., `Multi-Task Learning as a Bargaining Game
      <https://arxiv.org/abs/2202.01017>`_, 2022.
    """
    if max_norm is not None and (
        not isinstance(max_norm, (int, float))
        or isinstance(max_norm, bool)
        or max_norm < 0
    ):
        raise ValueError(
            f"nash_mtl: max_norm must be None or a number >= 0, got max_norm = "
            f"{max_norm!r}."
        )
    if (
        not isinstance(iterations, int)
        or isinstance(iterations, bool)
        or iterations < 1
    ):
        raise ValueError(
            f"nash_mtl: iterations must be a positive int, got iterations = "
            f"{iterations!r}."
        )

    def solve(g, previous, key):
        del key
        return nash_solve(g, previous, iterations)

    postprocess = None
    if max_norm:

        def postprocess(direction):
            norm = optax.tree.norm(direction)
            scale = jnp.where(
                norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1), 1
            )
            return jax.tree.map(lambda x: (x * scale).astype(x.dtype), direction)

    return _aggregation.aggregator(
        "nash_mtl",
        solve,
        num_terms=num_terms,
        update_every=update_every,
        postprocess=postprocess,
    )
