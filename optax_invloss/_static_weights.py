"""Fixed loss weights, optionally scheduled: the hand-tuned baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _checks


class StaticWeightsState(NamedTuple):
    """State of :func:`static_weights`.

    Attributes:
      loss_weights: the weights for the next step, in the losses' structure
        (scalars in the state dtype: the losses' dtype, at least float32):
        ``weight * schedule(weighting_step)`` for each term.
      weighting_step: number of accepted updates; the schedules are evaluated at
        it. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def _by_name(tree: Any, argname: str) -> dict[str, Any]:
    names = dict(zip(_base.term_names(tree), jax.tree.leaves(tree), strict=True))
    if not names:
        raise ValueError(f"{argname} must name at least one loss term; got {tree!r}.")
    return names


def _check_weight(name: str, value: Any) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The weight of term {name} in static_weights(weights=...) must be a "
            f"number, got {value!r}."
        ) from error
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(
            f"The weight of term {name} in static_weights(weights=...) must be a "
            f"finite number >= 0, got {number!r}."
        )


def _match(given: dict[str, Any], losses: Any, argname: str, *, all_terms: bool):
    """Checks the terms named in ``given`` against the losses' terms."""
    terms = _base.term_names(losses)
    listed = ", ".join(terms)
    extra = [name for name in given if name not in terms]
    if extra:
        raise ValueError(
            f"{argname} names the term {extra[0]}, which is not among the loss "
            f"terms {listed}."
        )
    missing = [name for name in terms if name not in given]
    if all_terms and missing:
        raise ValueError(
            f"{argname} has no weight for the loss term {missing[0]}; give every "
            f"term a weight (loss terms: {listed})."
        )


