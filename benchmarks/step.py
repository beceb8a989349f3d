"""The training step of every benchmark, one per method family.

:func:`weighted_step` is the step :class:`benchmarks.train.Trainer` compiles and
the overhead benchmark times:

- a term weighting: one forward and one backward pass per step; the weights
  applied at a step are those already in the optimizer state
  (``optax_invloss.loss_weights(opt_state)``), and the losses of this step update
  them through :func:`optax_invloss.with_weighting`;
- a gradient aggregator: ``optax.chain(aggregator, optimizer)``, whose ``update``
  gets ``loss_fn=`` and computes the per-term gradients itself (one backward pass
  per term, on refresh steps only with ``update_every=K``; a plain gradient of the
  weighted sum with the stored weights in between), combines them, and hands the
  direction to the optimizer;
- a per-point weighting: the residuals computed once inside the differentiated
  function, the per-point weights updated from them and the method's weighted
  loss differentiated, as :class:`optax_invloss.PointWeightingMethod` describes.

:func:`draw_from_pool` and :func:`point_loss_fn` build its inputs for runs on a
fixed pool of points and for per-point methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_invloss as oil


def draw_from_pool(batch: Any, pool: Any) -> Callable:
    """``draw(key, pool) -> (batch, indices)``: a minibatch from a fixed pool.

    ``batch`` and ``pool`` are the shapes of one sample of the batch size and of
    the pool. Each term draws its batch's number of points from its pool
    without replacement; ``indices`` are their positions. When every term's pool
    is its batch (a fixed collocation set), the whole pool is the batch, in
    order, and ``indices`` is None.
    """
    sizes = {t: (pool[t].shape[0], batch[t].shape[0]) for t in batch}
    if all(n_pool == n for n_pool, n in sizes.values()):
        return lambda key, pool: (pool, None)

    def draw(key, pool):
        keys = dict(zip(sizes, jax.random.split(key, len(sizes)), strict=True))
        indices = {
            t: jax.random.choice(keys[t], n_pool, (n,), replace=False)
            for t, (n_pool, n) in sizes.items()
        }
        return {t: pool[t][i] for t, i in indices.items()}, indices

    return draw


def point_loss_fn(problem, settings, method, residual_fn) -> Callable:
    """``point_loss(params, batch, point_state, indices) -> (losses, point_state,
    point_weights)``: the per-point method's step inside the differentiated
    function (its term losses, ``k`` times for a term of ``k`` pieces under
    ``sum_pieces``, as :meth:`Problem.loss_terms`)."""
    scale = {
        t: problem.pieces.get(t, 1) if settings.sum_pieces else 1
        for t in problem.term_names
    }

    def point_loss(params, batch, point_state, indices):
        residuals = residual_fn(params, batch)
        weights, point_state = method.update(residuals, point_state, indices=indices)
        losses = method.loss(residuals, weights)
        losses = {t: scale.get(t, 1) * v for t, v in losses.items()}
        return losses, point_state, weights

    return point_loss


def weighted_step(
    tx: optax.GradientTransformationExtraArgs,
    loss_fn: Callable,
    residual_fn: Callable,
    sample: Callable,
    *,
    aggregator: bool = False,
    point_loss: Callable | None = None,
    draw: Callable | None = None,
) -> Callable:
    """The training step every benchmark times: ``(carry, key) -> (carry, out)``.

    ``carry = (params, opt_state)``, or ``(params, opt_state, extra)`` with
    ``extra`` a dict that may hold a fixed ``"pool"`` of points (the batch is
    then ``draw(key, pool) -> (batch, indices)``, see :class:`Trainer`) and a
    per-point method's ``"point_state"``; otherwise the batch is ``sample(key)``.
    ``out = (losses, weights)``, the weights applied at the step.

    - Term weighting (the default; ``tx`` from ``with_weighting``): one forward
      and one backward pass of the weighted sum with the weights in the state;
      the same forward pass's losses update them, and ``loss_fn(params,
      batch)``, ``residual_fn(params, points)`` and the points go to
      ``tx.update`` for the gradient-based methods.
    - ``aggregator`` (``tx = optax.chain(aggregator, optimizer)``): ``tx.update``
      gets ``loss_fn=`` and computes the per-term gradients itself (their
      forward computation shared with the losses' under ``jit``); the weights
      are the aggregator's ``w`` of this step (none for M-ConFIG).
    - ``point_loss`` (``tx`` the optimizer): ``point_loss(params, batch,
      point_state, indices) -> (losses, point_state, point_weights)`` inside the
      differentiated function; the weights are each term's mean per-point weight.
    """

    def step(carry, key):
        params, opt_state, *rest = carry
        extra = dict(rest[0]) if rest else {}
        if "pool" in extra:
            batch, indices = draw(key, extra["pool"])
        else:
            batch, indices = sample(key), None
        if point_loss is not None:

            def total(params):
                losses, state, point_weights = point_loss(
                    params, batch, extra["point_state"], indices
                )
                return sum(jax.tree.leaves(losses)), (losses, state, point_weights)

            (_, (losses, state, point_weights)), grads = jax.value_and_grad(
                total, has_aux=True
            )(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            extra["point_state"] = state
            weights = {t: jnp.mean(w) for t, w in point_weights.items()}
        elif aggregator:
            losses = loss_fn(params, batch)
            updates, opt_state = tx.update(
                params, opt_state, params, loss_fn=lambda p: loss_fn(p, batch)
            )
            weights = _aggregation_weights(opt_state, losses)
        else:
            weights = oil.loss_weights(opt_state)

            def total(params):
                losses = loss_fn(params, batch)
                return oil.weighted_sum(losses, weights), losses

            (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
            updates, opt_state = tx.update(
                grads,
                opt_state,
                params,
                losses=losses,
                loss_fn=lambda p: loss_fn(p, batch),
                residual_fn=residual_fn,
                points=batch,
            )
        params = optax.apply_updates(params, updates)
        carry = (params, opt_state, extra) if rest else (params, opt_state)
        return carry, (losses, weights)

    return step


def _aggregation_weights(opt_state, losses) -> dict:
    """The aggregator's weights by term, or ``{}`` when its state has none."""
    try:
        w = oil.aggregation_weights(opt_state)
    except ValueError:  # M-ConFIG: an optimizer, no weights
        return {}
    leaves = jax.tree.leaves(losses)
    if w.shape != (len(leaves),):  # built without num_terms
        return {}
    return jax.tree.unflatten(jax.tree.structure(losses), list(w))
