"""The shape every weighting method shares, and the helpers that keep it.

A weighting method is a pair of pure functions, ``(init, update)``, in the style of
an Optax gradient transformation::

  state = method.init(losses)
  weights, state = method.update(losses, state, **inputs)

``losses`` is a pytree of scalar floating-point arrays (usually a dict by name) and
``weights`` come back in the same structure. Every state is a ``NamedTuple`` with at
least the fields ``loss_weights`` (the current weights, in the losses' structure),
``weighting_step`` (accepted updates so far) and ``skipped_updates`` (updates refused
because a loss was NaN, infinite or negative). The helpers below are the one place
where losses are validated, stacked into a vector, guarded against bad values and
turned back into a pytree; every method goes through them.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

Losses = Any  # a pytree of scalar floating-point arrays
Weights = Any  # the same pytree structure as ``Losses``


class InitFn(Protocol):
    def __call__(self, losses: Losses) -> NamedTuple:
        """Returns the initial state for losses of this structure and dtype."""


class UpdateFn(Protocol):
    def __call__(
        self, losses: Losses, state: NamedTuple, **inputs: Any
    ) -> tuple[Weights, NamedTuple]:
        """Returns the weights for these losses and the new state."""


class WeightingMethod(NamedTuple):
    """A loss weighting method: pure functions ``(init, update)`` and its inputs.

    Attributes:
      init: ``init(losses) -> state``. Only the structure, shapes and dtypes of
        ``losses`` are used, so ``jax.ShapeDtypeStruct`` leaves (for example from
        ``jax.eval_shape``) and Python floats work as well as arrays.
      update: ``update(losses, state, **inputs) -> (weights, state)``. Keyword inputs
        that a method does not use are ignored, so one training step can drive any
        method.
      inputs: the names of the keyword inputs that ``update`` uses:
        ``frozenset({"params", "loss_fn"})`` for most gradient-based methods,
        empty (the default) for the methods that only look at the loss values.
        :func:`optax_invloss.with_weighting` hands ``update`` exactly these
        (``params`` from the optimizer's own argument) and every other keyword
        to the optimizer it wraps. A method of your own that needs inputs must
        declare them here.
    """

    init: InitFn
    update: UpdateFn
    inputs: frozenset[str] = frozenset()


def declared_inputs(method: Any) -> frozenset[str]:
    """``method.inputs``, checked: raises TypeError unless a set of str."""
    inputs = getattr(method, "inputs", None)
    if inputs is None or not hasattr(method, "init") or not hasattr(method, "update"):
        raise TypeError(
            "method must be a WeightingMethod (init, update, inputs), such as "
            f"optax_invloss.inverse_loss(); got {type(method).__name__}."
        )
    if not isinstance(inputs, (frozenset, set)) or not all(
        isinstance(name, str) for name in inputs
    ):
        raise TypeError(
            "method.inputs must be a frozenset of the names of the keyword inputs "
            f"that method.update uses, got method.inputs = {inputs!r}."
        )
    return frozenset(inputs)


# ----------------------------------------------------------------------------------
# Validation and stacking.


def term_name(path, *, short: bool = False) -> str:
    """The name of the loss term at ``path`` (from ``tree_flatten_with_path``).

    The one way terms are named, in error messages and arguments alike: the path
    as ``jax.tree_util.keystr`` writes it (``"['bc']['left']"``), or with
    ``short=True`` the keys along it joined by ``/`` (``"bc/left"``). The root of
    a pytree that is a single loss is ``"<root>"``.
    """
    separator = "/" if short else ""
    name = jax.tree_util.keystr(tuple(path), simple=short, separator=separator)
    return name if name else "<root>"


def term_names(tree: Any, *, short: bool = False) -> list[str]:
    """Each leaf's :func:`term_name`, in leaf order."""
    leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [term_name(path, short=short) for path, _ in leaves_with_path]


def term_index(losses: Any, name: str, *, argname: str, method: str) -> int:
    """The leaf index of the term called ``name`` (short or full); ValueError else."""
    short = term_names(losses, short=True)
    for i, full in enumerate(term_names(losses)):
        if name in (short[i], full):
            return i
    raise ValueError(
        f"{method}: {argname} = {name!r} is not a loss term; the terms are "
        f"{', '.join(repr(n) for n in short)}."
    )


def _leaf_shape_dtype(leaf):
    if isinstance(leaf, (bool, int)) and not isinstance(leaf, float):
        return (), jnp.asarray(leaf).dtype
    if isinstance(leaf, float):
        return (), jnp.asarray(leaf).dtype
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        leaf = jnp.asarray(leaf)
        shape, dtype = leaf.shape, leaf.dtype
    return tuple(shape), jnp.dtype(dtype)


def check_losses(losses: Losses, *, argname: str = "losses") -> None:
    """Raises ValueError unless ``losses`` is a non-empty pytree of float scalars.

    The message names the offending term by its path in the pytree.
    """
    leaves_with_path = jax.tree_util.tree_flatten_with_path(losses)[0]
    if not leaves_with_path:
        raise ValueError(
            f"{argname} must hold at least one loss term; got an empty pytree "
            f"{losses!r}."
        )
    for path, leaf in leaves_with_path:
        shape, dtype = _leaf_shape_dtype(leaf)
        if shape != ():
            raise ValueError(
                f"Loss term {term_name(path)} in {argname} has shape {shape}; each "
                "loss term must be a scalar. Reduce it first (e.g. jnp.mean of the "
                "squared residuals)."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"Loss term {term_name(path)} in {argname} has dtype {dtype}; loss "
                "terms must be floating point (float32, float64, bfloat16, ...)."
            )


def check_structure(losses: Losses, reference: Any, *, what: str) -> None:
    """Raises ValueError if ``losses`` and ``reference`` differ in structure."""
    got = jax.tree.structure(losses)
    expected = jax.tree.structure(reference)
    if got != expected:
        raise ValueError(
            f"The structure of losses does not match {what}.\n"
            f"  losses:   {got}\n  expected: {expected}\n"
            "The terms and their nesting are fixed when the state is created."
        )


def state_dtype(losses: Losses) -> jnp.dtype:
    """The dtype a method keeps its state in: the losses' dtype, at least float32.

    Low-precision losses (bfloat16, float16) are averaged and inverted in float32;
    the weights handed back are cast to each loss's own dtype.
    """
    # Python scalars are weakly typed: they do not widen the arrays' dtype, and
    # losses that are all Python floats get JAX's default float. Chosen by
    # width, without implicit promotion (which strict promotion forbids).
    dtypes = [
        _leaf_shape_dtype(leaf)[1]
        for leaf in jax.tree.leaves(losses)
        if not isinstance(leaf, float)
    ] or [jnp.asarray(0.0).dtype]
    widest = max(dtypes, key=lambda d: jnp.finfo(d).bits)
    return widest if jnp.finfo(widest).bits >= 32 else jnp.dtype(jnp.float32)


def stack(tree: Any, dtype=None) -> jax.Array:
    """The leaves of a pytree of scalars as one vector, in leaf order."""
    leaves = [jnp.asarray(leaf, dtype) for leaf in jax.tree.leaves(tree)]
    return jnp.stack(leaves)


def unstack(vector: jax.Array, like: Any) -> Any:
    """A vector back into the structure of ``like``, each leaf in ``like``'s dtype."""
    leaves, treedef = jax.tree.flatten(like)
    out = [
        vector[i].astype(_leaf_shape_dtype(leaf)[1]) for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def zeros_like_losses(losses: Losses, dtype) -> Any:
    """A pytree of scalar zeros in the losses' structure, all in ``dtype``."""
    return jax.tree.map(lambda _: jnp.zeros((), dtype), losses)


def equal_weights(losses: Losses, dtype, total: float = 1.0) -> Any:
    """Equal weights ``total / n`` in the losses' structure."""
    n = len(jax.tree.leaves(losses))
    return jax.tree.map(lambda _: jnp.asarray(total / n, dtype), losses)


def check_state(state: Any, kind: type) -> None:
    """Raises TypeError unless ``state`` is a ``kind`` (the state ``init`` returns).

    Catches ``method.update(losses, None)``, another method's state, and an
    optimizer state passed where the weighting state is meant.
    """
    if not isinstance(state, kind):
        hint = ""
        if state is not None and hasattr(state, "weighting_state"):
            hint = " (pass opt_state.weighting_state, not the optimizer's state)"
        raise TypeError(
            f"update expected a {kind.__name__}, the state that this method's "
            f"init(losses) returns{hint}; got {type(state).__name__}: "
            f"{_short_repr(state)}."
        )


def _short_repr(x: Any, limit: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prepare(
    losses: Losses, state: NamedTuple, kind: type
) -> tuple[jax.Array, jax.Array]:
    """The start of every ``update``: checks; returns ``(vector, ok)``.

    Checks that ``state`` is a ``kind`` (:func:`check_state`) and that the losses
    are scalar floats in the structure the state was made for. ``vector`` holds
    the losses in the state's dtype. ``ok`` is a traced boolean that is False
    when any loss is NaN, infinite or negative: such an update must not touch
    the state (see :func:`finish`).
    """
    check_state(state, kind)
    check_losses(losses)
    check_structure(losses, state.loss_weights, what="the losses given to init")
    dtype = jax.tree.leaves(state.loss_weights)[0].dtype
    vector = stack(losses, dtype)
    ok = jnp.all(jnp.isfinite(vector) & (vector >= 0))
    # Replace bad values so that no NaN or Inf flows through the (discarded) branch:
    # NaNs in an unselected branch would still poison reverse-mode gradients.
    vector = jnp.where(ok, vector, jnp.ones_like(vector))
    return vector, ok


def _is_stacked(value: Any, field: Any, losses: Losses) -> bool:
    """Whether ``value`` is ``field`` (a per-term field) stacked, one row a term."""
    if jax.tree.structure(field) != jax.tree.structure(losses):
        return False
    shape = getattr(value, "shape", None)
    leaf = jax.tree.leaves(field)[0]
    n = len(jax.tree.leaves(losses))
    return shape is not None and tuple(shape) == (n, *jnp.shape(leaf))


def stacked(losses: Losses, field: Any) -> Any:
    """A state field as :func:`finish` takes it: stacked if it is per term."""
    if jax.tree.structure(field) == jax.tree.structure(losses):
        return stack(field)
    return field


def finish(
    losses: Losses, state: NamedTuple, ok: jax.Array, **changes: Any
) -> tuple[Weights, NamedTuple]:
    """The end of every ``update``: the weights to return and the new state.

    ``changes`` are the new values of the state's fields that change. A field
    kept in the losses' structure (``loss_weights``, ``loss_average``, ...) may be
    given stacked, one row per term in leaf order (as :func:`stack` gives it);
    it is put back into the field's structure. Then, in one place for every
    method:

    - ``ok`` (traced): the new state is kept, with ``weighting_step`` one
      higher; otherwise the old state is kept and ``skipped_updates`` goes up
      by one (counters saturate);
    - every leaf is cast to the old state's dtype, so the state's types never
      change from one step to the next (no retrace, ``lax.scan``-safe);
    - the weights are returned in the losses' structure, each in its loss's
      dtype.

    Returns:
      ``(weights, state)``, what ``update`` returns.
    """
    fields = {}
    for name, value in changes.items():
        if name not in state._fields:
            raise ValueError(
                f"{type(state).__name__} has no field {name!r}; its fields are "
                f"{', '.join(state._fields)}."
            )
        old = getattr(state, name)
        fields[name] = unstack(value, old) if _is_stacked(value, old, losses) else value
    kept = keep_or_skip(ok, state._replace(**fields), state)
    return unstack(stack(kept.loss_weights), losses), kept


def keep_or_skip(ok: jax.Array, new_state: NamedTuple, state: NamedTuple):
    """``new_state`` with one more step if ``ok``, else ``state`` with one more skip.

    The state half of :func:`finish`, for states without ``loss_weights`` (the
    per-point methods). Every leaf is cast to the old state's dtype.
    """
    new_state = new_state._replace(
        weighting_step=optax.safe_increment(state.weighting_step),
        skipped_updates=state.skipped_updates,
    )
    kept = jax.tree.map(
        lambda new, old: jnp.where(ok, new, old).astype(jnp.asarray(old).dtype),
        new_state,
        state,
    )
    return kept._replace(
        skipped_updates=jnp.where(
            ok, state.skipped_updates, optax.safe_increment(state.skipped_updates)
        )
    )


def flat_state_optimizer(
    optimizer: optax.GradientTransformation | None, learning_rate: float
) -> optax.GradientTransformation:
    """A method's inner optimizer, its state kept as a flat tuple of leaves.

    ``optimizer`` (None: ``optax.adam(learning_rate)``) trains a method's own
    parameters (log-variances, weights) inside the weighting state. Its state is
    stored without the optimizer's field names (``count``, ``mu``, ...), so that
    ``optax.tree.get`` on an outer optimizer's state finds that optimizer's
    fields only. Raises ValueError if ``optimizer`` is not an Optax gradient
    transformation.
    """
    if optimizer is None:
        optimizer = optax.adam(learning_rate)
    elif not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise ValueError(
            "optimizer must be an Optax gradient transformation (with init and "
            f"update), got optimizer = {optimizer!r}."
        )

    def init(params):
        return tuple(jax.tree.leaves(optimizer.init(params)))

    def update(updates, leaves, params):
        treedef = jax.tree.structure(jax.eval_shape(optimizer.init, params))
        updates, inner = optimizer.update(
            updates, jax.tree.unflatten(treedef, leaves), params
        )
        return updates, tuple(jax.tree.leaves(inner))

    return optax.GradientTransformation(init, update)


def counter() -> jax.Array:
    """A fresh int32 step counter."""
    return jnp.zeros((), jnp.int32)


def is_due(step: jax.Array, every: int) -> jax.Array:
    """True on steps 0, ``every``, 2 * ``every``, ... (traced, no host ``if``)."""
    return step % every == 0



# ----------------------------------------------------------------------------------
# Public helpers: the weighted total and reading the weights back.


def weighted_sum(losses: Losses, weights: Weights) -> jax.Array:
    r"""The weighted total :math:`\sum_i w_i L_i`, with the weights held constant.

    The weights are wrapped in ``jax.lax.stop_gradient``: differentiating the total
    gives :math:`\sum_i w_i \nabla L_i` and never a gradient through the weights.

    Args:
      losses: pytree of scalar loss terms.
      weights: pytree of scalar weights, in the same structure as ``losses``.

    Returns:
      The scalar total, in the losses' dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> losses = {"pde": jnp.asarray(2.0), "bc": jnp.asarray(0.5)}
      >>> weights = {"pde": 0.2, "bc": 0.8}
      >>> print(optax_invloss.weighted_sum(losses, weights))
      0.8
    """
    check_losses(losses)
    if jax.tree.structure(losses) != jax.tree.structure(weights):
        raise ValueError(
            "weighted_sum: losses and weights must have the same structure.\n"
            f"  losses:  {jax.tree.structure(losses)}\n"
            f"  weights: {jax.tree.structure(weights)}"
        )
    terms = jax.tree.map(
        lambda loss, w: (
            jax.lax.stop_gradient(jnp.asarray(w)).astype(jnp.asarray(loss).dtype) * loss
        ),
        losses,
        weights,
    )
    return sum(jax.tree.leaves(terms))


def _is_weighting_state(x) -> bool:
    return isinstance(x, tuple) and "loss_weights" in getattr(x, "_fields", ())


def _unwrap_variables(tree):
    """Replaces Flax NNX variables (as held by ``nnx.Optimizer``) by their values."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return tree
    is_var = lambda x: isinstance(x, nnx.Variable)
    return jax.tree.map(
        lambda x: x.get_value() if is_var(x) else x, tree, is_leaf=is_var
    )


def find_weighting_state(state: Any) -> NamedTuple:
    """The weighting state held in ``state`` (see :func:`loss_weights`)."""
    if hasattr(state, "opt_state") and not isinstance(state, tuple):
        state = state.opt_state  # a Flax NNX optimizer
    state = _unwrap_variables(state)
    found = [
        x
        for x in jax.tree.leaves(state, is_leaf=_is_weighting_state)
        if _is_weighting_state(x)
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(
            "Expected a weighting state (the NamedTuple returned by method.init, with "
            "a loss_weights field), an Optax optimizer state that holds one (from "
            "optax_invloss.with_weighting), or a Flax nnx.Optimizer built on such an "
            f"optimizer; got {type(state).__name__} with no loss_weights field."
        )
    raise ValueError(
        f"Found {len(found)} weighting states in the given state; pass the one "
        "you mean (e.g. opt_state.weighting_state)."
    )


def loss_weights(state: Any) -> Weights:
    """The current loss weights held in a state.

    Args:
      state: a weighting state (from ``method.init`` or ``method.update``), an Optax
        optimizer state that holds one (from :func:`optax_invloss.with_weighting`),
        or a Flax ``nnx.Optimizer`` (or its ``opt_state``) built on such an
        optimizer.

    Returns:
      The weights, in the structure of the losses the state was created with.

    Raises:
      ValueError: if ``state`` holds no weighting state, or more than one.

    Examples:
      >>> import optax_invloss
      >>> method = optax_invloss.inverse_loss(min_weight=0.0)
      >>> state = method.init({"pde": 0.0, "bc": 0.0})
      >>> _, state = method.update({"pde": 3.0, "bc": 1.0}, state)
      >>> w = optax_invloss.loss_weights(state)
      >>> print(f"{w['pde']:.2f} {w['bc']:.2f}")
      0.25 0.75
    """
    return find_weighting_state(state).loss_weights