def static_weights(
    weights: Any,
    schedules: Any = None,
) -> _base.WeightingMethod:
    r"""Fixed loss weights, each optionally multiplied by an Optax schedule.

    The weight of term :math:`i` after :math:`t` accepted updates is

    .. math::

      w_i(t) = c_i \, m_i(t),

    with :math:`c_i` the weight given in ``weights`` and :math:`m_i` the schedule
    given for that term in ``schedules`` (:math:`m_i \equiv 1` for a term without
    one). The weights are used as given: they are **not normalised**, so they sum
    to whatever they sum to, and ``static_weights({"pde": 1.0, "bc": 1.0})`` is the
    plain unweighted sum of the losses. One number instead of a pytree is the
    weight of every term, whatever the terms: ``static_weights(1.0)`` is the
    plain sum for any losses.

    This is the hand-tuned baseline that adaptive methods are compared with
    (``{"pde": 1.0, "bc": 100.0}``, say), with the same ``(init, update)`` shape
    and the same state fields, so that one training step serves every method.
    A schedule warms a weight up or down: ``optax.linear_schedule(0.0, 1.0,
    1000)`` on the boundary term raises its weight from 0 to :math:`c_i` over the
    first 1000 steps.

    First steps. ``init`` gives :math:`c_i m_i(0)`; the update at step :math:`t`
    (counting from 0) gives the weights for the next step, :math:`c_i m_i(t+1)`,
    so the weights read from the state before step :math:`k` are always
    :math:`c_i m_i(k)`. The loss values are not used, except to be checked.

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the weights and the step (so the schedules too) hold, and
    ``skipped_updates`` goes up by one.

    Args:
      weights: the weight of each loss term: a pytree (usually a dict by name) of
        non-negative numbers with exactly the terms of the losses, or one
        non-negative number, the weight of every term. In a pytree, a term
        missing or a term too many raises ValueError at ``init``, naming the
        term; there is no silent default weight of 1.
      schedules: optional pytree mapping some of the terms (the same names and
        nesting as the losses) to Optax schedules, functions ``step ->
        multiplier`` such as ``optax.linear_schedule``; the schedule's value
        multiplies that term's weight. Terms without a schedule keep their
        weight. ``None`` means no schedules.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights are not
      normalised.

    Examples:
      >>> import jax.numpy as jnp, optax, optax_invloss
      >>> method = optax_invloss.static_weights(
      ...     {"pde": 1.0, "bc": 100.0},
      ...     schedules={"bc": optax.linear_schedule(0.0, 1.0, transition_steps=4)})
      >>> losses = {"pde": jnp.asarray(0.3), "bc": jnp.asarray(0.01)}
      >>> state = method.init(losses)
      >>> for _ in range(3):
      ...     weights, state = method.update(losses, state)
      ...     print({k: float(v) for k, v in weights.items()})
      {'bc': 25.0, 'pde': 1.0}
      {'bc': 50.0, 'pde': 1.0}
      {'bc': 75.0, 'pde': 1.0}

      A term left out is an error, not a weight of 1:

      >>> optax_invloss.static_weights({"pde": 1.0}).init(losses)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: weights has no weight for the loss term ['bc']; ...

      One number weights every term alike:

      >>> method = optax_invloss.static_weights(1.0)  # the plain sum
      >>> weights, _ = method.update(losses, method.init(losses))
      >>> print({k: float(v) for k, v in weights.items()})
      {'bc': 1.0, 'pde': 1.0}
    """
    every = None  # the weight of every term, when one number is given
    if _checks.is_real(weights) or isinstance(weights, (str, bytes, bool)):
        if not (_checks.is_real(weights) and math.isfinite(weights) and weights >= 0):
            raise ValueError(
                "weights must be a finite number >= 0 (the weight of every term) "
                f"or a pytree of them, got weights = {weights!r}."
            )
        every, given = float(weights), {}
    else:
        given = _by_name(weights, "weights")
        for name, value in given.items():
            _check_weight(name, value)
        given = {name: float(value) for name, value in given.items()}
    scheduled: dict[str, Callable] = {}
    if schedules is not None:
        if jax.tree_util.treedef_is_leaf(jax.tree.structure(schedules)):
            raise ValueError(
                "schedules must be a pytree (a dict, say) mapping loss terms to "
                f"Optax schedules, got schedules = {schedules!r}."
            )
        scheduled = _by_name(schedules, "schedules")
        for name, schedule in scheduled.items():
            if not callable(schedule):
                raise ValueError(
                    f"The schedule of term {name} in static_weights(schedules=...) "
                    f"must be a function step -> multiplier (an Optax schedule), "
                    f"got {schedule!r}."
                )
        extra = [name for name in scheduled if name not in given]
        if extra and every is None:
            raise ValueError(
                f"schedules names the term {extra[0]}, which has no weight in "
                f"weights (terms with weights: {', '.join(given)})."
            )

    def weights_at(step, losses, dtype):
        vector = []
        for name in _base.term_names(losses):
            w = jnp.asarray(given.get(name, every), dtype)
            if name in scheduled:
                # The step as a float of the state's dtype, so that the schedule
                # is computed at that precision (float64 under x64).
                w = w * jnp.asarray(scheduled[name](step.astype(dtype)), dtype)
            vector.append(w)
        return jnp.stack(vector)

    def init(losses):
        _base.check_losses(losses)
        if every is None:
            _match(given, losses, "weights", all_terms=True)
        _match(scheduled, losses, "schedules", all_terms=False)
        dtype = _base.state_dtype(losses)
        like = _base.zeros_like_losses(losses, dtype)
        return StaticWeightsState(
            loss_weights=_base.unstack(
                weights_at(_base.counter(), losses, dtype), like
            ),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, **inputs):
        del inputs
        _, ok = _base.prepare(losses, state, StaticWeightsState)
        dtype = jax.tree.leaves(state.loss_weights)[0].dtype
        next_step = optax.safe_increment(state.weighting_step)
        return _base.finish(
            losses, state, ok, loss_weights=weights_at(next_step, losses, dtype)
        )

    return _base.WeightingMethod(init, update)
