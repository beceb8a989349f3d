"""Per-term gradients, and the subsets of parameters gradient-based methods look at.

The gradient-based weighting methods (:func:`optax_invloss.lr_annealing`,
:func:`optax_invloss.grad_norm_balance`, :func:`optax_invloss.ntk_weights`,
:func:`optax_invloss.gradnorm`) all need the same machinery: pick a subset of the
parameters with an Optax-style mask, differentiate each loss term (or each
residual) with respect to that subset only, and turn gradient statistics into
weights without dividing by zero. It lives here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _numerics

Mask = Any  # None, a pytree of bools matching params, or params -> such a pytree


# ----------------------------------------------------------------------------------
# Masks: which parameters count.


def weight_matrix_mask(params: Any) -> Any:
    """The mask that selects the weight matrices: every leaf with ``ndim >= 2``.

    Biases, scales and other vectors or scalars are left out. This is the subset
    that the authors' code of learning-rate annealing looks at.

    Args:
      params: the parameters, any pytree of arrays (a dict, a Flax ``nnx.State``,
        an Equinox module, ...).

    Returns:
      A pytree of bools in the structure of ``params``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
      >>> optax_invloss.weight_matrix_mask(params)
      {'dense': {'bias': False, 'kernel': True}}
    """
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def _natural_key(path) -> tuple:
    """A sort key for a pytree path in which digit runs compare as numbers."""
    key = []
    for entry in path:
        for name in (getattr(entry, a, None) for a in ("key", "name", "idx")):
            if name is not None:
                break
        for part in re.split(r"(\d+)", str(name)):
            if part:
                key.append((0, int(part), "") if part.isdigit() else (1, 0, part))
        key.append((2, 0, ""))  # separates path entries
    return tuple(key)


def last_layer_mask(params: Any) -> Any:
    """The mask that selects the last layer's weight matrix.

    "Last" is the leaf with ``ndim >= 2`` whose path in ``params`` comes last in
    natural order: the keys along the path are compared in turn, and runs of
    digits inside a key compare as numbers. So ``Dense_10`` comes after
    ``Dense_2`` (Flax Linen names), ``layers/10/kernel`` after ``layers/2/kernel``
    (a list of layers, or an ``nnx.List``), and ``[3][0]`` after ``[2][0]`` (a
    list of ``(W, b)`` pairs). If your names do not put the output layer last
    (``{"output": ..., "skip": ...}``, say), pass your own mask.

    Args:
      params: the parameters, any pytree of arrays.

    Returns:
      A pytree of bools in the structure of ``params``, True at one leaf.

    Raises:
      ValueError: if ``params`` holds no leaf with ``ndim >= 2``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> params = {f"Dense_{i}": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
      ...           for i in (0, 2, 10)}
      >>> mask = optax_invloss.last_layer_mask(params)
      >>> [name for name in mask if mask[name]["kernel"]]
      ['Dense_10']
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    matrices = [i for i, (_, leaf) in enumerate(with_path) if jnp.ndim(leaf) >= 2]
    if not matrices:
        raise ValueError(
            "last_layer_mask found no weight matrix (no leaf with ndim >= 2) in "
            "params; pass a mask that selects the parameters you mean, or "
            "mask=None for all of them."
        )
    last = max(matrices, key=lambda i: _natural_key(with_path[i][0]))
    return jax.tree.unflatten(treedef, [i == last for i in range(len(with_path))])


def check_mask(mask: Mask, argname: str = "mask") -> None:
    """Raises ValueError at construction for a mask that cannot be one."""
    if isinstance(mask, (bool, str, int, float)):
        raise ValueError(
            f"{argname} must be None (all parameters), a pytree of bools matching "
            f"params, or a function params -> such a pytree, got {argname} = "
            f"{mask!r}."
        )


