"""ResNorm (PhysicsNeMo-Sym): learned log-weights that track relative progress."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _checks


class ResNormState(NamedTuple):
    """State of :func:`resnorm`.

    Attributes:
      loss_weights: the current weights :math:`w_i = e^{\\lambda_i}`, which sum to
        the number of terms :math:`n`, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32).
      log_weights: the learned :math:`\\lambda_i`, renormalised so that
        :math:`\\sum_i e^{\\lambda_i} = n`, in the losses' structure.
      initial_losses: :math:`L_i(0)`, the first accepted losses (0 before).
      log_weight_optimizer_state: the state of the optimizer that trains the
        log-weights, as the flat tuple of its leaves (so that its field names do
        not appear in the state).
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    log_weights: Any
    initial_losses: Any
    log_weight_optimizer_state: tuple
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def renormalise(log_weights: jax.Array) -> jax.Array:
    """``log_weights`` shifted so that ``sum(exp(log_weights)) == n``."""
    n = log_weights.shape[0]
    return log_weights + (math.log(n) - jax.nn.logsumexp(log_weights))


def targets(
    losses: jax.Array, initial_losses: jax.Array, alpha: float, eps: float
) -> jax.Array:
    r"""ResNorm's targets :math:`\bar L\, r_i^\alpha` for a vector of losses.

    :math:`r_i = (L_i / L_i(0)) / \mathrm{mean}_j (L_j / L_j(0))`, the relative
    inverse training rate, with :math:`L_i(0)` floored at ``eps``; if every
    :math:`L_i` is 0, :math:`r_i = 1`.
    """
    progress = losses / jnp.maximum(initial_losses, eps)
    mean = jnp.mean(progress)
    rate = jnp.where(mean > 0, progress / jnp.where(mean > 0, mean, 1.0), 1.0)
    return jnp.mean(losses) * rate**alpha


