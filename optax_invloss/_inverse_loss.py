"""Inverse loss magnitude normalization: the library's seed method."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _numerics, _simplex


class InverseLossState(NamedTuple):
    """State of :func:`inverse_loss`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32).
      loss_average: the exponential moving average of each loss that feeds the
        formula (the latest accepted losses when ``ema_decay = 0``).
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    loss_average: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def inverse_weights(losses: jax.Array, eps: float) -> jax.Array:
    """``(1 / max(L_i, eps)) / sum_j (1 / max(L_j, eps))`` for a vector of losses.

    Computed as ``(m / L_i) / sum_j (m / L_j)`` with ``m`` the smallest clamped
    loss, which is the same number without the overflow of ``1 / eps``.
    """
    clamped = jnp.maximum(losses, eps)
    ratio = jnp.min(clamped) / clamped
    return ratio / jnp.sum(ratio)


def capped_inverse_weights(
    losses: jax.Array, eps: float, lo: float, hi: float
) -> jax.Array:
    """:func:`inverse_weights` projected onto the caps ``[lo, hi]`` (sum 1).

    The inverses ``1 / max(L_i, eps)`` are handed to the projection as mantissa
    and power-of-two exponent, so that losses spanning the whole range of the
    dtype (0 to 3e38 in float32, whose inverses' ratios would underflow) still
    give weights that sum to 1 within the caps.
    """
    clamped = jnp.maximum(losses, eps)
    e = _numerics.exponent(clamped)
    mantissa = 1.0 / _numerics.scale_by_pow2(clamped, -e)  # in (1, 2]
    return _simplex.project_capped_simplex(mantissa, -e, lo, hi)


