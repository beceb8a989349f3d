"""Keeping a line-search optimizer's state consistent with the weights it runs on.

A line search (the zoom line search of ``optax.lbfgs``, a backtracking one)
caches the value and gradient of the objective at the last iterate, and
L-BFGS keeps curvature pairs of gradient differences; both belong to one
objective. When the weights change, the objective is a new function: these
helpers clear what belongs to the old one.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base

# The default relative change of a weight below which L-BFGS keeps its memory.
WEIGHT_RTOL = 1e-4


def _has_value_cache(x) -> bool:
    fields = getattr(x, "_fields", ())
    return isinstance(x, tuple) and "value" in fields and "grad" in fields


def _is_resettable(x) -> bool:
    return isinstance(x, optax.ScaleByLBFGSState) or _has_value_cache(x)


def has_value_cache(opt_state: Any) -> bool:
    """Whether ``opt_state`` holds a line search's cached value and gradient."""
    leaves = jax.tree.leaves(opt_state, is_leaf=_has_value_cache)
    return any(_has_value_cache(x) for x in leaves)


def _reset_one(x):
    if isinstance(x, optax.ScaleByLBFGSState):
        # Exactly the state init gives: count 0, no curvature pairs.
        return jax.tree.map(jnp.zeros_like, x)
    if _has_value_cache(x):
        fresh = {
            "value": jnp.full_like(x.value, jnp.inf),
            "grad": jax.tree.map(jnp.zeros_like, x.grad),
        }
        if "learning_rate" in x._fields:  # the line searches start from 1
            fresh["learning_rate"] = jnp.ones_like(x.learning_rate)
        return x._replace(**fresh)
    return x


def _clear_cache(x):
    if _has_value_cache(x):
        return x._replace(
            value=jnp.full_like(x.value, jnp.inf),
            grad=jax.tree.map(jnp.zeros_like, x.grad),
        )
    return x


def reset_lbfgs(opt_state: Any) -> Any:
    """An optimizer state with its L-BFGS memory and line-search cache cleared.

    Every ``optax.ScaleByLBFGSState`` in ``opt_state`` is set to what
    ``optax.scale_by_lbfgs`` ``init`` gives (``count`` 0 and zero curvature
    pairs, so no pair from before the reset is used again), and every state with
    ``value`` and ``grad`` fields (the line searches of ``optax.lbfgs``) gets
    ``value = inf``, ``grad = 0`` and ``learning_rate = 1``. Those two fields
    are what :func:`optax.value_and_grad_from_state` reads; with an infinite
    value it recomputes value and gradient with the ``value_fn`` it is given, so
    the first line search after the reset compares values of the new objective
    only. Everything else (a weighting state inside it, for instance) is left
    alone. Only the structure of the state is inspected, so this works under
    ``jax.jit``; for a reset on a traced condition use
    ``optax.tree.where(flag, reset_lbfgs(s), s)``.

    Args:
      opt_state: an Optax optimizer state: of ``optax.lbfgs()``, of an
        optimizer built with :func:`optax_invloss.with_weighting`, or any state
        holding one.

    Returns:
      The state, same structure and dtypes, with the L-BFGS parts reset.

    Examples:
      >>> import jax.numpy as jnp, optax, optax_invloss
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> opt = optax.lbfgs()
      >>> x = jnp.zeros(2)
      >>> state = opt.init(x)
      >>> value, grad = optax.value_and_grad_from_state(f)(x, state=state)
      >>> _, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
      >>> state = optax_invloss.reset_lbfgs(state)
      >>> print(int(state[0].count), float(optax.tree.get(state, "value")))
      0 inf
    """
    return jax.tree.map(_reset_one, opt_state, is_leaf=_is_resettable)


def clear_cache_if_moved(
    opt_state: Any, old: _base.Weights, new: _base.Weights
) -> tuple[Any, jax.Array]:
    """``opt_state`` with its cached value and gradient cleared if the weights moved.

    Returns the state and whether any weight changed (traced).
    """
    moved = jnp.any(_base.stack(old) != _base.stack(new))
    cleared = jax.tree.map(_clear_cache, opt_state, is_leaf=_has_value_cache)
    return optax.tree.where(moved, cleared, opt_state), moved


def reset_for_new_weights(
    opt_state: Any,
    old: _base.Weights,
    new: _base.Weights,
    weight_rtol: float = WEIGHT_RTOL,
) -> tuple[Any, jax.Array]:
    """``opt_state`` made consistent with the objective of the ``new`` weights.

    Unchanged weights: the state as it is. A change of at most ``weight_rtol``
    (relative, per term): the cached value and gradient are cleared, the
    curvature pairs kept. A larger change: :func:`reset_lbfgs`. Returns the state
    and whether the weights changed at all (the objective is a new function).
    """
    a, b = _base.stack(old), _base.stack(new)
    large = jnp.any(jnp.abs(b - a) > weight_rtol * jnp.abs(a))
    opt_state, moved = clear_cache_if_moved(opt_state, old, new)
    return optax.tree.where(large, reset_lbfgs(opt_state), opt_state), moved


