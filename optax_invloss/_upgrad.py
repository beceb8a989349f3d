"""UPGrad and DualProj: projections onto the dual cone of the gradients.

Both reduce to the small quadratic programme
:math:`\\min_v v^\\top G v` subject to :math:`v \\ge \\ell` (one lower bound per
term), solved here in-graph: exactly by enumerating the active sets for up to
``max_exact_terms`` terms, by accelerated projected gradient beyond.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _aggregation


def qp_lower_bounded(g: jax.Array, lower: jax.Array, *, exact: bool, iterations: int):
    r"""``argmin_v v^T G v`` subject to ``v >= lower``, for a batch of ``lower``.

    ``lower`` is ``(k, m)``; returns ``(k, m)``. ``G`` is normalised (trace one,
    tiny ridge), which leaves the minimisers unchanged up to the ridge. Exact:
    for every set :math:`F` of free coordinates solve
    :math:`G_{FF} v_F = -G_{FA} \ell_A` (:math:`v_A = \ell_A`); among the
    feasible candidates the smallest objective is the minimum.
    """
    gs = _aggregation.normalized_gram(g)
    m = g.shape[0]
    if exact:
        free_sets = _aggregation.subsets(m)
        eye = jnp.eye(m, dtype=g.dtype)
        tol = jnp.sqrt(jnp.finfo(g.dtype).eps)

        def one(lb):
            def candidate(f):
                mat = jnp.where(f[:, None] & f[None, :], gs, eye)
                fixed = jnp.where(f, 0, lb)
                rhs = jnp.where(f, -(gs @ fixed), lb)
                v = jnp.linalg.solve(mat, rhs)
                scale = jnp.max(jnp.abs(lb))
                feasible = jnp.all(v >= lb - tol * scale)
                return v, jnp.where(feasible, v @ gs @ v, jnp.inf)

            vs, values = jax.vmap(candidate)(free_sets)
            return jnp.maximum(vs[jnp.argmin(values)], lb)

        return jax.vmap(one)(lower)
    step = 1 / jnp.linalg.eigvalsh(gs)[-1] / 2  # gradient of v^T G v is 2 G v

    def one(lb):
        def body(k, carry):
            v, y = carry
            nxt = jnp.maximum(y - step * 2 * (gs @ y), lb)
            y = nxt + (k / (k + 3.0)) * (nxt - v)
            return nxt, y

        v, _ = jax.lax.fori_loop(0, iterations, body, (lb, lb))
        return v

    return jax.vmap(one)(lower)


def _check(name, preference, max_exact_terms, iterations):
    if (
        not isinstance(max_exact_terms, int)
        or max_exact_terms < 1
        or max_exact_terms > 12
    ):
        raise ValueError(
            f"{name}: max_exact_terms must be an int in [1, 12] (the exact solve "
            f"enumerates 2^m active sets), got max_exact_terms = {max_exact_terms!r}."
        )
    if (
        not isinstance(iterations, int)
        or isinstance(iterations, bool)
        or iterations < 1
    ):
        raise ValueError(
            f"{name}: iterations must be a positive int, got iterations = "
            f"{iterations!r}."
        )
    if preference is None:
        return None
    p = jnp.asarray(preference, dtype=float)
    if p.ndim != 1 or p.shape[0] < 1 or not bool(jnp.all(p > 0)):
        raise ValueError(
            f"{name}: preference must be a sequence of positive numbers, one per "
            f"loss term; got preference = {preference!r}."
        )
    return p


def _preference(name, p, m, dtype):
    if p is None:
        return jnp.full((m,), 1 / m, dtype)
    if p.shape[0] != m:
        raise ValueError(
            f"{name}: preference has {p.shape[0]} entries, but there are {m} loss "
            "terms."
        )
    return p.astype(dtype)


def upgrad(
    *,
    preference: Sequence[float] | None = None,
    max_exact_terms: int = 8,
    iterations: int = 300,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""UPGrad: the mean of the gradients' projections onto the dual cone.

    Each gradient is projected onto the dual cone :math:`\{x: Jx \ge 0\}` of the
    gradients (the directions that conflict with none) and the projections are
    averaged:

    .. math::

      \text{update} = \sum_i p_i\, \pi(g_i) = J^\top w, \qquad
      w = \sum_i p_i v_i, \quad v_i = \arg\min_{v \ge e_i} v^\top G v ,

    with the preference :math:`p` (default :math:`1/m`). The update conflicts with
    no gradient (:math:`J\,\text{update} \ge 0`), is the mean when nothing
    conflicts, and scaling a term's gradient scales its contribution alike.

    The authors' library (torchjd) solves the programme with quadprog on the CPU
    after dividing :math:`G` by its trace and adding ``1e-4`` times the identity,
    and replaces :math:`G` by zero when its trace is below ``1e-4`` (an absolute
    threshold that turns the method into the plain mean late in training). Here
    the trace normalisation has no threshold and the ridge is ``100 eps`` of the
    dtype, so the exact values are reproduced to the precision of the dtype; the
    programme is solved in-graph (exact for up to ``max_exact_terms`` terms).

    Args:
      preference: positive weights :math:`p`, one per term (default: the mean).
      max_exact_terms: the exact solve (:math:`m \cdot 2^m` small solves) for up
        to this many terms; accelerated projected gradient beyond.
      iterations: iterations of the fallback solver.
      num_terms: the number of loss terms; needed for ``update_every > 1``.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights; no conflict on refresh steps
        only).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.upgrad()
      >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> print(np.asarray(update, float).round(4))
      [0.25 0.75]

    References:
      Quinton and Rey, `Jacobian Descent for Multi-Objective Optimization
      <https://arxiv.org/abs/2406.16232>`_, 2024; torchjd.
    """
    p = _check("upgrad", preference, max_exact_terms, iterations)

    def solve(g, previous, key):
        del previous, key
        m = g.shape[0]
        pref = _preference("upgrad", p, m, g.dtype)
        v = qp_lower_bounded(
            g,
            jnp.eye(m, dtype=g.dtype),
            exact=m <= max_exact_terms,
            iterations=iterations,
        )
        return pref @ v

    return _aggregation.aggregator(
        "upgrad", solve, num_terms=num_terms, update_every=update_every
    )