def inverse_loss(
    eps: float = 1e-12,
    ema_decay: float = 0.0,
    update_every: int = 1,
    min_weight: float | None = None,
    max_weight: float = 1.0,
) -> _base.WeightingMethod:
    r"""Inverse loss magnitude normalization.

    Each term's weight is the inverse of its (averaged) loss, normalised so that
    the weights sum to 1:

    .. math::

      \bar L_i^{(t)} = \beta \bar L_i^{(t-1)} + (1 - \beta) L_i^{(t)},
      \qquad \bar L_i^{(0)} = L_i^{(0)},

      \tilde w_i = \frac{1 / \max(\bar L_i, \epsilon)}
                        {\sum_j 1 / \max(\bar L_j, \epsilon)},
      \qquad w = \Pi_{[w_{\min}, w_{\max}]}(\tilde w),

    recomputed on steps :math:`0, K, 2K, \dots` (``update_every = K``) and held in
    between; the moving average :math:`\bar L` sees every step. The caps are
    applied by an exact projection onto
    :math:`\{w : \sum_i w_i = 1,\ w_{\min} \le w_i \le w_{\max}\}` that keeps the
    ratios of the uncapped weights (:math:`w_i = \mathrm{clip}(c \tilde w_i,
    w_{\min}, w_{\max})` with the one :math:`c` that gives a sum of 1; this is the
    projection in the Kullback-Leibler divergence), so :math:`w_i \propto 1/L_i`
    still holds among the terms that are not on a cap.

    **The bare formula** is ``inverse_loss(ema_decay=0.0, update_every=1,
    min_weight=0.0, max_weight=1.0)``: no averaging, no caps, recomputed every
    step.

    What it does to training. With the weights held constant (stop-gradient), the
    gradient of the total is

    .. math::

      \nabla \sum_i w_i L_i = \Big(\sum_j \frac{1}{L_j}\Big)^{-1}
      \sum_i \frac{\nabla L_i}{L_i}
      = \Big(\sum_j \frac{1}{L_j}\Big)^{-1} \nabla \sum_i \log L_i,

    so every term is asked for the same *relative* decrease, and the total itself
    is :math:`n` times the harmonic mean of the losses. That is what it is good
    for: terms whose magnitudes differ by orders of magnitude all make progress.
    It is also its failure mode: a term that is easy to drive towards zero (a zero
    Dirichlet boundary, say) keeps being rewarded for relative progress, takes an
    ever larger weight, and starves the others. With the bare formula on the 2D
    Helmholtz benchmark the residual's weight falls toward zero and the network
    settles on the zero function. The floor ``min_weight`` stops that; by default
    every term keeps at least a tenth of its equal share (``0.1 / n``).

    Defaults. ``min_weight=None`` (``0.1 / n``) and ``ema_decay=0`` were chosen
    from the runs in ``benchmarks/results/inverse_loss_defaults.md`` (figures and
    command there): under Adam, the default beats equal weights on 2D Helmholtz
    and on 1D Poisson; the bare formula collapses on both; a floor of
    ``0.01 / n`` is better on Helmholtz but worse on Poisson; averaging changes
    little.

    When it does not help. The weights sum to 1, so the total gradient is scaled
    by about :math:`(\sum_j 1/L_j)^{-1}`. Adam and L-BFGS do not care, but plain
    gradient descent does: on the 1D Poisson problem with the NTK paper's plain
    gradient descent, every inverse-loss setting loses to equal weights
    (``benchmarks/results/inverse_loss_defaults.md``), because the residual's
    effective step is scaled down by its small weight.
    Late in training the weights often sit on the floor, where the method acts as
    fixed weights chosen by the floor. On the 1D wave and Burgers problems (short
    runs, ``benchmarks/results/pinn/floor/README.md``) one boundary or velocity term
    takes most of the weight, the initial condition sits on the floor, and the
    default loses to equal weights; a higher floor narrows the gap but did not
    close it.

    The weights returned by ``update`` at step :math:`t` are computed from the
    losses passed at step :math:`t`. In the one-pass training step of the README
    (:func:`optax_invloss.with_weighting`), those losses come out of the same
    forward pass as the gradient, so the weights applied at step :math:`t` were
    computed from the losses of step :math:`t - 1`.

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the weights, the average and the step counter keep their values and
    ``skipped_updates`` goes up by one. Negative losses are refused because
    :math:`1 / L` of a negative loss has no meaning as a weight (a negative
    log-likelihood term, for instance, must be shifted to be non-negative first).

    Args:
      eps: floor on each loss in the formula; bounds the weight ratio of two terms
        by ``L_max / eps``. Must be > 0.
      ema_decay: weight of the old value in the moving average of the losses, as
        in ``optax.ema``: ``0`` uses the current losses alone. In ``[0, 1)``. The
        average starts from the first accepted losses, so it has no bias toward 0.
      update_every: recompute the weights every ``update_every`` accepted updates
        (steps 0, K, 2K, ...) and hold them in between. Integer >= 1.
      min_weight: floor on each weight, in ``[0, 1]``. ``None`` means ``0.1 / n``
        for ``n`` loss terms; ``0.0`` turns the floor off.
      max_weight: ceiling on each weight, in ``(0, 1]``; ``1.0`` turns it off.
        ``n * min_weight <= 1 <= n * max_weight`` must hold, or ``init`` raises.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights sum to 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.inverse_loss(min_weight=0.0)  # the bare formula
      >>> losses = {"pde": jnp.asarray(1.0), "bc": jnp.asarray(0.25)}
      >>> state = method.init(losses)
      >>> weights, state = method.update(losses, state)
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 0.8, 'pde': 0.2}
      >>> total = optax_invloss.weighted_sum(losses, weights)  # 0.2*1 + 0.8*0.25
      >>> print(round(float(total), 3))
      0.4

      With the default floor of a tenth of the equal share (0.05 for two terms):

      >>> method = optax_invloss.inverse_loss()
      >>> losses = {"pde": jnp.asarray(1.0), "bc": jnp.asarray(1e-6)}
      >>> weights, _ = method.update(losses, method.init(losses))
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 0.95, 'pde': 0.05}
    """
    _checks.check_positive("eps", eps)
    _checks.check_decay("ema_decay", ema_decay)
    _checks.check_every("update_every", update_every)
    if min_weight is not None:
        _checks.check_range("min_weight", min_weight, 0, 1)
    _checks.check_range("max_weight", max_weight, 0, 1, low_open=True)
    if min_weight is not None and min_weight > max_weight:
        raise ValueError(
            "min_weight must not exceed max_weight, got min_weight = "
            f"{min_weight!r} and max_weight = {max_weight!r}."
        )

    def caps(n: int) -> tuple[float, float]:
        lo = 0.1 / n if min_weight is None else min_weight
        return lo, max_weight

    def init(losses):
        _base.check_losses(losses)
        n = len(jax.tree.leaves(losses))
        _simplex.check_caps(n, *caps(n))
        dtype = _base.state_dtype(losses)
        return InverseLossState(
            loss_weights=_base.equal_weights(losses, dtype),
            loss_average=_base.zeros_like_losses(losses, dtype),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, InverseLossState)
        step = state.weighting_step
        average = _base.stack(state.loss_average)
        average = jnp.where(
            step == 0, vector, ema_decay * average + (1.0 - ema_decay) * vector
        )
        lo, hi = caps(vector.shape[0])
        if lo > 0.0 or hi < 1.0:
            weights = capped_inverse_weights(average, eps, lo, hi)
        else:
            weights = inverse_weights(average, eps)
        weights = jnp.where(
            _base.is_due(step, update_every), weights, _base.stack(state.loss_weights)
        )
        return _base.finish(
            losses, state, ok, loss_weights=weights, loss_average=average
        )

    return _base.WeightingMethod(init, update)
