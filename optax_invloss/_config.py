"""ConFIG and IMTL-G: the update with equal cosines or equal projections on every term.

Both rules start from the same small solve on the cosine matrix of the gradients:
the coefficients :math:`c = C^{+} p` of the direction on the unit gradients
:math:`u_i = g_i / |g_i|` (:math:`C_{ij} = u_i \\cdot u_j`, :math:`p` the direction
weights, all ones by default), so that the direction :math:`d = \\sum_i c_i u_i`
has :math:`u_i \\cdot d = p_i` for every term. ConFIG then sets its length;
IMTL-G rescales it so that the weights on the raw gradients sum to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _aggregation

LENGTHS = ("projection", "min", "max", "mean", "geometric", "harmonic")


def direction_coefficients(g: jax.Array, p: jax.Array | None = None):
    """``(b, n, active)``: weights ``b`` on the raw gradients with ``u_i . d = p_i``.

    ``b_i = (C^+ p)_i / |g_i|``; terms with a zero gradient get ``b_i = 0``.
    """
    n, active = _aggregation.norms(g)
    p = jnp.ones(g.shape[0], g.dtype) if p is None else p.astype(g.dtype)
    c = _aggregation.psd_pinv(_aggregation.unit_gram(g, n, active)) @ jnp.where(
        active, p, 0
    )
    return jnp.where(active, c / jnp.where(active, n, 1), 0), n, active


def config_solve(g, p=None, length: str = "projection") -> jax.Array:
    """ConFIG's weights from ``G``: ``w = (L / |d|) b`` with ``d = J^T b``."""
    b, n, active = direction_coefficients(g, p)
    gb = g @ b
    dd = b @ gb  # |d|^2
    if length == "projection":
        scale = jnp.sum(gb)  # |d| * sum_i g_i . d_hat
    else:
        cosines = jnp.sum(jnp.where(active, gb / jnp.where(active, n, 1), 0))
        count = jnp.maximum(jnp.sum(active), 1)
        safe_n = jnp.where(active, n, 1)
        tracked = {
            "min": jnp.min(jnp.where(active, n, jnp.inf)),
            "max": jnp.max(jnp.where(active, n, 0)),
            "mean": jnp.sum(jnp.where(active, n, 0)) / count,
            "geometric": jnp.exp(
                jnp.sum(jnp.where(active, jnp.log(safe_n), 0)) / count
            ),
            "harmonic": count / jnp.sum(jnp.where(active, 1 / safe_n, 0)),
        }[length]
        scale = jnp.where(jnp.any(active), tracked, 0) * cosines
    ok = dd > 0
    return jnp.where(ok, scale / jnp.where(ok, dd, 1), 0) * b


def _check_weights(name: str, direction_weights) -> jax.Array | None:
    if direction_weights is None:
        return None
    p = jnp.asarray(direction_weights, dtype=float)
    if p.ndim != 1 or p.shape[0] < 1 or not bool(jnp.all(p > 0)):
        raise ValueError(
            f"{name}: direction_weights must be a sequence of positive numbers, one "
            f"per loss term; got direction_weights = {direction_weights!r}."
        )
    return p


