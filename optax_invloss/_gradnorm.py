"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich 2018): learned weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _checks, _gradients, _numerics


class GradNormState(NamedTuple):
    """State of :func:`gradnorm`.

    Attributes:
      loss_weights: the current weights :math:`w_i`, in the losses' structure
        (scalars in the state dtype: the losses' dtype, at least float32). They
        sum to the number of terms.
      initial_losses: the losses of the first accepted update, :math:`L_i(0)`,
        in the losses' structure.
      weight_optimizer_leaves: the leaves (``jax.tree.leaves``) of the state of
        the Optax optimizer that trains the weights. They are kept flat, without
        the optimizer's own field names, so that ``optax.tree.get`` on an outer
        optimizer's state (``"count"``, ``"mu"``, ...) finds that optimizer's
        fields only.
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative, or a gradient norm or a weight was not finite. Shape ``()``,
        int32; saturates.
    """

    loss_weights: Any
    initial_losses: Any
    weight_optimizer_leaves: tuple
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def relative_rates(losses: jax.Array, initial: jax.Array) -> jax.Array:
    r"""The rates :math:`r_i = \tilde L_i / \operatorname{mean}_j \tilde L_j`.

    Here :math:`\tilde L_i = L_i / L_i(0)`.
    A zero :math:`L_i(0)` gives :math:`\tilde L_i = 1`. The ratios are formed
    from mantissas and power-of-two exponents, so that they do not overflow
    when the losses span the dtype's range (:math:`3 \cdot 10^{38} / 10^{-30}`
    in float32): only the rates, at most :math:`n`, are ever formed.
    """
    e_now = _numerics.exponent(losses)
    e_initial = _numerics.exponent(initial)
    now = _numerics.scale_by_pow2(losses, -e_now)
    start = _numerics.scale_by_pow2(initial, -e_initial)
    positive = start > 0
    mantissa = jnp.where(positive, now / jnp.where(positive, start, 1.0), 1.0)
    exponents = jnp.where(positive, e_now - e_initial, 0)
    v, _ = _numerics.common_scale(mantissa, exponents)
    return v / jnp.mean(v)