def check_weight_rtol(weight_rtol: float) -> None:
    if isinstance(weight_rtol, bool) or not isinstance(weight_rtol, (int, float)):
        raise TypeError(
            f"weight_rtol must be a number >= 0, got weight_rtol = {weight_rtol!r}."
        )
    if not weight_rtol >= 0:
        raise ValueError(
            f"weight_rtol must be >= 0, got weight_rtol = {weight_rtol!r}."
        )


def reset_on_new_weights(
    optimizer: optax.GradientTransformationExtraArgs,
    *,
    weight_rtol: float = WEIGHT_RTOL,
) -> optax.GradientTransformationExtraArgs:
    """Resets L-BFGS whenever the weights of a ``with_weighting`` optimizer change.

    ``optimizer`` is an optimizer built with
    :func:`optax_invloss.with_weighting` around ``optax.lbfgs()`` (or another
    line-search optimizer). :func:`optax_invloss.with_weighting` itself clears
    the line search's cached value and gradient whenever the weights change
    (they belong to the old objective); this wrapper also drops the curvature
    memory when a weight changes by more than ``weight_rtol`` (relative, in any
    term), through :func:`reset_lbfgs`: the next step starts a fresh L-BFGS run
    on the new objective. A smaller change (rounding in a capped projection, an
    average that has settled) keeps the curvature pairs.

    This is the ``"refreshed"`` policy of :func:`optax_invloss.run_lbfgs` for
    training loops of your own (plain Optax, or Flax ``nnx.Optimizer``); the
    weighting method's own schedule decides when the weights change, so give it
    one (``inverse_loss(update_every=50)``, say): weights that change at every
    step reset L-BFGS at every step, which leaves a steepest-descent line search.

    In each step, compute value and gradient with the weights *in the state*
    (:func:`optax_invloss.loss_weights`), and pass the same objective as
    ``value_fn``; the state, the updates and the keyword arguments are
    otherwise exactly those of ``optimizer``.

    Args:
      optimizer: an optimizer from :func:`optax_invloss.with_weighting`.
      weight_rtol: the relative change of a weight above which L-BFGS restarts;
        >= 0 (0: any change restarts it).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the same state.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, optax_invloss
      >>> def loss_fn(p):
      ...     return {"a": jnp.sum((p - 1.0) ** 2), "b": 0.1 * jnp.sum(p**2)}
      >>> params = jnp.asarray([2.0, -1.0])
      >>> tx = optax_invloss.reset_on_new_weights(optax_invloss.with_weighting(
      ...     optax.lbfgs(), optax_invloss.inverse_loss(update_every=5),
      ...     losses=jax.eval_shape(loss_fn, params)))
      >>> opt_state = tx.init(params)
      >>> @jax.jit
      ... def step(params, opt_state):
      ...     value_fn = optax_invloss.weighted_objective(
      ...         loss_fn, optax_invloss.loss_weights(opt_state))
      ...     value, grad = optax.value_and_grad_from_state(value_fn)(
      ...         params, state=opt_state)
      ...     updates, opt_state = tx.update(
      ...         grad, opt_state, params, value=value, grad=grad,
      ...         value_fn=value_fn, losses=loss_fn(params))
      ...     return optax.apply_updates(params, updates), opt_state
      >>> for _ in range(3):
      ...     params, opt_state = step(params, opt_state)
      >>> # The weights changed at the first step, so L-BFGS restarted there.
      >>> print(int(opt_state.optimizer_state[0].count))
      2
    """
    check_weight_rtol(weight_rtol)

    def init_fn(params):
        state = optimizer.init(params)
        _base.find_weighting_state(state)  # raises if there is none
        return state

    def update_fn(updates, state, params=None, **extra_args):
        old = _base.find_weighting_state(state).loss_weights
        updates, new_state = optimizer.update(updates, state, params, **extra_args)
        new = _base.find_weighting_state(new_state).loss_weights
        new_state, _ = reset_for_new_weights(new_state, old, new, weight_rtol)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_MISSING = re.compile(
    r"missing \d+ required keyword-only arguments?: .*'(value|grad|value_fn)'"
)


def update_inner(optimizer, updates, state, params, kwargs):
    """``optimizer.update``, with a pointer to the right call for a line search.

    A line-search optimizer updated like Adam (no ``value``, ``grad`` and
    ``value_fn``) raises Optax's ``TypeError`` about missing keyword-only
    arguments; it is re-raised saying what to do instead.
    """
    try:
        return optimizer.update(updates, state, params, **kwargs)
    except TypeError as err:
        if not _MISSING.search(str(err)):
            raise
        raise TypeError(
            "The optimizer wrapped by with_weighting has a line search (optax.lbfgs, "
            "or a chain with one): its update needs value=, grad= and value_fn= of "
            "the weighted objective, which an Adam-style update(grads, opt_state, "
            "params, losses=...) does not give. For an L-BFGS phase call "
            "optax_invloss.run_lbfgs(loss_fn, params, opt_state, iterations=...). In "
            "a loop of your own, build value_fn = optax_invloss.weighted_objective("
            "loss_fn, optax_invloss.loss_weights(opt_state)) and pass value=, grad= "
            f"and value_fn= of it to update. (Optax: {err})"
        ) from err