def selected_leaves(params: Any, mask: Mask, *, method: str) -> list[bool]:
    """Which leaves of ``params`` (in flatten order) the mask selects.

    Leaves that are not floating point are never selected. Raises ValueError if
    the mask does not fit ``params`` or selects nothing.
    """
    if params is None:
        raise ValueError(
            f"{method} needs the parameters: pass params= to update (through "
            "with_weighting: tx.update(grads, opt_state, params, losses=...))."
        )
    leaves = jax.tree.leaves(params)
    if mask is None:
        flags = [True] * len(leaves)
    else:
        tree = mask(params) if callable(mask) else mask
        try:
            spread = jax.tree.map(
                lambda m, sub: jax.tree.map(lambda _: bool(m), sub), tree, params
            )
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{method}: the mask does not match the structure of params (a "
                "mask is a pytree of bools with the structure of params, or a "
                f"prefix of it).\n  mask:   {jax.tree.structure(tree)}\n  params: "
                f"{jax.tree.structure(params)}"
            ) from error
        flags = jax.tree.leaves(spread)
    flags = [
        flag and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        for flag, leaf in zip(flags, leaves, strict=True)
    ]
    if not any(flags):
        raise ValueError(
            f"{method}: the mask selects no floating-point parameter; pass "
            "mask=None for all parameters, or a mask that selects some."
        )
    return flags


def restrict(fn: Callable, params: Any, flags: list[bool]):
    """``fn`` as a function of the selected leaves only; returns ``(g, selected)``.

    ``g(selected)`` puts the selected leaves back into ``params`` (the others held
    at their current values) and calls ``fn``.
    """
    leaves, treedef = jax.tree.flatten(params)
    selected = [leaf for leaf, flag in zip(leaves, flags, strict=True) if flag]

    def g(new_selected):
        it = iter(new_selected)
        merged = [
            next(it) if flag else leaf for leaf, flag in zip(leaves, flags, strict=True)
        ]
        return fn(jax.tree.unflatten(treedef, merged))

    return g, selected


# ----------------------------------------------------------------------------------
# Per-term gradients of a loss function.


GRADIENT_STRATEGIES = ("auto", "unrolled", "batched")

# "auto" picks "batched" from this many loss terms on. Measured with
# benchmarks/many_terms.py (benchmarks/results/many_terms.md): at 2 terms the two
# compile in about the same time and the unrolled one runs faster; at 10 the
# batched one compiles faster for every method, and at 50 in 0.3-0.6 of the time.
BATCHED_FROM = 10


def check_strategy(value: Any, argname: str = "gradient_strategy") -> None:
    """Raises ValueError at construction for an unknown per-term gradient strategy."""
    _checks.check_choice(argname, value, GRADIENT_STRATEGIES)


def resolve_strategy(strategy: str, num_terms: int) -> str:
    """``"unrolled"`` or ``"batched"``: ``strategy``, with ``"auto"`` decided by
    the number of loss terms (batched from :data:`BATCHED_FROM` on)."""
    if strategy != "auto":
        return strategy
    return "batched" if num_terms >= BATCHED_FROM else "unrolled"