def dualproj(
    *,
    preference: Sequence[float] | None = None,
    max_exact_terms: int = 8,
    iterations: int = 300,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""DualProj: the weighted mean of the gradients, projected onto the dual cone.

    .. math::

      \text{update} = \pi(J^\top p) = J^\top w, \qquad
      w = \arg\min_{v \ge p} v^\top G v ,

    with the preference :math:`p` (default :math:`1/m`, the mean). The update
    conflicts with no gradient; it is the mean when the mean conflicts with none.

    The authors' library (torchjd) solves the programme with quadprog on the CPU
    after dividing :math:`G` by its trace and adding ``1e-4`` times the identity,
    and replaces :math:`G` by zero when its trace is below ``1e-4`` (an absolute
    threshold that turns the method into the plain mean late in training). Here
    the trace normalisation has no threshold and the ridge is ``100 eps`` of the
    dtype, so the exact values are reproduced to the precision of the dtype; the
    programme is solved in-graph (exact for up to ``max_exact_terms`` terms).

    Args:
      preference: positive weights :math:`p`, one per term (default: the mean).
      max_exact_terms: the exact solve (:math:`2^m` small solves) for up to this
        many terms; accelerated projected gradient beyond.
      iterations: iterations of the fallback solver.
      num_terms: the number of loss terms; needed for ``update_every > 1``.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.dualproj()
      >>> grads = {"a": jnp.array([-4.0, 1.0, 1.0]), "b": jnp.array([6.0, 1.0, 1.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(3)))
      >>> print(np.asarray(update, float).round(4))
      [0.5556 1.1111 1.1111]

    References:
      Quinton and Rey, `Jacobian Descent for Multi-Objective Optimization
      <https://arxiv.org/abs/2406.16232>`_, 2024; torchjd.
    """
    p = _check("dualproj", preference, max_exact_terms, iterations)

    def solve(g, previous, key):
        del previous, key
        m = g.shape[0]
        pref = _preference("dualproj", p, m, g.dtype)
        return qp_lower_bounded(
            g, pref[None, :], exact=m <= max_exact_terms, iterations=iterations
        )[0]

    return _aggregation.aggregator(
        "dualproj", solve, num_terms=num_terms, update_every=update_every
    )
