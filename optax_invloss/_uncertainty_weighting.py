"""Uncertainty weighting: learned homoscedastic log-variances per loss term."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _checks


class UncertaintyWeightingState(NamedTuple):
    """State of :func:`uncertainty_weighting`.

    Attributes:
      loss_weights: the current weights :math:`\\tfrac12 e^{-s_i}`, in the losses'
        structure (scalars in the state dtype: the losses' dtype, at least
        float32).
      log_variances: the learned log-variances :math:`s_i = \\log \\sigma_i^2`,
        in the losses' structure.
      log_variance_optimizer_state: the state of the optimizer that trains the
        log-variances, kept as the flat tuple of its leaves so that its field
        names (``count``, ``mu``, ``nu``, ...) do not appear in the state and
        ``optax.tree.get`` on the training state still finds one of each.
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    log_variances: Any
    log_variance_optimizer_state: tuple
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def uncertainty_weighting(
    learning_rate: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    eps: float = 1e-12,
) -> _base.WeightingMethod:
    r"""Uncertainty weighting: learned log-variances, one per loss term.

    Each term gets a learnable log-variance :math:`s_i = \log \sigma_i^2` and the
    objective is

    .. math::

      \mathcal{L}(\theta, s) = \tfrac12 \sum_i \big(e^{-s_i} L_i(\theta) + s_i\big),
      \qquad w_i = \tfrac12 e^{-s_i}.

    The weight returned is :math:`w_i = \tfrac12 e^{-s_i}`, the factor that
    multiplies :math:`L_i` in the objective (the paper's :math:`1 / (2
    \sigma_i^2)` for a Gaussian likelihood). The :math:`\tfrac12 s_i` terms have
    no gradient with respect to the network parameters :math:`\theta`, so
    :math:`\sum_i w_i \nabla_\theta L_i` is exactly the parameter gradient of
    :math:`\mathcal{L}`: the weights alone reproduce the method, and the user's
    optimizer is left untouched.

    The log-variances are trained inside the state, by their own small Optax
    optimizer, on the closed-form gradient

    .. math::

      \frac{\partial \mathcal{L}}{\partial s_i} = \tfrac12 \big(1 - e^{-s_i} L_i\big),

    whose only zero is :math:`e^{s_i} = L_i`. At that stationary point
    :math:`w_i = 1 / (2 L_i)`: uncertainty weighting is a learned, smoothed
    inverse-loss weighting, with weights proportional to :math:`1 / L_i` and the
    weighted total :math:`\sum_i w_i L_i = n / 2`. How fast the weights follow
    the losses is set by the optimizer: Adam moves each :math:`s_i` by about
    ``learning_rate`` per step, so following a loss that falls by a factor
    :math:`e` takes about ``1 / learning_rate`` steps.

    Normalisation: none; the weights are not normalised (they sum to
    :math:`\tfrac12 \sum_i 1/L_i` at the stationary point). First steps: the
    log-variances start at 0, so ``init`` gives weights of 1/2 each; each update
    takes one optimizer step on :math:`s` from the losses it is given and
    returns the new weights.

    Where the paper's setting differs: Kendall et al. train :math:`s` jointly
    with the network by the same optimizer; here it has its own optimizer (a
    separate learning rate), which is the same method with a different step
    size for :math:`s`. Like inverse-loss weighting, a loss that keeps falling
    to 0 keeps raising its weight; the floor :math:`e^{s_i} \ge` ``eps`` bounds
    the weight by ``1 / (2 eps)``.

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the weights, the log-variances, the inner optimizer's state and the step
    counter keep their values and ``skipped_updates`` goes up by one.

    Args:
      learning_rate: the learning rate of the default optimizer,
        ``optax.adam(learning_rate)``, for the log-variances. Must be > 0.
        Ignored when ``optimizer`` is given.
      optimizer: an Optax gradient transformation for the log-variances, called
        as ``optimizer.update(grads, state, params)``; ``None`` means
        ``optax.adam(learning_rate)``.
      eps: floor on :math:`\sigma_i^2 = e^{s_i}` (the log-variances are kept at
        or above :math:`\log` ``eps`` after each step). Must be > 0.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights are not
      normalised.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.uncertainty_weighting(learning_rate=0.05)
      >>> losses = {"pde": jnp.asarray(4.0), "bc": jnp.asarray(0.25)}
      >>> state = method.init(losses)
      >>> print({k: float(v) for k, v in optax_invloss.loss_weights(state).items()})
      {'bc': 0.5, 'pde': 0.5}
      >>> step = jax.jit(method.update)
      >>> for _ in range(2000):
      ...     weights, state = step(losses, state)
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 2.0, 'pde': 0.125}

      The weights settle at :math:`1 / (2 L_i)`: 1/8 for a loss of 4 and 2 for a
      loss of 1/4.

    References:
      Kendall, Gal and Cipolla, `Multi-Task Learning Using Uncertainty to Weigh
      Losses for Scene Geometry and Semantics
      <https://arxiv.org/abs/1705.07115>`_, CVPR 2018.
    """
    _checks.check_positive("learning_rate", learning_rate)
    _checks.check_positive("eps", eps)
    optimizer = _base.flat_state_optimizer(optimizer, learning_rate)
    min_log_variance = math.log(eps)

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        log_variances = jnp.zeros((len(jax.tree.leaves(losses)),), dtype)
        like = _base.zeros_like_losses(losses, dtype)
        return UncertaintyWeightingState(
            loss_weights=_base.unstack(0.5 * jnp.exp(-log_variances), like),
            log_variances=_base.unstack(log_variances, like),
            log_variance_optimizer_state=optimizer.init(log_variances),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, UncertaintyWeightingState)
        log_variances = _base.stack(state.log_variances)
        # Capped so that a huge loss on a floored s cannot overflow Adam's moments.
        scaled = jnp.minimum(jnp.exp(-log_variances) * vector, 1.0 / eps)
        grads = 0.5 * (1.0 - scaled)
        updates, inner_state = optimizer.update(
            grads, state.log_variance_optimizer_state, log_variances
        )
        log_variances = optax.apply_updates(log_variances, updates)
        log_variances = jnp.maximum(log_variances, min_log_variance)
        return _base.finish(
            losses,
            state,
            ok,
            loss_weights=0.5 * jnp.exp(-log_variances),
            log_variances=log_variances,
            log_variance_optimizer_state=inner_state,
        )

    return _base.WeightingMethod(init, update)
