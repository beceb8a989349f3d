"""One Optax optimizer state that carries the weighting state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _line_search


class WeightedOptimizerState(NamedTuple):
    """State of :func:`with_weighting`.

    Attributes:
      optimizer_state: the state of the wrapped Optax optimizer.
      weighting_state: the state of the weighting method; its ``loss_weights`` are
        the weights to apply at the next step (read them with
        :func:`optax_invloss.loss_weights`).
    """

    optimizer_state: Any
    weighting_state: Any


def with_weighting(
    optimizer: optax.GradientTransformation,
    method: _base.WeightingMethod,
    losses: Any,
    *,
    weighting_state: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an Optax optimizer so that its state also carries a loss weighting.

    The wrapped optimizer's ``update(grads, state, params, *, losses, **extra)``
    updates the weighting from ``losses`` plus the keyword inputs the method
    declares in ``method.inputs`` (such as ``loss_fn`` for gradient-based
    methods; ``params`` is the optimizer's own argument) and hands ``grads``,
    ``params`` and every other keyword to ``optimizer`` unchanged. ``losses`` is
    never forwarded, so ``optax.lbfgs``, whose line search rejects keywords its
    ``value_fn`` does not name, can be wrapped.

    The training step computes the losses once, takes the gradient of the
    weighted total with the weights already in the state, and passes the same
    losses to ``update``, which makes the weights for the next step::

      def step(params, opt_state, batch):
          weights = optax_invloss.loss_weights(opt_state)

          def total(p):
              losses = loss_terms(p, batch)  # {"pde": ..., "bc": ...}
              return optax_invloss.weighted_sum(losses, weights), losses

          (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
          updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
          return optax.apply_updates(params, updates), opt_state

    Args:
      optimizer: any Optax gradient transformation (``optax.adam(1e-3)``, an
        ``optax.chain``, ``optax.inject_hyperparams(...)``, ``optax.lbfgs()``).
      method: a weighting method, e.g. :func:`optax_invloss.inverse_loss`.
      losses: an example of the losses pytree, to fix its structure and dtypes;
        only structure, shapes and dtypes are read, so ``{"pde": 0.0, "bc":
        0.0}`` or ``jax.eval_shape(loss_terms, params, batch)`` will do.
      weighting_state: where ``init`` starts the weighting from: a state of
        ``method`` (or an Optax state or ``nnx.Optimizer`` holding one), for
        example the Adam phase's optimizer state when this wraps
        ``optax.lbfgs()``. ``None`` (default): ``method.init(losses)``.

    With a line-search optimizer (``optax.lbfgs()``), pass ``value=``,
    ``grad=`` and ``value_fn=`` of the weighted objective to ``update`` (see
    :func:`optax_invloss.weighted_objective`); without them ``update`` raises a
    ``TypeError`` that says so. Whenever the weights change, the line search's
    cached value and gradient (those of the old objective) are cleared, so
    :func:`optax.value_and_grad_from_state` recomputes them;
    :func:`optax_invloss.reset_on_new_weights` also restarts the curvature
    memory.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`WeightedOptimizerState`.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optax_invloss
      >>> def loss_terms(p):
      ...     return {"data": jnp.sum((p - 1.0) ** 2), "reg": 1e-3 * jnp.sum(p**2)}
      >>> params = jnp.zeros(3)
      >>> tx = optax_invloss.with_weighting(
      ...     optax.adam(1e-2), optax_invloss.inverse_loss(),
      ...     losses=jax.eval_shape(loss_terms, params))
      >>> opt_state = tx.init(params)
      >>> @jax.jit
      ... def step(params, opt_state):
      ...     weights = optax_invloss.loss_weights(opt_state)
      ...     def total(p):
      ...         losses = loss_terms(p)
      ...         return optax_invloss.weighted_sum(losses, weights), losses
      ...     (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
      ...     updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
      ...     return optax.apply_updates(params, updates), opt_state
      >>> for _ in range(3):
      ...     params, opt_state = step(params, opt_state)
      >>> w = optax_invloss.loss_weights(opt_state)
      >>> print(f"data {float(w['data']):.2f}, reg {float(w['reg']):.2f}")
      data 0.05, reg 0.95
    """
    optimizer = optax.with_extra_args_support(optimizer)
    method_inputs = _base.declared_inputs(method)
    _base.check_losses(losses, argname="with_weighting(losses=...)")
    start = None
    if weighting_state is not None:
        start = _start_from(weighting_state, jax.eval_shape(method.init, losses))

    def init_fn(params):
        return WeightedOptimizerState(
            optimizer_state=optimizer.init(params),
            weighting_state=method.init(losses) if start is None else start,
        )

    def update_fn(updates, state, params=None, *, losses=None, **extra_args):
        if losses is None:
            raise TypeError(
                "The optimizer returned by with_weighting needs the loss terms of "
                "this step: call update(grads, opt_state, params, losses=losses)."
            )
        method_kwargs = {k: v for k, v in extra_args.items() if k in method_inputs}
        if "params" in method_inputs:
            method_kwargs["params"] = params
        optimizer_kwargs = {
            k: v for k, v in extra_args.items() if k not in method_kwargs
        }
        _, weighting_state = method.update(
            losses, state.weighting_state, **method_kwargs
        )
        updates, optimizer_state = _line_search.update_inner(
            optimizer, updates, state.optimizer_state, params, optimizer_kwargs
        )
        if _line_search.has_value_cache(optimizer_state):
            # The cached value and gradient are of the old weights' objective.
            optimizer_state, _ = _line_search.clear_cache_if_moved(
                optimizer_state,
                state.weighting_state.loss_weights,
                weighting_state.loss_weights,
            )
        return updates, WeightedOptimizerState(optimizer_state, weighting_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _start_from(given: Any, fresh: Any) -> Any:
    """The weighting state found in ``given``, checked against ``fresh``'s shape."""
    found = _base.find_weighting_state(given)
    same = type(found) is type(fresh) and jax.tree.structure(
        found
    ) == jax.tree.structure(fresh)
    if not same:
        raise ValueError(
            "with_weighting(weighting_state=...) must hold a state of the same "
            f"method and loss terms as method.init(losses) ({type(fresh).__name__} "
            f"with structure {jax.tree.structure(fresh)}); got "
            f"{type(found).__name__} with structure {jax.tree.structure(found)}."
        )
    return jax.tree.map(lambda x, like: jnp.asarray(x, like.dtype), found, fresh)