def gradnorm(
    alpha: float = 1.5,
    learning_rate: float = 0.025,
    optimizer: optax.GradientTransformation | None = None,
    update_every: int = 1,
    mask: Callable | Any | None = _gradients.last_layer_mask,
    *,
    gradient_strategy: str = "auto",
) -> _base.WeightingMethod:
    r"""GradNorm: learnable weights that match gradient norms to training rates.

    The weights :math:`w_i` (initially 1) are trained by their own optimizer to
    make the gradient norm of each weighted term, on a chosen subset :math:`W` of
    the parameters (the last layer's weight matrix by default), proportional to
    the term's relative inverse training rate:

    .. math::

      G_i = \|\nabla_W (w_i L_i)\|_2 = w_i \|\nabla_W L_i\|_2,
      \qquad \tilde L_i = \frac{L_i(t)}{L_i(0)},
      \qquad r_i = \frac{\tilde L_i}{\operatorname{mean}_j \tilde L_j},

      L_{\mathrm{grad}}(w) = \sum_i \big| G_i - \operatorname{sg}\big[
        \bar G\, r_i^{\alpha}\big] \big|,
      \qquad \bar G = \operatorname{mean}_j G_j,

    where :math:`\operatorname{sg}` holds the target constant (a
    ``stop_gradient``), as the paper prescribes. Each update takes one step of
    the weights' optimizer on :math:`\nabla_w L_{\mathrm{grad}}`, then clips the
    weights at 0 and renormalises them to sum to the number of terms :math:`n`.
    Terms that train slowly (large :math:`r_i`) get larger gradients; ``alpha``
    sets how strongly (``alpha = 0`` asks for equal gradient norms).

    Normalisation: the weights sum to :math:`n`. First step: the weights start at
    1; the first accepted update records :math:`L_i(0)` (so :math:`r_i = 1`) and
    already takes a step on the weights. The weights returned at step :math:`t`
    are :math:`w(t + 1)`, computed with :math:`G_i` of the weights :math:`w(t)`
    held in the state (the weights the training step used). Updates happen on
    steps :math:`0, K, 2K, \dots` (``update_every = K``, 1 in the paper); the
    per-term gradients are only computed on those steps.

    Choices the paper leaves open. The optimizer of the weights: Adam with
    ``learning_rate = 0.025`` by default (a common choice in public
    implementations); pass ``optimizer=`` for another. The paper does not say
    what to do with a weight that a step makes negative; it is clipped to 0
    before the renormalisation (a weight at 0 gets a gradient that pushes it up
    again, since its :math:`G_i = 0` is below any positive target). "The last
    shared layer" of a multi-task network is, for a PINN (one network for all
    terms), its output layer; :func:`optax_invloss.last_layer_mask` finds it by
    name, and ``mask=`` takes any other subset.

    Bad values. A NaN, infinite or negative loss, or a gradient norm, weight or
    entry of the weights' optimizer state that is not finite, skips the update
    (the state, the weights' optimizer state included, is kept;
    ``skipped_updates`` goes up by one). A zero :math:`L_i(0)` gives
    :math:`\tilde L_i = 1`. The norms are computed from gradients scaled by
    powers of two and the rates from ratios in scaled form, so both are finite
    for any finite gradients and losses. The gradient of :math:`L_{\mathrm{grad}}`
    with respect to the weights is in the units of the gradient norms, as in
    the paper; an optimizer that squares it (Adam, the default) overflows
    float32 for norms above about 1.8e19 (the square root of its largest
    value), and those updates are skipped and counted rather than stored.

    Not to be confused with :func:`optax_invloss.grad_norm_balance` (Wang et al.
    2023): that method sets each weight in closed form to the ratio of the sum
    of the gradient norms to the term's own (all parameters by default), so that
    the weighted gradient norms are equal; this one trains the weights by
    gradient steps on :math:`L_{\mathrm{grad}}`, on the last layer by default,
    toward norms proportional to :math:`r_i^\alpha`, so it also looks at how
    fast each loss falls.

    Args:
      alpha: the asymmetry :math:`\alpha \ge 0` (1.5 in most of the paper's
        experiments).
      learning_rate: the learning rate of the default optimizer of the weights,
        ``optax.adam(learning_rate)``; ignored when ``optimizer`` is given. > 0.
      optimizer: an Optax gradient transformation for the weights (the vector of
        :math:`n` weights), or None for ``optax.adam(learning_rate)``.
      update_every: update the weights every ``update_every`` accepted updates.
        Integer >= 1.
      mask: the subset :math:`W`: a pytree of bools matching ``params``, a
        function ``params -> such a pytree``, or None for all floating-point
        parameters. The default, :func:`optax_invloss.last_layer_mask`, takes the
        weight matrix of the last layer.
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
      >>> import optax, optax_invloss
      >>> def loss_fn(params):  # gradients on W: 2 W and (0.5, 0)
      ...     W = params["W"]
      ...     return {"pde": jnp.sum(W**2), "bc": 10.0 + 0.5 * W[0, 0]}
      >>> params = {"W": jnp.asarray([[1.5], [2.0]])}  # gradient norms 5 and 0.5
      >>> method = optax_invloss.gradnorm(optimizer=optax.sgd(0.1))
      >>> losses = loss_fn(params)
      >>> weights, state = method.update(
      ...     losses, method.init(losses), params=params, loss_fn=loss_fn)
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 1.355, 'pde': 0.645}

      There, :math:`G = (0.5, 5)` and the target is their mean 2.75 for both; the
      gradient of :math:`L_{\mathrm{grad}}` is :math:`(-0.5, 5)`, the SGD step
      gives :math:`(1.05, 0.5)`, renormalised to sum to 2: :math:`(1.355, 0.645)`.

    References:
      Chen, Badrinarayanan, Lee and Rabinovich, `GradNorm: gradient normalization
      for adaptive loss balancing in deep multitask networks
      <https://arxiv.org/abs/1711.02257>`_, ICML 2018.
    """
    _checks.check_range("alpha", alpha, 0)
    _checks.check_positive("learning_rate", learning_rate)
    _checks.check_every("update_every", update_every)
    _gradients.check_mask(mask)
    _gradients.check_strategy(gradient_strategy)
    optimizer = _base.flat_state_optimizer(optimizer, learning_rate)
    name = "gradnorm"

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        n = len(jax.tree.leaves(losses))
        weights = _base.equal_weights(losses, dtype, total=float(n))
        return GradNormState(
            loss_weights=weights,
            initial_losses=_base.zeros_like_losses(losses, dtype),
            weight_optimizer_leaves=optimizer.init(_base.stack(weights)),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, *, params, loss_fn, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, GradNormState)
        old = _base.stack(state.loss_weights)
        n = old.shape[0]
        first = state.weighting_step == 0
        initial = jnp.where(first, vector, _base.stack(state.initial_losses))
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
            # The norms over a common power of two, brought back to their own
            # scale (finite up to the dtype's largest value: their squares are
            # never formed), and the rates from loss ratios in scaled form.
            norms = _numerics.scale_by_pow2(*_gradients.term_norms(grads))
            rate = relative_rates(vector, initial)

            def weight_loss(w):
                g = w * norms
                target = jax.lax.stop_gradient(jnp.mean(g) * rate**alpha)
                return jnp.sum(jnp.abs(g - target))

            weight_grad = jax.grad(weight_loss)(old)
            step, opt_leaves = optimizer.update(
                weight_grad, state.weight_optimizer_leaves, old
            )
            new = jnp.maximum(optax.apply_updates(old, step), 0.0)
            total = jnp.sum(new)
            new = jnp.where(total > 0, n * new / jnp.where(total > 0, total, 1.0), 1.0)
            finite = _gradients.all_finite(norms, new, *jax.tree.leaves(opt_leaves))
            return new.astype(old.dtype), finite, (opt_leaves,)

        return _gradients.update_when_due(
            losses,
            state,
            ok,
            update_every,
            compute,
            held=("weight_optimizer_leaves",),
            initial_losses=initial,
        )

    return _base.WeightingMethod(init, update, inputs=frozenset({"params", "loss_fn"}))
