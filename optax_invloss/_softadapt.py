"""SoftAdapt: weights from a softmax of the recent slopes of the losses."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _numerics

_VARIANTS = ("plain", "normalized", "loss_weighted")


class SoftAdaptState(NamedTuple):
    """State of :func:`softadapt`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32). They sum to 1.
      loss_history: the last ``window`` accepted values of each loss, oldest
        first, in the losses' structure; each leaf has shape ``(window,)``.
        Entries not yet filled are zero.
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    loss_history: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def backward_difference_coefficients(window: int) -> tuple[float, ...]:
    """Weights of the backward stencil for the first derivative at the last point.

    For values :math:`L(t - m + 1), \\dots, L(t)` at unit spacing (``m = window``)
    the stencil :math:`\\sum_j c_j L(t - m + 1 + j)` is exact for polynomials of
    degree ``m - 1``, so its order of accuracy is ``m - 1``: ``(-1, 1)`` for two
    values, ``(1/2, -2, 3/2)`` for three. Solved exactly in rational arithmetic
    (the Vandermonde system :math:`\\sum_j c_j x_j^k = [k = 1]`).
    """
    xs = [Fraction(j - (window - 1)) for j in range(window)]
    # Gauss-Jordan elimination on the (small) Vandermonde system, exactly.
    rows = [[x**k for x in xs] + [Fraction(int(k == 1))] for k in range(window)]
    for col in range(window):
        pivot = next(r for r in range(col, window) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(window):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [
                    a - factor * b for a, b in zip(rows[r], rows[col], strict=True)
                ]
    return tuple(float(row[-1]) for row in rows)


def softadapt(
    beta: float = 0.1,
    window: int = 2,
    variant: str = "normalized",
    update_every: int = 1,
) -> _base.WeightingMethod:
    r"""SoftAdapt: a softmax of the recent slopes of the losses.

    Each term's slope :math:`s_i` is estimated from its last ``window`` values by
    the backward finite difference of the highest order the window allows, and
    the weights are a softmax of the slopes, so a term whose loss rises (or falls
    slowest) gets the larger weight:

    .. math::

      s_i = \sum_{j=0}^{m-1} c_j L_i(t - m + 1 + j), \qquad
      w_i = \frac{\exp(\beta (s_i - \max_k s_k))}
                 {\sum_j \exp(\beta (s_j - \max_k s_k))},

    with :math:`m` = ``window`` and :math:`c` the backward stencil of order
    :math:`m - 1` (:math:`c = (-1, 1)` for :math:`m = 2`, the plain difference
    :math:`L_i(t) - L_i(t-1)`; :math:`(\tfrac12, -2, \tfrac32)` for :math:`m = 3`).
    The variants:

    - ``"plain"``: as above, the paper's main algorithm.
    - ``"normalized"``: the slopes are first divided by the sum of their absolute
      values, :math:`s_i \leftarrow s_i / \sum_j |s_j|`, so the weights no longer
      depend on the scale of the losses (all slopes zero: equal weights).
    - ``"loss_weighted"``: each exponential is multiplied by the term's mean
      loss over the window, :math:`w_i \propto \bar L_i \exp(\beta (s_i - \max_k
      s_k))`, which also favours the larger losses (all means zero: equal
      weights).

    The weights sum to 1. The weights are recomputed on the update that fills the
    window (step ``window - 1``, counting from 0) and then every ``update_every``
    steps after it, and held in between; ``window = update_every = K`` gives the
    authors' recipe of collecting ``K`` values and then updating. The window
    holds the last ``window`` accepted losses of every step.

    First steps. Until the window is full (the first ``window - 1`` updates) the
    weights are equal, ``1 / n`` each. (The training recipe in the authors'
    README starts from weights of 1 each, which sum to ``n``; here they sum to 1
    throughout, so the scale of the total does not jump by ``n`` at the first
    SoftAdapt update.)

    Differences, not ratios. The slopes are differences of loss values, as in the
    paper and the authors' ``softadapt`` package; some implementations (NVIDIA
    Modulus's) use the ratio :math:`L_i(t) / L_i(t-1)` instead, which is
    scale-free. With differences, ``beta`` acts on slopes in the losses' own
    units: ``beta = 0.1`` barely moves the weights of losses of size 1e-3 and
    saturates them for losses of size 1e3; ``"normalized"`` removes that scale.

    Where the authors' code differs from the paper, this implements the paper:

    - the authors' ``softadapt`` package estimates the slope with the *forward*
      stencil anchored at the oldest value of the window, i.e. the slope
      ``window - 1`` steps ago; here it is the backward stencil at the newest
      value, the slope now. For ``window = 2`` the two agree.
    - the package's normalised variant divides the slopes by their plain sum,
      not by the sum of their absolute values. When every loss decreases that
      sum is negative and flips every slope's sign, so the term that falls
      fastest gets the largest weight (its README example gives the largest
      weight to the loss that falls from 1500 to 1); here it is the sum of the
      absolute values, which keeps the signs.
    - the package adds ``1e-8`` to the softmax's denominator; here it does not.

    High-order stencils amplify noise: the sum of :math:`|c_j|` is 2 for
    :math:`m = 2`, 4 for :math:`m = 3` and 10.7 for :math:`m = 5`. With
    stochastic (minibatch) losses a small window is safer.

    Rounding and range. A slope no larger than the rounding error of its
    stencil, :math:`|s_i| \le (m + 1)\, \varepsilon \sum_j |c_j|\,
    L_i(t - m + 1 + j)` (:math:`\varepsilon` the machine epsilon of the state
    dtype: 1.2e-7 in float32), counts as exactly 0. So a constant loss has slope
    0 at every window, and when every loss is constant the plain and normalized
    variants give exactly equal weights (without it, the rounding of the
    four-point stencil left slopes like -1.2e-7 that the normalized variant
    blew up to -1). The slopes, logits and means are computed from the losses
    scaled by powers of two, so any finite non-negative losses, up to the
    dtype's largest value, give finite weights that sum to 1.

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the weights, the window and the step counter keep their values and
    ``skipped_updates`` goes up by one.

    Args:
      beta: the softmax's inverse temperature; larger values concentrate the
        weight on the term with the largest slope; 0 gives equal weights and a
        negative value favours the terms that fall fastest. Any finite number.
      window: how many of the latest loss values the slope is estimated from
        (the stencil's order of accuracy is ``window - 1``). Integer >= 2.
      variant: ``"normalized"`` (the default), ``"plain"`` or
        ``"loss_weighted"``. The default is normalized because PINN losses are
        large and noisy: on the 2D Helmholtz benchmarks the plain slopes
        saturate the softmax at ``beta = 0.1``, the weights flip between 0 and
        1 from step to step and the error is worse than with equal weights;
        normalized slopes do better (``benchmarks/results/pinn/helmholtz/`` and
        ``benchmarks/results/pinn/helmholtz5/``).
      update_every: recompute the weights every ``update_every`` accepted
        updates once the window is full, and hold them in between. Integer >= 1.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights sum to 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.softadapt(beta=1.0)
      >>> state = method.init({"pde": 0.0, "bc": 0.0})
      >>> for pde, bc in [(2.0, 1.0), (1.0, 1.5)]:
      ...     weights, state = method.update({"pde": pde, "bc": bc}, state)
      ...     print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 0.5, 'pde': 0.5}
      {'bc': 0.731, 'pde': 0.269}

      The first update fills the window of two values, so the weights stay
      equal; then the slopes are -1 (pde) and +0.5 (bc), normalised by their
      absolute sum 1.5 to -2/3 and +1/3, and ``bc``, which rose, gets
      :math:`e^{1/3} / (e^{1/3} + e^{-2/3}) = 0.731` (the plain variant would
      give :math:`e^{0.5} / (e^{0.5} + e^{-1}) = 0.818`).

    References:
      Heydari, Thompson and Mehmood, `SoftAdapt: Techniques for Adaptive Loss
      Weighting of Neural Networks with Multi-Part Loss Functions
      <https://arxiv.org/abs/1912.12355>`_, 2019.
    """
    _checks.check_finite("beta", beta)
    _checks.check_integer("window", window, 2)  # two values give the first slope
    _checks.check_choice("variant", variant, _VARIANTS)
    _checks.check_every("update_every", update_every)
    stencil = backward_difference_coefficients(window)

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        return SoftAdaptState(
            loss_weights=_base.equal_weights(losses, dtype),
            loss_history=jax.tree.map(lambda _: jnp.zeros((window,), dtype), losses),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def slope_weights(history):
        # history: (n, window), oldest value first. The slopes come as v * 2^E
        # (v of moderate size), so losses near the dtype's largest value
        # neither overflow the stencil nor the softmax's logits.
        v, scale = _numerics.slopes(history, stencil)
        if variant == "normalized":
            total = jnp.sum(jnp.abs(v))
            v = v / jnp.where(total > 0, total, 1.0)
            return _numerics.softmax(_numerics.shifted_logits(v, beta))
        logits = _numerics.shifted_logits(v, beta, scale)
        if variant == "loss_weighted":
            # w_i ∝ mean_i exp(logit_i): the means enter as log-means, from the
            # history scaled by a power of two (so the mean cannot overflow).
            peak = _numerics.peak_exponent(history)
            means = jnp.mean(_numerics.scale_by_pow2(history, -peak), axis=1)
            positive = means > 0
            log_means = jnp.where(
                positive, jnp.log(jnp.where(positive, means, 1.0)), -jnp.inf
            )
            logits = jnp.where(positive, logits + log_means, -jnp.inf)
        return _numerics.softmax(logits)

    def update(losses, state, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, SoftAdaptState)
        step = state.weighting_step
        history = _base.stack(state.loss_history)
        history = jnp.concatenate([history[:, 1:], vector[:, None]], axis=1)
        since_full = step - (window - 1)
        due = (since_full >= 0) & (since_full % update_every == 0)
        weights = jnp.where(
            due, slope_weights(history), _base.stack(state.loss_weights)
        )
        return _base.finish(
            losses, state, ok, loss_weights=weights, loss_history=history
        )

    return _base.WeightingMethod(init, update)
