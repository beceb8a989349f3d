"""Learning-rate annealing (Wang, Teng and Perdikaris 2021)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _gradients, _numerics


class LRAnnealingState(NamedTuple):
    """State of :func:`lr_annealing`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32). The reference term's
        weight is always 1.
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative, or a gradient statistic was not finite. Shape ``()``, int32;
        saturates.
    """

    loss_weights: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


_STATISTICS = ("max", "mean")


def _statistics(grads: list[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(max, mean, e)`` of one term's gradient, both statistics times ``2**-e``.

    ``max`` is the largest absolute entry over all leaves, ``mean`` the mean over
    leaves (layers) of each leaf's mean absolute value. The leaves are scaled by
    one power of two first (:func:`_numerics.scaled_leaves`), so that the sums
    behind the means cannot overflow.
    """
    scaled, e = _numerics.scaled_leaves(grads)
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in scaled]))
    mean = jnp.mean(jnp.stack([jnp.mean(jnp.abs(g)) for g in scaled]))
    return largest, mean, e


def lr_annealing(
    reference: str = "pde",
    decay: float = 0.9,
    update_every: int = 10,
    statistic: str = "max",
    lambda_inside: bool = True,
    mask: Callable | Any | None = _gradients.weight_matrix_mask,
    *,
    gradient_strategy: str = "auto",
) -> _base.WeightingMethod:
    r"""Learning-rate annealing: weights from the ratio of gradient magnitudes.

    One reference term :math:`r` (the PDE residual, usually) keeps the weight 1.
    Every other term :math:`i` gets the weight that brings the size of its
    gradient up to the largest entry of the reference term's gradient:

    .. math::

      \hat\lambda_i = \frac{\max_\ell \max |\nabla_{W_\ell} L_r|}
                           {\operatorname{mean}_\ell \operatorname{mean}
                            |\nabla_{W_\ell} (\lambda_i L_i)|},
      \qquad \lambda_i \leftarrow \beta \lambda_i + (1 - \beta) \hat\lambda_i,

    where :math:`W_\ell` runs over the selected parameter leaves (the layers'
    weight matrices by default), :math:`\max|\cdot|` and
    :math:`\operatorname{mean}|\cdot|` are taken over the entries of one leaf, and
    :math:`\beta` is ``decay`` (the weight of the old value, as in ``optax.ema``).
    This is the authors' code for the 2D Helmholtz benchmark (weight matrices only,
    the largest entry over all layers divided by the mean over layers of each
    layer's mean, the current :math:`\lambda_i` inside the denominator, 0.9 on the
    old value, every 10 steps), and it is the default. The references disagree on
    three points; each is an argument:

    * ``statistic="mean"`` puts a mean of :math:`|\nabla L_r|` in the numerator
      instead of the largest entry, as the ReLoBRaLo authors' code of this method
      does; here it is pooled like the denominator (the mean over layers of each
      layer's mean).
    * ``lambda_inside=False`` drops :math:`\lambda_i` from the denominator
      (:math:`\hat\lambda_i = \dots / \operatorname{mean}|\nabla L_i|`). The two
      have different fixed points: with :math:`\lambda_i` inside, the weights
      settle where :math:`\lambda_i^2 = S / D_i` (:math:`S` the numerator,
      :math:`D_i` the mean gradient of :math:`L_i`), without it where
      :math:`\lambda_i = S / D_i`.
    * ``mask=None`` takes all parameters (each leaf, bias vectors included,
      counts as a layer) instead of the weight matrices only.

    Normalisation: none; the reference weight is 1 and the others are free
    (typically much larger than 1). First step: all weights start at 1; the first
    update (step 0) gives :math:`\lambda_i = \beta + (1 - \beta)\hat\lambda_i`.
    The weights are recomputed on steps :math:`0, K, 2K, \dots`
    (``update_every = K``) and held in between; the per-term gradients are only
    computed on those steps (a ``lax.cond`` on the step counter), so ``K = 10``
    costs about a tenth of ``K = 1``.

    Bad values. A NaN, infinite or negative loss, or a gradient that is not
    finite, skips the update (the state is kept, ``skipped_updates`` goes up by
    one). A term whose gradient is zero on the selected parameters keeps its
    weight (the ratio is not defined there). The statistics are computed from
    gradients scaled by powers of two and only their ratio is formed, so
    gradients of any finite size give finite weights; a weight beyond the
    dtype's range (a ratio above about 3e38 in float32) skips the update.

    Args:
      reference: the name of the reference term, whose weight stays 1: its key in
        a dict of losses (``"pde"``), the keys along its path joined by ``/`` for
        nested losses (``"bc/left"``), or its ``jax.tree_util.keystr`` path
        (``"['bc']['left']"``). A name that is not a term raises ValueError in
        ``init``, listing the terms.
      decay: weight of the old value in the moving average of the weights, in
        ``[0, 1)``.
      update_every: recompute the weights every ``update_every`` accepted updates.
        Integer >= 1.
      statistic: ``"max"`` (the authors' code) or ``"mean"``: the statistic of the
        reference term's gradient in the numerator.
      lambda_inside: whether the current weight multiplies the term's gradient in
        the denominator (the authors' code: True).
      mask: which parameters count: a pytree of bools matching ``params``, a
        function ``params -> such a pytree``, or None for all floating-point
        parameters. The default, :func:`optax_invloss.weight_matrix_mask`, takes
        the leaves with ``ndim >= 2``.
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
      ``losses`` (through :func:`optax_invloss.with_weighting`, ``params`` is the
      optimizer's ``params`` and ``loss_fn=`` is passed to ``tx.update``).

    Examples:
      The reference gradient's largest entry on the weight matrix is 4 and the
      boundary term's mean absolute gradient is 1, so :math:`\hat\lambda = 4`
      and the first update gives :math:`0.9 + 0.1 \cdot 4 = 1.3` (the bias,
      whose gradient is 100, is not looked at):

      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> def loss_fn(params):  # d pde / dW = W, d bc / dW = (1, -1)
      ...     W, b = params["W"], params["b"]
      ...     return {"pde": 0.5 * jnp.sum(W**2) + 50.0 * b**2,
      ...             "bc": 10.0 + W[0, 0] - W[0, 1]}
      >>> params = {"W": jnp.asarray([[3.0, -4.0]]), "b": jnp.asarray(1.0)}
      >>> method = optax_invloss.lr_annealing(reference="pde")
      >>> losses = loss_fn(params)
      >>> state = method.init(losses)
      >>> weights, state = method.update(
      ...     losses, state, params=params, loss_fn=loss_fn)
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 1.3, 'pde': 1.0}

    References:
      Wang, Teng and Perdikaris, `Understanding and mitigating gradient flow
      pathologies in physics-informed neural networks
      <https://arxiv.org/abs/2001.04536>`_, SIAM J. Sci. Comput. 43(5), 2021.
    """
    if not isinstance(reference, str):
        raise ValueError(
            f"reference must be the name of a loss term (a str), got reference = "
            f"{reference!r}."
        )
    _checks.check_decay("decay", decay)
    _checks.check_every("update_every", update_every)
    _checks.check_choice("statistic", statistic, _STATISTICS)
    _checks.check_flag("lambda_inside", lambda_inside)
    _gradients.check_mask(mask)
    _gradients.check_strategy(gradient_strategy)
    name = "lr_annealing"

    def reference_index(losses) -> int:
        return _base.term_index(losses, reference, argname="reference", method=name)

    def init(losses):
        _base.check_losses(losses)
        reference_index(losses)
        dtype = _base.state_dtype(losses)
        n = len(jax.tree.leaves(losses))
        return LRAnnealingState(
            loss_weights=_base.equal_weights(losses, dtype, total=float(n)),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, *, params, loss_fn, **inputs):
        del inputs
        _, ok = _base.prepare(losses, state, LRAnnealingState)
        ref = reference_index(losses)
        old = _base.stack(state.loss_weights)
        dtype = old.dtype
        flags = _gradients.selected_leaves(params, mask, method=name)

        def compute():
            grads = _gradients.per_term_gradients(
                loss_fn,
                params,
                flags,
                losses,
                dtype,
                method=name,
                strategy=gradient_strategy,
            )
            # Each statistic is m 2^e with m of moderate size: the ratio is
            # formed from the m's and the e's, never from sums that overflow.
            largest, mean, e = jax.vmap(_statistics)(grads)
            numerator = largest[ref] if statistic == "max" else mean[ref]
            denominator = old * mean if lambda_inside else mean
            # No ratio for a zero gradient (or weight): the weight is kept.
            ratio = _numerics.ratio_or(numerator, denominator, 1.0)
            estimate = jnp.where(
                denominator > 0, _numerics.scale_by_pow2(ratio, e[ref] - e), old
            )
            new = decay * old + (1.0 - decay) * estimate
            new = new.at[ref].set(1.0)
            return new, _gradients.all_finite(largest, mean, new)

        return _gradients.update_when_due(losses, state, ok, update_every, compute)

    return _base.WeightingMethod(init, update, inputs=frozenset({"params", "loss_fn"}))
