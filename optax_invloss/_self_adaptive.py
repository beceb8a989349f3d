"""Self-adaptive weights (SA-PINN): per-point weights trained by gradient ascent."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import optax

from optax_invloss import _base, _checks, _pointwise, _relobralo


class SelfAdaptiveState(NamedTuple):
    """State of :func:`self_adaptive`.

    Attributes:
      point_weights: the self-adaptive weights :math:`\\lambda`, a dict by term
        name of arrays of the shape given to ``init`` (one entry per point), in
        the residuals' dtype (at least float32). Only the weighted terms have an
        entry.
      point_weight_optimizer_state: the state of the optimizer that trains the
        weights, kept as the flat tuple of its leaves (so that its field names,
        ``count``, ``mu``, ``nu``, ..., do not appear in the state).
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a residual was NaN or
        infinite or an index out of range. Shape ``()``, int32; saturates.
    """

    point_weights: dict[str, jax.Array]
    point_weight_optimizer_state: tuple
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def self_adaptive(
    learning_rate: float = 5e-3,
    optimizer: optax.GradientTransformation | None = None,
    *,
    key: int | jax.Array = 0,
    init_scale: float | Mapping[str, float] = 1.0,
    terms: str | Sequence[str] | None = None,
) -> _pointwise.PointWeightingMethod:
    r"""Self-adaptive weights: per-point weights that ascend the loss they weight.

    Every point :math:`j` of a weighted term has a trainable weight
    :math:`\lambda_j`. The network minimises and the weights *maximise* the same
    loss,

    .. math::

      \min_\theta \max_\lambda \; \sum_i \frac{1}{N_i}
        \sum_j (\lambda_{i,j}\, r_{i,j}(\theta))^2,

    so points with large residuals gain weight. The weights are trained inside
    the state by their own optimizer, on the closed-form ascent direction
    :math:`\partial L_i / \partial \lambda_{i,j} = 2 \lambda_{i,j} r_{i,j}^2 /
    N_i` (the optimizer is handed its negative and minimises). Its gradient is
    never negative, so the weights never decrease.

    Timing, as in the authors' code: a step's loss uses the weights *before*
    the step, and both optimizers then step from the same residuals. So
    ``update`` returns the weights it was given (those to apply to these
    residuals) and stores the stepped ones; it is called inside the
    differentiated function like :func:`optax_invloss.rba`.

    Initialisation (McClenny and Braga-Neto): :math:`\lambda_j \sim U(0, s_i)`
    with the term's scale :math:`s_i` (``init_scale``): :math:`U(0,1)` for the
    residual points and :math:`100\, U(0,1)` for the initial condition in their
    Allen-Cahn run, i.e. ``init_scale={"pde": 1.0, "ic": 100.0}``. The draws
    come from ``key``, split once per weighted term in the residuals' order.

    L-BFGS: frozen (the authors' 10k L-BFGS steps keep the weights fixed): stop
    calling ``update`` and minimise the fixed objective built from the last
    weights (see :class:`optax_invloss.PointWeightingMethod`).

    Bad values: a NaN or infinite residual (or an out-of-range index inside
    ``jit``) skips the update: the weights, the optimizer's state and the step
    counter keep their values and ``skipped_updates`` goes up by one.
    With ``indices``, only the batch's weights get a gradient; an optimizer with
    momentum (Adam) still moves the others by their momentum, as a dense
    PyTorch optimizer would.

    Args:
      learning_rate: learning rate of the default optimizer,
        ``optax.adam(learning_rate, b1=0.99)`` (the authors' settings). Must be
        > 0. Ignored when ``optimizer`` is given.
      optimizer: an Optax gradient transformation for the weights (it minimises
        the negated loss); ``None`` means the default above.
      key: PRNG key (or int seed) for the uniform initial weights.
      init_scale: the upper end :math:`s` of :math:`U(0, s)`: one number for
        every term, or a mapping of term names to numbers (missing terms: 1).
      terms: the names of the terms to weight; ``None`` (default) weights every
        term, as the paper does.

    Returns:
      A :class:`optax_invloss.PointWeightingMethod` whose ``loss`` is
      :math:`\frac1N \sum_j (\lambda_j r_j)^2` per term. ``update(residuals,
      state, *, indices=None)`` (see :class:`optax_invloss.PointWeightingMethod`).

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import optax_invloss
      >>> method = optax_invloss.self_adaptive(optimizer=optax.sgd(1.0))
      >>> residuals = {"pde": jnp.asarray([1.0, 0.0, 2.0])}
      >>> state = method.init(residuals)
      >>> lam = state.point_weights["pde"]  # U(0, 1) draws
      >>> weights, state = method.update(residuals, state)
      >>> print(bool(jnp.all(weights["pde"] == lam)))  # this step's weights
      True
      >>> step = state.point_weights["pde"] - lam  # 2 lam r^2 / 3, by ascent
      >>> print(jnp.allclose(step, 2 * lam * residuals["pde"] ** 2 / 3))
      True

    References:
      McClenny and Braga-Neto, `Self-adaptive physics-informed neural networks
      using a soft attention mechanism <https://arxiv.org/abs/2009.04544>`_,
      Journal of Computational Physics 474, 2023.
    """
    _checks.check_positive("learning_rate", learning_rate)
    terms = _pointwise.check_terms(terms)
    _pointwise.check_init_scale(init_scale, terms)
    if optimizer is None:
        optimizer = optax.adam(learning_rate, b1=0.99)
    base_key = _relobralo._typed_key(key)
    name = "self_adaptive"

    def scale_of(term: str) -> float:
        if isinstance(init_scale, Mapping):
            return float(init_scale.get(term, 1.0))
        return float(init_scale)

    def inner_treedef(weights):
        return jax.tree.structure(jax.eval_shape(optimizer.init, weights))

    def init(residuals):
        selected = _pointwise.selected_terms(residuals, terms, method=name)
        if isinstance(init_scale, Mapping):
            extra = [t for t in init_scale if t not in selected]
            if extra:
                raise ValueError(
                    f"{name}: init_scale names {extra[0]!r}, which is not a "
                    f"weighted term; the weighted terms are "
                    f"{', '.join(map(repr, selected))}."
                )
        keys = jax.random.split(base_key, len(selected))
        weights = {
            n: scale_of(n) * jax.random.uniform(k, shape, _pointwise.state_dtype(dtype))
            for k, (n, (shape, dtype)) in zip(keys, selected.items(), strict=True)
        }
        return SelfAdaptiveState(
            point_weights=weights,
            point_weight_optimizer_state=tuple(
                jax.tree.leaves(optimizer.init(weights))
            ),
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
        weights = state.point_weights
        descent = {}  # gradient of the negated loss, which the optimizer minimises
        for n, r in batch.residuals.items():
            idx = batch.indices[n]
            lam = _pointwise.gather(weights[n], idx)
            ascent = 2.0 * lam * r**2 / r.size
            descent[n] = -_pointwise.scatter_add(weights[n], idx, ascent)
        inner_state = jax.tree.unflatten(
            inner_treedef(weights), state.point_weight_optimizer_state
        )
        updates, inner_state = optimizer.update(descent, inner_state, weights)
        new_state = state._replace(
            point_weights=optax.apply_updates(weights, updates),
            point_weight_optimizer_state=tuple(jax.tree.leaves(inner_state)),
        )
        out = _pointwise.weights_out(residuals, weights, batch)
        return out, _base.keep_or_skip(batch.ok, new_state, state)

    return _pointwise.PointWeightingMethod(
        init, update, functools.partial(_pointwise.pointwise_loss, power=2)
    )
