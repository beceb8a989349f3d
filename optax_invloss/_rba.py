"""Residual-based attention (RBA): per-point weights from accumulated residuals."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _pointwise


class RBAState(NamedTuple):
    """State of :func:`rba`.

    Attributes:
      point_weights: the attention weights :math:`\\lambda`, a dict by term name
        (``"pde"``, or ``"bc/left"`` for nested residuals) of arrays of the shape
        given to ``init``, one entry per point, in the residuals' dtype (at least
        float32). Only the weighted terms (``terms``) have an entry.
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a residual was NaN or
        infinite or an index out of range. Shape ``()``, int32; saturates.
    """

    point_weights: dict[str, jax.Array]
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def rba(
    eta: float = 1e-3,
    gamma: float = 0.999,
    *,
    power: int = 1,
    terms: str | Sequence[str] | None = ("pde",),
) -> _pointwise.PointWeightingMethod:
    r"""Residual-based attention: per-point weights from accumulated residuals.

    Each point :math:`j` of a weighted term keeps a weight :math:`\lambda_j`
    (initially 0), updated at every step from the residuals already computed:

    .. math::

      \lambda_j \leftarrow \gamma \lambda_j
        + \eta \frac{|r_j|}{\max_k |r_k|},
      \qquad 0 \le \lambda_j \le \frac{\eta}{1 - \gamma},

    and the term's loss is :math:`\frac1N \sum_j \lambda_j r_j^2` (``power=1``)
    or :math:`\frac1N \sum_j (\lambda_j r_j)^2` (``power=2``), with
    :math:`\lambda` held constant (stop-gradient). The bound is 1 with the
    defaults; for residuals that stop changing, :math:`\lambda_j` tends to
    :math:`\frac{\eta}{1-\gamma} |r_j| / \max_k |r_k|`. No gradient is needed:
    the cost is one pass over the residuals.

    The weights returned by ``update`` are the new :math:`\lambda`, computed
    from the residuals given: as in the authors' code, a step's residuals first
    update :math:`\lambda` and are then weighted by it (call ``update`` inside
    the differentiated function, see :class:`optax_invloss.PointWeightingMethod`).

    Loss form. The authors' two codes differ: the PyTorch notebooks use
    :math:`(\lambda r)^2`, the JAX notebooks :math:`\lambda r^2`. The default
    ``power=1`` is the JAX form: the authors' lowest reported errors come from
    their JAX notebooks, and since :math:`\lambda \le 1`,
    :math:`\lambda \ge \lambda^2`, so that low-residual points are damped less.
    The JAX and PyTorch runs also differ in network, schedule and optimizer, so
    the form itself was not isolated by the authors, nor by us.

    Terms. By default only the term named ``"pde"`` is weighted (the authors
    weight the PDE residual and leave initial and boundary data at weight 1;
    PINA's solver weights every term). ``terms`` names the terms to weight;
    the others get weight 1. ``max_k |r_k|`` is taken per term (over the batch,
    with ``indices``); a term whose residuals are all 0 adds nothing.

    L-BFGS: frozen. Our policy, as for the term weightings
    (:func:`optax_invloss.run_lbfgs`): keep the last :math:`\lambda` fixed and
    minimise that one objective. The authors' JAX notebooks do the same; one of
    their notebooks updates :math:`\lambda` inside the L-BFGS closure, which
    changes the objective under the line search.

    Bad values: a NaN or infinite residual (or an out-of-range index inside
    ``jit``) skips the update, counted in ``skipped_updates``; the weights
    returned are the stored ones. Negative residuals are ordinary.

    See also: :func:`optax_invloss.self_adaptive` (trained per-point weights).
    Causal time weighting (Wang, Sankaran and Perdikaris) is deliberately not
    built: its authors state that it is patented and not for commercial use.

    Args:
      eta: the step :math:`\eta` of the accumulation. Must be > 0.
      gamma: the decay :math:`\gamma` of the old weights, in ``[0, 1)``.
      power: the loss form of :attr:`PointWeightingMethod.loss`: ``1`` for
        :math:`\lambda r^2` (default), ``2`` for :math:`(\lambda r)^2`.
      terms: the names of the terms to weight (a name, a sequence of names, or
        ``None`` for every term); ``("pde",)`` by default.

    Returns:
      A :class:`optax_invloss.PointWeightingMethod`. ``update(residuals, state,
      *, indices=None)``: ``indices`` maps a term's name to the pool positions of
      a minibatch's points (see :class:`optax_invloss.PointWeightingMethod`).

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.rba()
      >>> residuals = {"pde": jnp.asarray([1.0, -2.0, 4.0]), "ic": jnp.ones(2)}
      >>> state = method.init(residuals)
      >>> weights, state = method.update(residuals, state)
      >>> print(weights["pde"], weights["ic"])  # 1e-3 * |r| / 4; ic unweighted
      [0.00025 0.0005  0.001  ] [1. 1.]
      >>> losses = method.loss(residuals, weights)  # mean(lambda r^2) for pde
      >>> print(round(float(losses["pde"]), 8), float(losses["ic"]))
      0.00608333 1.0

      That is :math:`(2.5\cdot 10^{-4} \cdot 1 + 5\cdot 10^{-4} \cdot 4 +
      10^{-3} \cdot 16) / 3`.

    References:
      Anagnostopoulos, Toscano, Stergiopulos and Karniadakis, `Residual-based
      attention in physics-informed neural networks
      <https://arxiv.org/abs/2307.00379>`_, CMAME 421, 2024.
    """
    _checks.check_positive("eta", eta)
    _checks.check_decay("gamma", gamma)
    _pointwise.check_power(power)
    terms = _pointwise.check_terms(terms)
    name = "rba"

    def init(residuals):
        selected = _pointwise.selected_terms(residuals, terms, method=name)
        return RBAState(
            point_weights={
                n: jnp.zeros(shape, _pointwise.state_dtype(dtype))
                for n, (shape, dtype) in selected.items()
            },
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(residuals, state, *, indices=None, **inputs):
        del inputs
        batch = _pointwise.prepare(
            residuals,
            state.point_weights,
            indices,
            method=name,
            every_term=terms is None,
        )
        new = {}
        for n, r in batch.residuals.items():
            old = state.point_weights[n]
            idx = batch.indices[n]
            magnitude = jnp.abs(r)
            largest = jnp.max(magnitude)
            scaled = magnitude / jnp.where(largest > 0, largest, 1.0)
            at_points = gamma * _pointwise.gather(old, idx) + eta * scaled
            new[n] = _pointwise.scatter(old, idx, at_points)
        state = _base.keep_or_skip(batch.ok, state._replace(point_weights=new), state)
        return _pointwise.weights_out(residuals, state.point_weights, batch), state

    return _pointwise.PointWeightingMethod(
        init, update, functools.partial(_pointwise.pointwise_loss, power=power)
    )