def config(
    *,
    length: str = "projection",
    direction_weights: Sequence[float] | None = None,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""ConFIG: the conflict-free update with the same cosine to every term's gradient.

    With unit gradients :math:`u_i = g_i/|g_i|`, ConFIG takes the direction
    :math:`d = U^{+} \mathbf{1}` (so :math:`u_i \cdot d = 1` for every term:
    equal positive cosines), :math:`\hat d = d/|d|`, and the length of the
    projections of the raw gradients:

    .. math::

      \text{update} = \Big(\sum_i g_i \cdot \hat d\Big)\, \hat d .

    Computed in weight space: with :math:`C_{ij} = u_i \cdot u_j` and
    :math:`b_i = (C^{+}\mathbf{1})_i / |g_i|` (so :math:`d = J^\top b`), the update
    is :math:`J^\top w` with :math:`w = (\mathbf{1}^\top G b / b^\top G b)\, b`;
    for full-rank gradients :math:`b = G^{-1} n`, the METHODS form. The update has
    a nonnegative dot product with every gradient (no conflict).

    ``length`` picks the authors' length models: ``"projection"`` (default,
    above), or :math:`(\sum_i u_i \cdot \hat d)` times the ``"min"``, ``"max"``,
    ``"mean"``, ``"geometric"`` or ``"harmonic"`` mean of the gradient norms.
    ``direction_weights`` :math:`p` replaces :math:`\mathbf{1}` (then
    :math:`u_i \cdot d = p_i`).

    The authors' code (``conflictfree.grad_operator.ConFIGOperator``) solves
    with a least-squares pseudo-inverse of :math:`U`; the solve here is the same
    on the cosine matrix :math:`C = U U^\top`. A term whose gradient is exactly
    zero is left out (its weight is zero), where the authors' code returns NaN
    (their issue #4).

    Args:
      length: the length model, one of ``"projection"``, ``"min"``, ``"max"``,
        ``"mean"``, ``"geometric"``, ``"harmonic"``.
      direction_weights: positive weights :math:`p`, one per term (the terms'
        leaf order); None for equal ones.
      num_terms: the number of loss terms; needed for ``update_every > 1`` and
        to keep the weights in the state.
      update_every: recompute the weights every this many steps; in between the
        update is the weighted sum with the stored weights, and the no-conflict
        guarantee holds on refresh steps only.

    Returns:
      An ``optax.GradientTransformationExtraArgs``: ``update(term_grads, state,
      params=None, *, loss_fn=None)`` takes the per-term gradients (a dict by
      term of parameter-shaped pytrees, as from
      :func:`optax_invloss.term_gradients` or ``jax.jacrev`` of the loss dict)
      and returns one parameter-shaped update with the gradients' sign (chain
      it in front of an optimizer). With ``loss_fn=`` (``params -> losses``) it
      computes the per-term gradients itself. State:
      :class:`optax_invloss.AggregatorState`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.config()
      >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
      >>> update, state = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> print(np.asarray(update, float).round(4))
      [0.3536 0.8536]

    References:
      Liu, Chu and Thuerey, `ConFIG: Towards Conflict-free Training of Physics
      Informed Neural Networks <https://arxiv.org/abs/2408.11104>`_, ICLR 2025.
    """
    if length not in LENGTHS:
        raise ValueError(
            f"config: length must be one of {', '.join(map(repr, LENGTHS))}; got "
            f"length = {length!r}."
        )
    p = _check_weights("config", direction_weights)
    if p is not None and num_terms is not None and p.shape[0] != num_terms:
        raise ValueError(
            f"config: direction_weights has {p.shape[0]} entries but num_terms = "
            f"{num_terms}."
        )

    def solve(g, previous, key):
        del previous, key
        if p is not None and p.shape[0] != g.shape[0]:
            raise ValueError(
                f"config: direction_weights has {p.shape[0]} entries, but there "
                f"are {g.shape[0]} loss terms."
            )
        return config_solve(g, p, length)

    return _aggregation.aggregator(
        "config", solve, num_terms=num_terms, update_every=update_every
    )


def imtl_g_solve(g: jax.Array) -> jax.Array:
    """IMTL-G's weights from ``G``: ``b / sum(b)`` (zero when ``sum(b)`` vanishes)."""
    b, _, _ = direction_coefficients(g)
    total = jnp.sum(b)
    ok = jnp.abs(total) > 64 * jnp.finfo(g.dtype).eps * jnp.sum(jnp.abs(b))
    return jnp.where(ok, b / jnp.where(ok, total, 1), 0)


def imtl_g(
    *, num_terms: int | None = None, update_every: int = 1
) -> optax.GradientTransformationExtraArgs:
    r"""IMTL-G: weights that sum to one and give equal projections on every term.

    The update :math:`J^\top \alpha` has :math:`\sum_i \alpha_i = 1` and the same
    projection :math:`u_i \cdot J^\top \alpha` on every unit gradient
    :math:`u_i = g_i/|g_i|`. In Gramian form :math:`\alpha \propto G^{-1} n`
    (:math:`n_i = |g_i|`), computed here as :math:`b_i = (C^{+}\mathbf 1)_i/n_i`
    on the cosine matrix :math:`C` and :math:`\alpha = b / \sum_i b_i` (zero
    when the sum vanishes). It is ConFIG's direction up to a scalar that can be
    negative, so IMTL-G is not guaranteed conflict-free.

    The paper's (and LibMTL's) formula inverts :math:`D U^\top` built from
    differences to the first task; the Gramian form is the same solution where
    that inverse exists, and stays finite where it does not (pseudo-inverse).
    A term with a zero gradient gets weight zero.

    Args:
      num_terms: the number of loss terms; needed for ``update_every > 1``.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.imtl_g()
      >>> grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([0.0, 4.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> print(np.asarray(update, float).round(4))
      [1.7143 1.7143]

    References:
      Liu et al., `Towards Impartial Multi-task Learning
      <https://openreview.net/forum?id=IMPnRXEWpvr>`_, ICLR 2021.
    """

    def solve(g, previous, key):
        del previous, key
        return imtl_g_solve(g)

    return _aggregation.aggregator(
        "imtl_g", solve, num_terms=num_terms, update_every=update_every
    )
