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
from collections.abc import Callable
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
    """A loss weighting method: a pair of pure functions ``(init, update)``.

    Attributes:
      init: ``init(losses) -> state``. Only the structure, shapes and dtypes of
        ``losses`` are used, so ``jax.ShapeDtypeStruct`` leaves (for example from
        ``jax.eval_shape``) and Python floats work as well as arrays.
      update: ``update(losses, state, **inputs) -> (weights, state)``. Keyword inputs
        that a method does not use are ignored, so one training step can drive any
        method. The keyword inputs a method does use are the keyword-only arguments
        of its ``update``; :func:`optax_invloss.with_weighting` reads them from there.
    """

    init: InitFn
    update: UpdateFn


# ----------------------------------------------------------------------------------
# Validation and stacking.


def _term_name(path) -> str:
    name = jax.tree_util.keystr(path)
    return name if name else "<root>"


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
                f"Loss term {_term_name(path)} in {argname} has shape {shape}; each "
                "loss term must be a scalar. Reduce it first (e.g. jnp.mean of the "
                "squared residuals)."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"Loss term {_term_name(path)} in {argname} has dtype {dtype}; loss "
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
    # Python scalars are weakly typed: they do not promote the arrays' dtype.
    dtypes = [
        leaf if isinstance(leaf, float) else _leaf_shape_dtype(leaf)[1]
        for leaf in jax.tree.leaves(losses)
    ]
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


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


def prepare(losses: Losses, state: NamedTuple) -> tuple[jax.Array, jax.Array]:
    """Validates losses against a state; returns ``(vector, ok)``.

    ``vector`` holds the losses in the state's dtype. ``ok`` is a traced boolean that
    is False when any loss is NaN, infinite or negative: such an update must not
    touch the state (see :func:`finish`).
    """
    check_losses(losses)
    check_structure(losses, state.loss_weights, what="the losses given to init")
    dtype = jax.tree.leaves(state.loss_weights)[0].dtype
    vector = stack(losses, dtype)
    ok = jnp.all(jnp.isfinite(vector) & (vector >= 0))
    # Replace bad values so that no NaN or Inf flows through the (discarded) branch:
    # NaNs in an unselected branch would still poison reverse-mode gradients.
    vector = jnp.where(ok, vector, jnp.ones_like(vector))
    return vector, ok


def finish(ok: jax.Array, new_state: NamedTuple, old_state: NamedTuple):
    """Keeps ``new_state`` if ``ok``, else ``old_state`` with one more skip counted.

    Leaves are cast to the old state's dtypes, so the state's types never change
    from one step to the next (no retrace, ``lax.scan``-safe).
    """
    new_state = new_state._replace(
        weighting_step=optax.safe_increment(old_state.weighting_step),
        skipped_updates=old_state.skipped_updates,
    )
    kept = jax.tree.map(
        lambda new, old: jnp.where(ok, new, old).astype(jnp.asarray(old).dtype),
        new_state,
        old_state,
    )
    return kept._replace(
        skipped_updates=jnp.where(
            ok,
            old_state.skipped_updates,
            optax.safe_increment(old_state.skipped_updates),
        )
    )


def counter() -> jax.Array:
    """A fresh int32 step counter."""
    return jnp.zeros((), jnp.int32)


def is_due(step: jax.Array, every: int) -> jax.Array:
    """True on steps 0, ``every``, 2 * ``every``, ... (traced, no host ``if``)."""
    return step % every == 0


def term_paths(tree: Any) -> list[tuple[str, Any]]:
    """``(name, leaf)`` for each leaf, named by its path (``"['bc']"``), in leaf order.

    The names are the ones error messages use, so a term can be reported, and
    two pytrees matched term by term, whatever their nesting.
    """
    leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(_term_name(path), leaf) for path, leaf in leaves_with_path]


# ----------------------------------------------------------------------------------
# Hyperparameter checks, done once in each factory.


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {name} = {value!r}.")


def check_decay(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {name} = {value!r}.")


def check_every(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {name} = {value!r}.")


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


def method_inputs(update: Callable) -> frozenset[str]:
    """The keyword inputs a method's ``update`` names (its keyword-only arguments)."""
    import inspect

    params = inspect.signature(update).parameters.values()
    return frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
