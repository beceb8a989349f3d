"""Grad-norm balancing (Wang, Sankaran, Wang and Perdikaris 2023): set weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _gradients, _numerics


class GradNormBalanceState(NamedTuple):
    """State of :func:`grad_norm_balance`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32).
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative, or a gradient norm was not finite. Shape ``()``, int32;
        saturates.
    """

    loss_weights: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


_REDUCTIONS = ("sum", "mean")


def grad_norm_balance(
    decay: float = 0.9,
    update_every: int = 1000,
    reduction: str = "sum",
    mask: Callable | Any | None = None,
    *,
    gradient_strategy: str = "auto",
) -> _base.WeightingMethod:
    r"""Grad-norm balancing: weights that equalise the terms' gradient norms.

    Every term is weighted, by the inverse of its gradient's L2 norm relative to
    the others':

    .. math::

      \hat\lambda_i = \frac{\sum_j \|\nabla_\theta L_j\|_2}
                           {\|\nabla_\theta L_i\|_2},
      \qquad \lambda_i \leftarrow \beta \lambda_i + (1 - \beta) \hat\lambda_i,

    with :math:`\beta` = ``decay`` the weight of the old value (as in
    ``optax.ema``; 0.9 in the paper and its code) and the norm taken over all
    selected parameters at once. With :math:`\hat\lambda`, every weighted
    gradient :math:`\hat\lambda_i \nabla L_i` has the same norm,
    :math:`\sum_j \|\nabla L_j\|`.

    The paper writes the sum; the authors' code (jaxpi) uses the mean over terms,
    which is the sum divided by the number of terms :math:`n`: the same ratios,
    all weights :math:`n` times smaller. The default is the paper's sum;
    ``reduction="mean"`` gives the code's. Only the scale of the weights differs,
    and with Adam the scale of the total barely matters; with plain gradient
    descent it acts as a learning rate.

    Normalisation: none; with the sum, each :math:`\hat\lambda_i \ge 1` and
    :math:`\sum_i 1/\hat\lambda_i = 1`. First step: all weights start at 1; the
    first update (step 0) gives :math:`\lambda_i = \beta + (1 - \beta)
    \hat\lambda_i`. The weights are recomputed on steps :math:`0, K, 2K, \dots`
    (``update_every = K``) and held in between; the per-term gradients are only
    computed on those steps (a ``lax.cond`` on the step counter).

    Bad values. A NaN, infinite or negative loss, or a gradient that is not
    finite, skips the update (the state is kept, ``skipped_updates`` goes up by
    one). A term whose gradient is zero keeps its weight. The norms are computed
    from gradients scaled by powers of two and only their ratios are formed, so
    gradients of any finite size give finite weights (norms whose squares, or
    whose sum, would overflow included). A norm more than the dtype's range
    below the largest (about 1e-38 times it in float32) counts as zero: its
    term keeps its weight.

    Not to be confused with :func:`optax_invloss.gradnorm` (GradNorm, Chen et
    al. 2018): that method *learns* the weights with their own optimizer, so
    that each weighted gradient norm on the last layer tracks the term's
    training rate (:math:`L_i(t) / L_i(0)`); this one *sets* each weight in
    closed form from the gradient norms alone, over all parameters by default,
    and looks at no loss value.

    Args:
      decay: weight of the old value in the moving average of the weights, in
        ``[0, 1)``.
      update_every: recompute the weights every ``update_every`` accepted updates.
        Integer >= 1.
      reduction: ``"sum"`` (the paper) or ``"mean"`` (the authors' code) over the
        terms' gradient norms in the numerator.
      mask: which parameters count: None for all floating-point parameters (the
        paper), a pytree of bools matching ``params``, or a function ``params ->
        such a pytree`` (e.g. :func:`optax_invloss.weight_matrix_mask`).
      gradient_strategy: how the per-term gradients are computed: ``"auto"``
        (the default: ``"unrolled"`` for few terms, ``"batched"`` from 10 on),
        ``"unrolled"`` (one ``jax.grad`` per term: the least work per update,
        but a compile time that grows as the square of the number of terms) or
        ``"batched"`` (one reverse pass ``jax.vmap``-ed over the terms: a compile
        time that does not grow with their number, ``m`` backward passes and
        ``m`` times the parameters' memory per update). Same gradients either
        way; see ``benchmarks/results/many_terms.md``.

    Returns:
      A :class:`optax_invloss.WeightingMethod`.
      ``update(losses, state, *, params, loss_fn)`` needs the parameters and
      ``loss_fn(params)``, which returns the loss terms in the structure of
      ``losses``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> def loss_fn(params):  # gradients: 2 * w and (0, 1)
      ...     w = params["w"]
      ...     return {"pde": jnp.sum(w**2), "bc": 10.0 + w[1]}
      >>> params = {"w": jnp.asarray([1.5, 2.0])}  # gradient norms 5 and 1
      >>> method = optax_invloss.grad_norm_balance(update_every=1)
      >>> losses = loss_fn(params)
      >>> weights, state = method.update(
      ...     losses, method.init(losses), params=params, loss_fn=loss_fn)
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 1.5, 'pde': 1.02}

    References:
      Wang, Sankaran, Wang and Perdikaris, `An expert's guide to training
      physics-informed neural networks <https://arxiv.org/abs/2308.08468>`_, 2023.
    """
    _checks.check_decay("decay", decay)
    _checks.check_every("update_every", update_every)
    _checks.check_choice("reduction", reduction, _REDUCTIONS)
    _gradients.check_mask(mask)
    _gradients.check_strategy(gradient_strategy)
    name = "grad_norm_balance"

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        n = len(jax.tree.leaves(losses))
        return GradNormBalanceState(
            loss_weights=_base.equal_weights(losses, dtype, total=float(n)),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, *, params, loss_fn, **inputs):
        del inputs
        _, ok = _base.prepare(losses, state, GradNormBalanceState)
        old = _base.stack(state.loss_weights)
        flags = _gradients.selected_leaves(params, mask, method=name)

        def compute():
            grads = _gradients.per_term_gradients(
                loss_fn,
                params,
                flags,
                losses,
                old.dtype,
                method=name,
                strategy=gradient_strategy,
            )
            # The norms over a common power of two: their ratios, never their
            # squares, are what the weights need.
            norms, _ = _gradients.term_norms(grads)
            total = jnp.sum(norms) if reduction == "sum" else jnp.mean(norms)
            estimate = _numerics.ratio_or(total, norms, old)
            new = decay * old + (1.0 - decay) * estimate
            return new, _gradients.all_finite(norms, new)

        return _gradients.update_when_due(losses, state, ok, update_every, compute)

    return _base.WeightingMethod(init, update, inputs=frozenset({"params", "loss_fn"}))
