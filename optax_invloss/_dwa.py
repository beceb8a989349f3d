"""Dynamic weight average: weights from the rate at which each loss falls."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _numerics


class DWAState(NamedTuple):
    """State of :func:`dwa`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32). They sum to ``n``.
      window_loss_sum: the sum of each loss divided by ``window`` over the
        accepted steps of the averaging window in progress (the window's average
        once it completes; divided first, so that it cannot overflow).
      latest_average: each loss averaged over the latest complete window,
        :math:`\\bar L(t-1)` in the paper's notation.
      previous_average: each loss averaged over the window before it,
        :math:`\\bar L(t-2)`.
      weighting_step: number of accepted updates; the position in the window and
        the number of complete windows follow from it. Shape ``()``, int32;
        saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    window_loss_sum: Any
    latest_average: Any
    previous_average: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def dwa(temperature: float = 2.0, window: int = 1) -> _base.WeightingMethod:
    r"""Dynamic weight average (DWA): weights from each loss's rate of descent.

    Each term's weight grows with the ratio of its two latest averaged losses, so
    a term whose loss falls slowly (or rises) gets the larger weight:

    .. math::

      r_i = \frac{\bar L_i(t-1)}{\bar L_i(t-2)}, \qquad
      w_i = n \, \frac{\exp(r_i / T)}{\sum_j \exp(r_j / T)},

    with :math:`T` = ``temperature`` and :math:`\bar L_i` the average of loss
    :math:`i` over a window of ``window`` accepted steps (the paper averages
    over an epoch; ``window`` is the number of steps in yours, and
    ``window = 1`` is the step-wise form, which is the paper's in full-batch
    training). **The weights sum to n** (the number of terms), as in the paper.
    A large ``temperature`` gives nearly equal weights.

    The weights are recomputed when a window completes (after every
    ``window``-th accepted update) and held in between.

    First steps, as in the paper. The weights are 1 each until two averages
    exist: for the first ``2 * window - 1`` updates; the update that completes
    the second window returns the first DWA weights. With ``window = 1``: 1 each
    from ``init`` and from the first update, then :math:`r_i = L_i(1) / L_i(0)`
    from the second.

    Ratios of zero losses: ``0 / 0`` counts as 1 and ``x / 0`` as the largest
    finite number (that term then takes the whole weight ``n``). The averages,
    ratios and softmax stay finite for any finite non-negative losses, up to the
    dtype's largest value.

    The authors' code (``mtan``) averages the losses of each epoch and
    computes the weights at the start of the next, as here with ``window`` =
    steps per epoch.

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the weights, the sums and averages and the step counter keep their values
    and ``skipped_updates`` goes up by one; a skipped step does not count toward
    the window.

    Args:
      temperature: the softmax temperature :math:`T`. Must be > 0.
      window: the number of accepted steps whose losses are averaged before the
        ratio is formed (steps per epoch for the paper's form; 1 for the
        step-wise form). Integer >= 1.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights sum to ``n``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.dwa(temperature=1.0)
      >>> state = method.init({"pde": 0.0, "bc": 0.0})
      >>> for pde, bc in [(1.0, 1.0), (0.5, 1.0)]:
      ...     weights, state = method.update({"pde": pde, "bc": bc}, state)
      ...     print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 1.0, 'pde': 1.0}
      {'bc': 1.245, 'pde': 0.755}

      ``pde`` halved (:math:`r = 0.5`) and ``bc`` did not (:math:`r = 1`):
      ``bc`` gets :math:`2 e^{1} / (e^{0.5} + e^{1}) = 1.245`.

    References:
      Liu, Johns and Davison, `End-to-End Multi-Task Learning with Attention
      <https://arxiv.org/abs/1803.10704>`_, CVPR 2019.
    """
    _checks.check_positive("temperature", temperature)
    _checks.check_every("window", window)

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        zeros = _base.zeros_like_losses(losses, dtype)
        n = len(jax.tree.leaves(losses))
        return DWAState(
            loss_weights=_base.equal_weights(losses, dtype, total=n),
            window_loss_sum=zeros,
            latest_average=zeros,
            previous_average=zeros,
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, DWAState)
        step = state.weighting_step
        # Each loss enters the window's sum divided by the window, so that the
        # sum is the average when the window completes and cannot overflow.
        window_sum = _base.stack(state.window_loss_sum) + vector / window
        complete = (step + 1) % window == 0
        latest = _base.stack(state.latest_average)
        previous = jnp.where(complete, latest, _base.stack(state.previous_average))
        latest = jnp.where(complete, window_sum, latest)
        window_sum = jnp.where(complete, jnp.zeros_like(window_sum), window_sum)
        # Two averages exist once the second window completes.
        ready = complete & (step + 1 >= 2 * window)
        ratio = _numerics.capped_ratio(latest, previous)
        logits = _numerics.shifted_logits(ratio, 1.0 / temperature)
        weights = vector.shape[0] * _numerics.softmax(logits)
        weights = jnp.where(ready, weights, _base.stack(state.loss_weights))
        return _base.finish(
            losses,
            state,
            ok,
            loss_weights=weights,
            window_loss_sum=window_sum,
            latest_average=latest,
            previous_average=previous,
        )

    return _base.WeightingMethod(init, update)
