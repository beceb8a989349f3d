"""The engine every gradient aggregator shares: per-term gradients to one update.

A gradient aggregator (ConFIG, PCGrad, MGDA, IMTL-G, CAGrad, Nash-MTL, UPGrad,
DualProj) turns the gradients :math:`g_1, \\dots, g_m` of the loss terms into one
update direction :math:`J^\\top w = \\sum_i w_i g_i`, with a few weights
:math:`w` that depend on the gradients through their small Gram matrix
:math:`G = J J^\\top` only (:math:`G_{ij} = g_i \\cdot g_j`). This module holds
that once: the per-term gradients (:func:`term_gradients`), ``G``, the call of a
rule's fixed-cost in-graph solve ``G -> w``, the weighted sum, and the Optax
shape (:func:`aggregator`), with ``update_every`` and the guards:

- a term whose gradient is exactly zero (a term that touches no parameter) has a
  zero row in ``G``; the rules leave it out or give it a zero contribution,
  never a NaN;
- the rules solve on the unit-diagonal (cosine) Gram matrix with a
  pseudo-inverse, or on the trace-normalised one with a tiny relative ridge, so
  a rank-deficient ``G`` (parallel gradients, more terms than parameters) does
  not blow up and small gradients are not mistaken for zero ones;
- there is no absolute small-norm threshold: all rules are invariant to scaling
  every gradient by the same factor, late in training as early.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _base, _checks, _gradients

Solve = Callable[..., jax.Array]  # (G, previous_weights, key) -> weights (m,)

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------
# Per-term gradients.


def term_gradients(
    loss_fn: Callable, params: Any, *, gradient_strategy: str = "auto"
) -> Any:
    """The gradient of each loss term, each in the shape of ``params``.

    Computed by the library's one per-term gradient function
    (``_gradients.per_term_gradients``): one ``jax.grad`` per term for few
    terms (under ``jax.jit`` the forward computations the terms share are
    merged, and each backward pass runs through its own term only), one
    reverse pass batched over the terms for many (a compile time that does not
    grow with their number). Parameter leaves that are not floating point get
    a zero gradient.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of scalar loss terms
        (usually a dict by name).
      params: the parameters, any pytree of arrays.
      gradient_strategy: ``"auto"`` (``"batched"`` from 10 terms on),
        ``"unrolled"`` or ``"batched"``; the same gradients either way (see
        :func:`optax_invloss.lr_annealing`).

    Returns:
      A pytree in the structure of ``losses`` whose leaves are parameter-shaped
      pytrees: the gradient of each term, in the parameters' dtypes. This is the
      input every aggregator's ``update`` takes.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> def loss_fn(p):
      ...     return {"a": jnp.sum(p["x"] ** 2), "b": jnp.sum(3.0 * p["x"])}
      >>> grads = optax_invloss.term_gradients(loss_fn, {"x": jnp.ones(2)})
      >>> print(grads["a"]["x"], grads["b"]["x"])
      [2. 2.] [3. 3.]
    """
    _gradients.check_strategy(gradient_strategy)
    stacked = full_stacked_gradients(
        loss_fn, params, method="term_gradients", strategy=gradient_strategy
    )
    out_def = jax.tree.structure(jax.eval_shape(loss_fn, params))
    treedef = jax.tree.structure(params)
    terms = [
        jax.tree.unflatten(treedef, [leaf[i] for leaf in stacked])
        for i in range(out_def.num_leaves)
    ]
    return jax.tree.unflatten(out_def, terms)


def full_stacked_gradients(
    loss_fn: Callable, params: Any, *, method: str, strategy: str = "auto"
) -> list[jax.Array]:
    """Per-term gradients stacked by term, one ``(m, *leaf.shape)`` array per leaf
    of ``params`` (zeros for leaves that are not floating point)."""
    flags = _gradients.selected_leaves(params, None, method=method)
    grads = iter(
        _gradients.per_term_gradients(
            loss_fn, params, flags, None, method=method, strategy=strategy
        )
    )
    m = len(jax.tree.leaves(jax.eval_shape(loss_fn, params)))
    return [
        next(grads) if flag else jnp.zeros((m, *jnp.shape(leaf)), jnp.result_type(leaf))
        for leaf, flag in zip(jax.tree.leaves(params), flags, strict=True)
    ]


def _term_matcher(params: Any) -> Callable[[Any], bool]:
    """Whether a subtree is one term's gradient: the structure of ``params``, or
    the same leaf paths (a plain dict where params is an ``nnx.State``)."""
    ptree = jax.tree.structure(params)
    paths = [jax.tree_util.keystr(p) for p, _ in _flat_paths(params)]

    def is_term(x) -> bool:
        if jax.tree.structure(x) == ptree:
            return True
        if ptree.num_leaves == 1 or not isinstance(x, (Mapping, list, tuple)):
            return False
        return [jax.tree_util.keystr(p) for p, _ in _flat_paths(x)] == paths

    return is_term


def _flat_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def split_terms(term_grads: Any, params: Any, *, method: str) -> tuple[list, Any]:
    """The per-term gradients as a list of parameter-shaped pytrees, and the outer
    structure (the terms').

    With ``params``, a term is any subtree with the structure of ``params`` (so
    nested loss dicts work); without, the terms are the top-level entries of
    ``term_grads`` (a dict by term, a list or a tuple).
    """
    if params is not None:
        ptree = jax.tree.structure(params)
        if jax.tree.structure(term_grads) == ptree:
            raise ValueError(
                f"{method}: update got one gradient in the shape of params; an "
                "aggregator needs the gradient of each loss term (a dict by term "
                "of parameter-shaped pytrees, e.g. optax_invloss.term_gradients("
                "loss_fn, params) or jax.jacrev(loss_fn)(params)), or loss_fn= "
                "as a keyword input."
            )
        is_term = _term_matcher(params)
        terms, outer = jax.tree.flatten(term_grads, is_leaf=is_term)
        for path, term in jax.tree_util.tree_flatten_with_path(
            term_grads, is_leaf=is_term
        )[0]:
            if not is_term(term):
                raise ValueError(
                    f"{method}: the gradient of term {jax.tree_util.keystr(path)} "
                    "does not have the structure of params.\n  term:   "
                    f"{jax.tree.structure(term)}\n  params: {ptree}"
                )
    else:
        terms, outer = jax.tree.flatten(
            term_grads, is_leaf=lambda x: x is not term_grads
        )
        if not isinstance(term_grads, (Mapping, list, tuple)) or not terms:
            raise ValueError(
                f"{method}: update needs the per-term gradients as a non-empty dict "
                "(or list) by term of parameter-shaped pytrees, or pass params= so "
                "that nested terms can be told from the parameters; got "
                f"{jax.tree.structure(term_grads)}."
            )
        first = jax.tree.structure(terms[0])
        for term in terms[1:]:
            if jax.tree.structure(term) != first:
                raise ValueError(
                    f"{method}: the per-term gradients differ in structure (every "
                    "term's gradient must have the structure of params):\n  "
                    f"{first}\n  {jax.tree.structure(term)}"
                )
    return terms, outer


# ----------------------------------------------------------------------------------
# The matrix side: J as stacked leaves, G, J^T w.


def stack_terms(terms: list) -> list[jax.Array]:
    """One array per parameter leaf, with the term as leading axis ``(m, ...)``."""
    return [
        jnp.stack(leaves) for leaves in zip(*map(jax.tree.leaves, terms), strict=True)
    ]


def gram(stacked: list[jax.Array]) -> jax.Array:
    """``G = J J^T``, ``(m, m)``, in the gradients' (widest) dtype."""
    dtype = jnp.result_type(*stacked)
    m = stacked[0].shape[0]
    total = jnp.zeros((m, m), dtype)
    for leaf in stacked:
        flat = leaf.reshape(m, -1).astype(dtype)
        total = total + jnp.matmul(flat, flat.T, precision=_HIGHEST)
    return total


def combine(weights: jax.Array, stacked: list[jax.Array], like: Any) -> Any:
    """``J^T w`` in the structure and dtypes of ``like`` (a parameter-shaped tree)."""
    leaves = [
        jnp.tensordot(weights.astype(s.dtype), s, axes=1, precision=_HIGHEST)
        for s in stacked
    ]
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def aggregate_matrix(solve: Solve, jac: jax.Array, previous=None, key=None):
    """``(J^T w, w)`` for a gradient matrix ``jac`` ``(m, N)``: the rule on arrays.

    For tests and for users who hold their gradients as a matrix already.
    """
    g = jnp.matmul(jac, jac.T, precision=_HIGHEST)
    w = solve(g, previous, key)
    return jnp.matmul(w.astype(jac.dtype), jac, precision=_HIGHEST), w


# ----------------------------------------------------------------------------------
# Helpers the rules share (all on G, all traced, fixed cost).


def norms(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(n, active)``: the gradient norms and which terms have a nonzero one."""
    d = jnp.diagonal(g)
    active = (d > 0) & jnp.isfinite(d)
    return jnp.sqrt(jnp.where(active, d, 0)), active


def unit_gram(g: jax.Array, n: jax.Array, active: jax.Array) -> jax.Array:
    """The cosine matrix of the active terms; identity rows for the others."""
    safe = jnp.where(active, n, 1)
    both = active[:, None] & active[None, :]
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    return jnp.where(both, g / (safe[:, None] * safe[None, :]), eye)


def normalized_gram(g: jax.Array) -> jax.Array:
    """``G / trace(G)`` plus a tiny relative ridge (``100 eps``): positive definite.

    Scale-free, so no absolute threshold; all-zero gradients give ``ridge * I``.
    """
    trace = jnp.trace(g)
    scaled = g / jnp.where(trace > 0, trace, 1)
    ridge = 100 * jnp.finfo(g.dtype).eps
    return scaled + ridge * jnp.eye(g.shape[0], dtype=g.dtype)


def psd_pinv(a: jax.Array) -> jax.Array:
    """The pseudo-inverse of a symmetric positive semi-definite matrix."""
    return jnp.linalg.pinv(a, hermitian=True)


def subsets(m: int) -> jax.Array:
    """Every subset of ``range(m)`` as a ``(2^m, m)`` bool array (bit patterns)."""
    codes = jnp.arange(2**m, dtype=jnp.int32)
    return ((codes[:, None] >> jnp.arange(m, dtype=jnp.int32)[None, :]) & 1) == 1


# ----------------------------------------------------------------------------------
# The Optax shape.


class AggregatorState(NamedTuple):
    """State of a gradient aggregator.

    Attributes:
      aggregation_weights: the weights :math:`w` of the last refresh, ``(m,)`` in
        the gradients' dtype, in the terms' order (the leaf order of the loss
        dict); shape ``(0,)`` when the aggregator was built without
        ``num_terms``. The next refresh of Nash-MTL starts from them.
      aggregation_step: int32 scalar, updates so far (skips included); weights
        are recomputed when it is a multiple of ``update_every``.
      aggregation_key: uint32 ``(2,)``, the PRNG key of random rules (PCGrad's
        random order), split on every refresh.
      aggregation_skipped: int32 scalar, updates refused because a gradient or
        the weights were not finite (the update was zero, the state kept).
    """

    aggregation_weights: jax.Array
    aggregation_step: jax.Array
    aggregation_key: jax.Array
    aggregation_skipped: jax.Array


def check_common(name: str, num_terms, update_every) -> None:
    """Factory checks shared by every aggregator."""
    if num_terms is not None and (
        not isinstance(num_terms, int) or isinstance(num_terms, bool) or num_terms < 1
    ):
        raise ValueError(
            f"{name}: num_terms must be None or a positive int, got num_terms = "
            f"{num_terms!r}."
        )
    _checks.check_every("update_every", update_every)
    if update_every > 1 and num_terms is None:
        raise ValueError(
            f"{name}: update_every = {update_every} keeps the weights between "
            "refreshes, so the state must know their number: pass num_terms= (the "
            "number of loss terms)."
        )


def _finite_tree(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def aggregator(
    name: str,
    solve: Solve,
    *,
    num_terms: int | None,
    update_every: int,
    seed: int = 0,
    postprocess: Callable[[Any], Any] | None = None,
    gradient_strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Builds the Optax transformation of one rule ``solve(G, previous, key) -> w``.

    ``update(term_grads, state, params=None, *, loss_fn=None, **extra)``: with
    ``loss_fn`` (``params -> losses``), the incoming ``term_grads`` are ignored
    and the per-term gradients are computed here, on refresh steps only (other
    steps take one gradient of the weighted sum with the stored weights). Other
    keyword inputs are ignored. ``postprocess`` (Nash-MTL's norm clip) runs on
    every step's direction. ``gradient_strategy``: how the per-term gradients
    of ``loss_fn`` are computed (``_gradients.per_term_gradients``).
    """
    check_common(name, num_terms, update_every)
    _gradients.check_strategy(gradient_strategy)

    def init_fn(params):
        dtype = optax.tree.dtype(params, "highest") if jax.tree.leaves(params) else None
        dtype = (
            dtype
            if dtype is not None and jnp.issubdtype(dtype, jnp.floating)
            else jnp.float32
        )
        return AggregatorState(
            aggregation_weights=jnp.zeros((num_terms or 0,), dtype),
            aggregation_step=jnp.zeros((), jnp.int32),
            aggregation_key=jax.random.PRNGKey(seed),
            aggregation_skipped=jnp.zeros((), jnp.int32),
        )

    def check_m(m: int) -> None:
        if num_terms is not None and m != num_terms:
            raise ValueError(
                f"{name}: got the gradients of {m} loss terms, but the aggregator "
                f"was built with num_terms = {num_terms}."
            )

    def weights_from(g, state):
        key, sub = jax.random.split(state.aggregation_key)
        previous = state.aggregation_weights if num_terms else None
        w = solve(g, previous, sub)
        return w.astype(g.dtype), key

    def from_stacked(stacked, state, due, like):
        if update_every == 1:
            w, key = weights_from(gram(stacked), state)
        else:
            # The Gram matrix (m^2 x params products) inside the branch: steps
            # between refreshes only form the weighted sum J^T w.
            dtype = jnp.result_type(*stacked)
            stored = state.aggregation_weights.astype(dtype)
            w, key = jax.lax.cond(
                due,
                lambda: weights_from(gram(stacked), state),
                lambda: (stored, state.aggregation_key),
            )
        return combine(w, stacked, like), w, key

    def update_fn(updates, state, params=None, *, loss_fn=None, **extra):
        del extra
        due = _base.is_due(state.aggregation_step, update_every)
        if loss_fn is None:
            terms, _ = split_terms(updates, params, method=name)
            check_m(len(terms))
            like = terms[0] if params is None else params
            direction, w, key = from_stacked(stack_terms(terms), state, due, like)
        else:
            if params is None:
                raise ValueError(
                    f"{name}: with loss_fn= as input the aggregator differentiates "
                    "the loss terms itself and needs the parameters: call "
                    "update(grads, state, params, loss_fn=loss_fn)."
                )

            def refresh():
                stacked = full_stacked_gradients(
                    loss_fn, params, method=name, strategy=gradient_strategy
                )
                check_m(stacked[0].shape[0])
                return from_stacked(stacked, state, True, params)

            if update_every == 1:
                direction, w, key = refresh()
            else:

                def hold():
                    stored = state.aggregation_weights

                    def total(p):
                        leaves = jax.tree.leaves(loss_fn(p))
                        check_m(len(leaves))
                        return sum(
                            wi.astype(x.dtype) * x
                            for wi, x in zip(stored, leaves, strict=True)
                        )

                    grad = jax.grad(total)(params)
                    return grad, stored, state.aggregation_key

                direction, w, key = jax.lax.cond(due, refresh, hold)
        ok = _finite_tree(direction) & jnp.all(jnp.isfinite(w))
        direction = jax.tree.map(
            lambda x: jnp.where(ok, x, jnp.zeros_like(x)), direction
        )
        if postprocess is not None:
            direction = postprocess(direction)
        if num_terms:
            stored = jnp.where(
                ok, w.astype(state.aggregation_weights.dtype), state.aggregation_weights
            )
        else:
            stored = state.aggregation_weights
        new_state = AggregatorState(
            aggregation_weights=stored,
            aggregation_step=optax.safe_increment(state.aggregation_step),
            aggregation_key=jnp.where(ok, key, state.aggregation_key),
            aggregation_skipped=state.aggregation_skipped
            + jnp.where(ok, 0, 1).astype(jnp.int32),
        )
        if params is not None:
            direction = jax.tree.map(
                lambda d, p: d.astype(jnp.result_type(p)), direction, params
            )
        return direction, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def aggregation_weights(state: Any) -> jax.Array:
    """The aggregation weights of the last refresh held in a state.

    Works on an aggregator's own state, on an ``optax.chain`` state that holds
    one, and on a Flax ``nnx.Optimizer``'s ``opt_state``.

    Args:
      state: a state that holds one :class:`AggregatorState`.

    Returns:
      The ``(m,)`` weights :math:`w` with update :math:`J^\\top w`, in the terms'
      order (shape ``(0,)`` for an aggregator built without ``num_terms``).

    Examples:
      >>> import jax.numpy as jnp, optax, optax_invloss
      >>> tx = optax.chain(optax_invloss.mgda(num_terms=2), optax.sgd(0.1))
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
      >>> _, state = tx.update(grads, state, params)
      >>> print([round(float(w), 4) for w in optax_invloss.aggregation_weights(state)])
      [0.6, 0.4]
    """
    value = optax.tree.get(_base._unwrap_variables(state), "aggregation_weights")
    if value is None:
        raise ValueError("aggregation_weights: the state holds no aggregator state.")
    return value