def resnorm(
    alpha: float = 1.0,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    eps: float = 1e-12,
) -> _base.WeightingMethod:
    r"""ResNorm: learned weights that balance each term's relative progress.

    The weights are :math:`w_i = e^{\lambda_i}`, renormalised so that
    :math:`\sum_i w_i = n`. Each term's target is the mean loss scaled by its
    relative inverse training rate,

    .. math::

      r_i = \frac{L_i / L_i(0)}{\frac1n \sum_j L_j / L_j(0)}, \qquad
      T_i = \Big(\frac1n \sum_j L_j\Big) r_i^\alpha,

    and :math:`\lambda` descends the extra loss
    :math:`\sum_i |w_i L_i - T_i|` (losses and targets held constant), whose
    gradient, taken without the renormalisation as in PhysicsNeMo-Sym, is

    .. math::

      g_i = \mathrm{sign}(w_i L_i - T_i)\, w_i L_i .

    The model loss is :math:`\sum_i w_i L_i` with stop-gradient weights
    (:func:`optax_invloss.weighted_sum`). Only loss values are used: no extra
    backward pass.

    The step. PhysicsNeMo-Sym trains :math:`\lambda` as a parameter group of the
    user's optimizer; here it is trained inside the state by the step we take
    ourselves: by default a sign step, :math:`\lambda_i \leftarrow \lambda_i -
    \eta\, \mathrm{sign}(g_i)` (``optax.sign_sgd(learning_rate)``), then the
    renormalisation. The sign step is what Adam (PhysicsNeMo's usual optimizer)
    does for a gradient that keeps its sign, and it does not depend on the
    losses' scale. The default ``learning_rate`` of 1e-3 is that Adam's usual
    rate: a weight moves by a factor :math:`e` in about 1000 steps at most.

    Rest points and the relation to inverse-loss weighting. Under the sign step
    a common shift of all :math:`\lambda_i` is undone by the renormalisation, so
    any :math:`w` with every term on the same side of its target is at rest.
    :math:`w_i \propto r_i^\alpha / L_i` is always such a point (every
    :math:`w_i L_i` is the same fraction of :math:`T_i`). At ``alpha=0`` the
    targets are all :math:`\bar L` and that point is the inverse-loss weighting,
    :math:`w_i = n\, (1/L_i) / \sum_j (1/L_j)` (:func:`optax_invloss.inverse_loss`
    times :math:`n`): every :math:`w_i L_i` equals the harmonic mean, at or
    below the mean :math:`\bar L`. At ``alpha=1`` with the losses at their
    initial values it is :math:`w_i \propto 1/L_i(0)`. It is a rest point, not an
    attractor: for fixed losses the step stops at the first point of the
    resting set it reaches. For :math:`L = (1, 4)` from equal weights it stops at
    :math:`w \approx (1.375, 0.625)`, where the second term meets its target
    (the minimiser of the extra loss on :math:`\sum_i w_i = 2`), not at
    :math:`(1.6, 0.4)`. During training the losses and targets move, and the
    weights with them.

    First steps: :math:`L_i(0)` is recorded at the first accepted update; the
    weights start at 1 each. Like the other loss-value methods the weights
    returned at step :math:`t` come from the losses of step :math:`t`, which in
    the one-pass training step of :func:`optax_invloss.with_weighting` are
    applied at step :math:`t + 1` (PhysicsNeMo's timing).

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the state keeps its values and ``skipped_updates`` goes up by one.

    Args:
      alpha: the exponent :math:`\alpha \ge 0` on the inverse training rate;
        ``0`` gives every term the mean loss as its target.
      learning_rate: the step of the default optimizer,
        ``optax.sign_sgd(learning_rate)``. Must be > 0. Ignored when
        ``optimizer`` is given.
      optimizer: an Optax gradient transformation for :math:`\lambda`, given
        :math:`g`; ``optax.adam(1e-3)`` reproduces PhysicsNeMo-Sym's usual
        setting. ``None`` means the sign step above.
      eps: floor on :math:`L_i(0)` in :math:`r_i`. Must be > 0.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights sum to
      :math:`n`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.resnorm(learning_rate=0.01)
      >>> losses = {"pde": jnp.asarray(1.0), "bc": jnp.asarray(4.0)}
      >>> state = method.init(losses)
      >>> step = jax.jit(method.update)
      >>> for _ in range(300):
      ...     weights, state = step(losses, state)
      >>> print({k: round(float(v), 1) for k, v in weights.items()})
      {'bc': 0.6, 'pde': 1.4}
      >>> print(round(4.0 * float(weights["bc"]), 1))  # w_bc L_bc at its target
      2.5

      The targets are both 2.5 (the mean loss): the weights stop where
      :math:`4 w_{bc}` reaches 2.5, and then chatter by about one step.

    References:
      NVIDIA PhysicsNeMo-Sym, `loss aggregators
      <https://github.com/NVIDIA/physicsnemo-sym>`_
      (``physicsnemo/sym/loss/aggregator.py``, class ``ResNorm``; contributors
      T. Nandi, D. Van Essendelft, M. A. Nabian).
    """
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)) or not (
        0.0 <= alpha < math.inf
    ):
        raise ValueError(f"alpha must be a finite number >= 0, got alpha = {alpha!r}.")
    _checks.check_positive("learning_rate", learning_rate)
    _checks.check_positive("eps", eps)
    optimizer = _base.flat_state_optimizer(
        optax.sign_sgd(learning_rate) if optimizer is None else optimizer,
        learning_rate,
    )

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        n = len(jax.tree.leaves(losses))
        like = _base.zeros_like_losses(losses, dtype)
        log_weights = jnp.zeros((n,), dtype)
        return ResNormState(
            loss_weights=_base.equal_weights(losses, dtype, total=float(n)),
            log_weights=like,
            initial_losses=like,
            log_weight_optimizer_state=optimizer.init(log_weights),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, ResNormState)
        initial = jnp.where(
            state.weighting_step == 0, vector, _base.stack(state.initial_losses)
        )
        log_weights = renormalise(_base.stack(state.log_weights))
        scaled = jnp.exp(log_weights) * vector
        grads = jnp.sign(scaled - targets(vector, initial, alpha, eps)) * scaled
        updates, inner_state = optimizer.update(
            grads, state.log_weight_optimizer_state, log_weights
        )
        log_weights = renormalise(optax.apply_updates(log_weights, updates))
        return _base.finish(
            losses,
            state,
            ok,
            loss_weights=jnp.exp(log_weights),
            log_weights=log_weights,
            initial_losses=initial,
            log_weight_optimizer_state=inner_state,
        )

    return _base.WeightingMethod(init, update)