def per_term_gradients(
    loss_fn: Callable,
    params: Any,
    flags: list[bool],
    losses: Any,
    dtype=None,
    *,
    method: str,
    strategy: str = "auto",
) -> list[jax.Array]:
    """The gradient of each loss term with respect to the selected parameters.

    Returns one array per selected parameter leaf (in flatten order), of shape
    ``(m, *leaf.shape)``: the term (in the losses' leaf order) along the first
    axis, in ``dtype`` (None: the parameters' dtypes). This is the one place in
    the library where per-term gradients are computed; two strategies:

    - ``"unrolled"``: one ``jax.grad`` per term, each of that term alone. The
      parts of the forward pass the terms share are computed once (XLA merges
      them) and each backward pass runs through its own term only: when the
      terms are computed on their own points (PINNs), all the terms' gradients
      together cost about one forward and one backward pass of the whole loss.
      But ``loss_fn`` is traced once per term, and each trace holds every term:
      the program grows as ``m**2`` and its compile time with it.
    - ``"batched"``: one forward pass of the scalar losses stacked into a
      vector (``jax.vjp``), and its reverse pass ``jax.vmap``-ed over the ``m``
      basis cotangents (the rows of the identity). ``loss_fn`` is traced once,
      so the program and its compile time do not grow with ``m``; the price is
      at run time: the batched reverse pass runs through every term for every
      term (``m`` backward passes of the whole loss, as ``jax.jacrev``), and
      its memory holds ``m`` copies of the backward pass's buffers and the
      ``m x params`` gradients.

    ``"auto"`` takes ``"batched"`` from :data:`BATCHED_FROM` terms on.
    ``losses`` (or None) is the structure ``loss_fn(params)`` must have.
    """
    g, selected = restrict(loss_fn, params, flags)
    out = jax.eval_shape(g, selected)
    _base.check_losses(out, argname=f"{method}: loss_fn(params)")
    if losses is not None:
        _base.check_structure(out, losses, what="the output of loss_fn(params)")
    m = len(jax.tree.leaves(out))
    if resolve_strategy(strategy, m) == "unrolled":

        def term(i):
            return jax.grad(lambda s: jax.tree.leaves(g(s))[i])(selected)

        per_term = [term(i) for i in range(m)]
        stacked = [jnp.stack(leaves) for leaves in zip(*per_term, strict=True)]
    else:
        wide = jnp.result_type(*jax.tree.leaves(out))

        def vector(s):
            return jnp.stack([x.astype(wide) for x in jax.tree.leaves(g(s))])

        _, vjp_fn = jax.vjp(vector, selected)
        (stacked,) = jax.vmap(vjp_fn)(jnp.eye(m, dtype=wide))
    return [x if dtype is None else x.astype(dtype) for x in stacked]


# ----------------------------------------------------------------------------------
# Guarded arithmetic.


def update_when_due(
    losses: Any,
    state: Any,
    ok: jax.Array,
    update_every: int,
    compute: Callable,
    *,
    held: tuple[str, ...] = (),
    **changes: Any,
) -> tuple[Any, Any]:
    """The end of a gradient-based method's ``update``: weights and new state.

    On a due step (``weighting_step`` a multiple of ``update_every``) the new
    weight vector comes from ``compute()`` inside a ``lax.cond`` branch, so the
    per-term gradients run on due steps only; other steps hold the weights.
    ``compute() -> (new, finite)``, or ``(new, finite, values)`` with ``values``
    a tuple of the new values of the state fields named in ``held`` (which are
    held too on the other steps; per-term fields stacked). ``changes`` are the
    fields that change on every step. Losses that are not ``ok`` or a result
    that is not ``finite`` skip the update (:func:`_base.finish`).
    """
    old = _base.stack(state.loss_weights)
    current = tuple(_base.stacked(losses, getattr(state, name)) for name in held)
    due = _base.is_due(state.weighting_step, update_every)

    def hold():
        return (old, jnp.asarray(True), *((current,) if held else ()))

    new, finite, *values = jax.lax.cond(due, compute, hold)
    values = dict(zip(held, values[0], strict=True)) if held else {}
    return _base.finish(
        losses, state, ok & finite, loss_weights=new, **values, **changes
    )


def term_norms(grads: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    r"""Each term's gradient norm :math:`\|g_i\|_2`, as ``(v, E)``: ``v_i 2^E``.

    ``grads`` are stacked by term (:func:`per_term_gradients`). ``v`` is the
    vector of norms divided by the power of two of the largest, so it is
    finite whenever the gradients are and its ratios are the ratios of the
    norms, even where the norms or their squares overflow: each term's
    gradient is scaled by a power of two near its largest absolute entry before
    it is squared. A norm more than the dtype's range below the largest is 0.
    Vectorised over the terms (one ``jax.vmap``), so its size does not grow
    with their number.
    """
    q, e = jax.vmap(_numerics.scaled_square_norm)(grads)
    return _numerics.common_scale(_numerics.hypot_mantissa(q), e)


all_finite = _numerics.all_finite
