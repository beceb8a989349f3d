"""Per-point weights: the shape shared by residual-based attention and SA-PINN.

See :class:`PointWeightingMethod` for the shape, the training step, the two
ways of addressing points, bad values and L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_invloss import _base

Residuals = Any  # a pytree by term of arrays of per-point residuals


class PointWeightingMethod(NamedTuple):
    r"""A per-point weighting method: ``(init, update)`` and its weighted loss.

    A term weighting returns one number per loss term. A per-point weighting weights
    the collocation points *inside* a term: its input is each term's vector of
    per-point residuals :math:`r_{i,1}, \dots, r_{i,N_i}` (a pytree by term of arrays
    of shape ``(N_i,)``, or ``(N_i, k)`` for ``k`` equations at the same points) and
    its output per-point weights :math:`\lambda_{i,j}` of the same shapes::

      state = method.init(residuals)
      weights, state = method.update(residuals, state, indices=None)
      term_losses = method.loss(residuals, weights)  # {"pde": scalar, ...}

    The state holds one weight per point of each weighted term, in the field
    ``point_weights`` (a dict by term name), next to ``weighting_step`` and
    ``skipped_updates`` as in every other method. Everything is traced: ``update``
    runs under ``jax.jit`` and in ``lax.scan``; the residuals are read through
    ``jax.lax.stop_gradient``, so ``update`` can be called inside the function that
    is differentiated.

    The training step. Compute the residuals once, inside the differentiated
    function, update the weights from them and form the weighted loss with the
    weights ``update`` returns; the new state comes out as an auxiliary value::

      def step(params, opt_state, point_state):
          def total(p):
              residuals = residual_fn(p)  # {"pde": (N,), "ic": (M,)}
              weights, new_point_state = method.update(residuals, point_state)
              losses = method.loss(residuals, weights)
              return sum(losses.values()), new_point_state

          (_, point_state), grads = jax.value_and_grad(total, has_aux=True)(params)
          updates, opt_state = optimizer.update(grads, opt_state, params)
          return optax.apply_updates(params, updates), opt_state, point_state

    ``method.loss`` holds the weights constant (stop-gradient). Its scalar terms can
    also go through a term weighting (:func:`optax_invloss.weighted_sum`).

    Points. The weights belong to points, so the points must stay the same from one
    step to the next. Two ways are supported:

    - a fixed collocation set: ``init`` and every ``update`` see the same number of
      points per term. A term whose number of points changed is an error that names
      the term (a resampled set of the same size is not detected: the weights would
      silently move to the new points, so keep the points fixed).
    - index-addressed updates: ``init`` gets the shapes of a fixed *pool* of points
      (``jax.ShapeDtypeStruct((N_pool,), jnp.float32)`` will do), each step draws a
      minibatch of ``B`` points from it, and ``update(residuals, state,
      indices={"pde": idx})`` with ``idx`` of shape ``(B,)`` (integers in
      ``[0, N_pool)``) updates only those entries and returns the batch's weights,
      of shape ``(B,)``. Terms without an entry in ``indices`` must have the pool's
      shape. Repeated indices in one batch are allowed (their updates agree for
      methods that depend on the point alone; otherwise one of them is kept).

    Bad values. Residuals are signed, so negative values are ordinary. If any
    residual is NaN or infinite, or an index is out of range (negative or
    ``>= N_pool``) inside ``jax.jit``, the update is skipped: the state keeps its
    values and ``skipped_updates`` goes up by one; the weights returned are the
    stored ones (0 for out-of-range indices). Out-of-range indices that are known
    outside ``jit`` (concrete arrays) raise ``ValueError`` at once.

    L-BFGS. Like the term weights of :func:`optax_invloss.run_lbfgs`'s default
    policy, per-point weights are frozen while L-BFGS runs: build one fixed
    objective from the last weights and stop calling ``update``::

      weights = ...  # the last weights update returned
      loss_fn = lambda p: method.loss(residual_fn(p), weights)
      value_fn = lambda p: sum(loss_fn(p).values())  # for optax.lbfgs

    or hand ``loss_fn`` to :func:`optax_invloss.run_lbfgs` with
    ``optax_invloss.static_weights`` of 1 for every term.

    Not built: causal time weighting (Wang, Sankaran and Perdikaris 2022); its
    authors state that the algorithm is patented and not for commercial use.

    Attributes:
      init: ``init(residuals) -> state``. Only the structure, shapes and dtypes of
        ``residuals`` are read (``jax.ShapeDtypeStruct`` leaves work).
      update: ``update(residuals, state, *, indices=None, **inputs) -> (weights,
        state)``; ``weights`` have the residuals' structure and shapes. Other
        keyword inputs are ignored.
      loss: ``loss(residuals, weights) -> term losses``, the method's weighted
        loss form (:func:`pointwise_loss` with the method's ``power``): one scalar
        per term, in the residuals' structure, the weights held constant.

    Examples:
      Fit :math:`u = a x + b` to :math:`2x + 1` with a boundary value
      :math:`u(0) = 1`, RBA on the ``pde`` points, then L-BFGS on the frozen
      weights:

      >>> import jax, jax.numpy as jnp, optax, optax_invloss
      >>> x = jnp.linspace(0.0, 1.0, 16)
      >>> def residual_fn(p):
      ...     return {"pde": p["a"] * x + p["b"] - (2.0 * x + 1.0),
      ...             "bc": jnp.stack([p["b"] - 1.0])}
      >>> method = optax_invloss.rba(eta=0.1, gamma=0.9)
      >>> params = {"a": jnp.zeros(()), "b": jnp.zeros(())}
      >>> optimizer = optax.adam(0.05)
      >>> opt_state = optimizer.init(params)
      >>> point_state = method.init(residual_fn(params))
      >>> @jax.jit
      ... def step(params, opt_state, point_state):
      ...     def total(p):
      ...         residuals = residual_fn(p)
      ...         weights, new_state = method.update(residuals, point_state)
      ...         losses = method.loss(residuals, weights)
      ...         return sum(losses.values()), (new_state, weights)
      ...     (_, (point_state, weights)), grads = jax.value_and_grad(
      ...         total, has_aux=True)(params)
      ...     updates, opt_state = optimizer.update(grads, opt_state, params)
      ...     return (optax.apply_updates(params, updates), opt_state,
      ...             point_state, weights)
      >>> for _ in range(200):
      ...     params, opt_state, point_state, weights = step(
      ...         params, opt_state, point_state)
      >>> print(int(point_state.weighting_step), weights["bc"])
      200 [1.]
      >>> loss_fn = lambda p: method.loss(residual_fn(p), weights)  # frozen
      >>> static = optax_invloss.static_weights({"pde": 1.0, "bc": 1.0})
      >>> params, _, info = optax_invloss.run_lbfgs(
      ...     loss_fn, params, static.init(loss_fn(params)), iterations=20)
      >>> print(f"a = {float(params['a']):.3f}, b = {float(params['b']):.3f}")
      a = 2.000, b = 1.000
    """

    init: Callable[..., Any]
    update: Callable[..., Any]
    loss: Callable[..., Any]


def pointwise_loss(residuals: Residuals, weights: Any, *, power: int) -> Any:
    r"""Each term's weighted mean of squared residuals, the weights held constant.

    .. math::

      L_i = \frac{1}{N_i} \sum_j (\lambda_{i,j} r_{i,j})^2 \quad (\text{power} = 2),
      \qquad
      L_i = \frac{1}{N_i} \sum_j \lambda_{i,j} r_{i,j}^2 \quad (\text{power} = 1).

    The weights are wrapped in ``jax.lax.stop_gradient``: the gradient with
    respect to the parameters is that of a fixed weighted least-squares loss.

    Args:
      residuals: pytree by term of per-point residual arrays.
      weights: per-point weights in the same structure and shapes (from a
        per-point method's ``update``; 1 for unweighted terms).
      power: ``2`` for :math:`(\lambda r)^2` (SA-PINN, the RBA PyTorch code) or
        ``1`` for :math:`\lambda r^2` (the RBA JAX code). Keyword only.

    Returns:
      One scalar per term, in the residuals' structure and dtypes, ready for
      :func:`optax_invloss.weighted_sum` or a plain sum.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> residuals = {"pde": jnp.asarray([1.0, 2.0]), "bc": jnp.asarray([3.0])}
      >>> weights = {"pde": jnp.asarray([0.5, 1.0]), "bc": jnp.asarray([1.0])}
      >>> losses = optax_invloss.pointwise_loss(residuals, weights, power=2)
      >>> print({k: float(v) for k, v in losses.items()})  # (0.25 + 4) / 2
      {'bc': 9.0, 'pde': 2.125}
      >>> losses = optax_invloss.pointwise_loss(residuals, weights, power=1)
      >>> print({k: float(v) for k, v in losses.items()})  # (0.5 + 4) / 2
      {'bc': 9.0, 'pde': 2.25}
    """
    check_power(power)
    if jax.tree.structure(residuals) != jax.tree.structure(weights):
        raise ValueError(
            "pointwise_loss: residuals and weights must have the same structure.\n"
            f"  residuals: {jax.tree.structure(residuals)}\n"
            f"  weights:   {jax.tree.structure(weights)}"
        )
    names = _base.term_names(residuals, short=True)
    out = []
    for name, r, w in zip(
        names, jax.tree.leaves(residuals), jax.tree.leaves(weights), strict=True
    ):
        r = jnp.asarray(r)
        w = jax.lax.stop_gradient(jnp.asarray(w)).astype(r.dtype)
        if w.shape != r.shape:
            raise ValueError(
                f"pointwise_loss: the weights of term {name!r} have shape "
                f"{w.shape}, its residuals {r.shape}; they must match."
            )
        out.append(jnp.mean((w * r) ** 2) if power == 2 else jnp.mean(w * r**2))
    return jax.tree.unflatten(jax.tree.structure(residuals), out)


# ----------------------------------------------------------------------------------
# Checks (factory and trace time).


def check_power(power) -> None:
    if isinstance(power, bool) or power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got power = {power!r}.")


def check_terms(terms, argname: str = "terms") -> tuple[str, ...] | None:
    """``None`` or a non-empty tuple of term names; a lone string is one name."""
    if terms is None:
        return None
    if isinstance(terms, str):
        terms = (terms,)
    terms = tuple(terms)
    if not terms or not all(isinstance(t, str) for t in terms):
        raise ValueError(
            f"{argname} must be None (every term) or a non-empty sequence of term "
            f"names, got {argname} = {terms!r}."
        )
    return terms


def _leaf_shape_dtype(leaf):
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        leaf = jnp.asarray(leaf)
        shape, dtype = leaf.shape, leaf.dtype
    return tuple(shape), jnp.dtype(dtype)


def check_residuals(residuals: Residuals, *, method: str) -> dict[str, tuple]:
    """``{name: (shape, dtype)}`` of each term; ValueError naming a bad term."""
    names = _base.term_names(residuals, short=True)
    leaves = jax.tree.leaves(residuals)
    if not leaves:
        raise ValueError(
            f"{method}: residuals must hold at least one term; got an empty pytree "
            f"{residuals!r}."
        )
    out = {}
    for name, leaf in zip(names, leaves, strict=True):
        shape, dtype = _leaf_shape_dtype(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{method}: term {name!r} of the residuals is a scalar; a per-point "
                "method takes each term's array of per-point residuals, of shape "
                "(N,) (reduce nothing), or use a term weighting for scalar losses."
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{method}: term {name!r} of the residuals has dtype {dtype}; "
                "residuals must be floating point."
            )
        out[name] = (shape, dtype)
    return out


def selected_terms(
    residuals: Residuals, terms: tuple[str, ...] | None, *, method: str
) -> dict[str, tuple]:
    """The weighted terms' ``{name: (shape, dtype)}``, in the residuals' order."""
    info = check_residuals(residuals, method=method)
    if terms is None:
        return info
    missing = [t for t in terms if t not in info]
    if missing:
        raise ValueError(
            f"{method}: terms = {terms!r} names {', '.join(map(repr, missing))}, "
            f"which the residuals do not have; their terms are "
            f"{', '.join(map(repr, info))}."
        )
    return {name: v for name, v in info.items() if name in terms}


def state_dtype(dtype) -> jnp.dtype:
    """Weights are kept in the residuals' dtype, at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


# ----------------------------------------------------------------------------------
# One update's view of the residuals.


class Batch(NamedTuple):
    residuals: dict[str, jax.Array]  # weighted terms, stop-gradient, state dtype
    indices: dict[str, jax.Array | None]  # pool positions, or None (all points)
    ok: jax.Array  # () bool: False skips the update


def _check_indices_concrete(idx, name: str, pool: int, method: str) -> None:
    try:
        values = np.asarray(idx)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced: checked at run time (a counted skip)
    if values.size and (values.min() < 0 or values.max() >= pool):
        raise ValueError(
            f"{method}: indices of term {name!r} must be in [0, {pool}) (the pool "
            f"size given to init); got values from {values.min()} to {values.max()}."
        )


def prepare(
    residuals: Residuals,
    stored: Mapping[str, jax.Array],
    indices: Mapping[str, Any] | None,
    *,
    method: str,
    every_term: bool = False,
) -> Batch:
    """Validates residuals (and indices) against the stored weights.

    Raises ValueError, naming the term, for a term the state has but the
    residuals lack (or, when every term is weighted, the reverse), a changed
    number of points, or malformed indices.
    """
    info = check_residuals(residuals, method=method)
    names = list(info)
    missing = [n for n in stored if n not in info]
    if missing:
        raise ValueError(
            f"{method}: the residuals have no term {missing[0]!r}, which the state "
            f"weights; their terms are {', '.join(map(repr, names))}."
        )
    extra = [n for n in info if n not in stored]
    if every_term and extra:
        raise ValueError(
            f"{method}: the residuals have a term {extra[0]!r} that the state was "
            f"not made with; the state weights {', '.join(map(repr, stored))}."
        )
    indices = dict(indices or {})
    unknown = [n for n in indices if n not in info]
    if unknown:
        raise ValueError(
            f"{method}: indices names {unknown[0]!r}, which is not a term of the "
            f"residuals; their terms are {', '.join(map(repr, names))}."
        )
    by_name = dict(zip(names, jax.tree.leaves(residuals), strict=True))
    batch_residuals, batch_indices, ok = {}, {}, jnp.asarray(True)
    for name in names:
        r = jnp.asarray(by_name[name])
        ok = ok & jnp.all(jnp.isfinite(r))
    for name, weights in stored.items():
        r = jax.lax.stop_gradient(jnp.asarray(by_name[name])).astype(weights.dtype)
        idx = indices.get(name)
        if idx is None:
            if r.shape != weights.shape:
                raise ValueError(
                    f"{method}: term {name!r} has residuals of shape {r.shape}, but "
                    f"the state holds weights of shape {weights.shape} (the shape "
                    "given to init). The points of a term are fixed when the state "
                    "is created: keep a fixed collocation set, or draw minibatches "
                    f"from a fixed pool and pass indices={{{name!r}: idx}}."
                )
        else:
            _check_indices_concrete(idx, name, weights.shape[0], method)
            idx = jnp.asarray(idx)
            if not jnp.issubdtype(idx.dtype, jnp.integer) or idx.ndim != 1:
                raise ValueError(
                    f"{method}: indices of term {name!r} must be a 1-D integer array "
                    f"(positions in the pool), got shape {idx.shape}, dtype "
                    f"{idx.dtype}."
                )
            if r.shape != idx.shape + weights.shape[1:]:
                raise ValueError(
                    f"{method}: term {name!r} has residuals of shape {r.shape} but "
                    f"{idx.shape[0]} indices into a pool of weights of shape "
                    f"{weights.shape}; need residuals of shape "
                    f"{idx.shape + weights.shape[1:]}."
                )
            valid = (idx >= 0) & (idx < weights.shape[0])
            ok = ok & jnp.all(valid)
            # Out-of-range positions point past the end: dropped or filled.
            idx = jnp.where(valid, idx, weights.shape[0])
        batch_indices[name] = idx
        batch_residuals[name] = r
    batch_residuals = {
        n: jnp.where(ok, r, jnp.zeros_like(r)) for n, r in batch_residuals.items()
    }
    return Batch(batch_residuals, batch_indices, ok)


def gather(weights: jax.Array, idx: jax.Array | None) -> jax.Array:
    """The stored weights at the batch's points (all of them when ``idx`` is None)."""
    if idx is None:
        return weights
    return weights.at[idx].get(mode="fill", fill_value=0)


def scatter(weights: jax.Array, idx: jax.Array | None, values: jax.Array):
    """``weights`` with the batch's entries replaced by ``values``."""
    if idx is None:
        return values.astype(weights.dtype)
    return weights.at[idx].set(values.astype(weights.dtype), mode="drop")


def scatter_add(like: jax.Array, idx: jax.Array | None, values: jax.Array):
    """Zeros shaped like ``like`` with ``values`` added at the batch's entries."""
    if idx is None:
        return values.astype(like.dtype)
    zeros = jnp.zeros_like(like)
    return zeros.at[idx].add(values.astype(like.dtype), mode="drop")


def weights_out(
    residuals: Residuals, stored: Mapping[str, jax.Array], batch: Batch
) -> Any:
    """Weights in the residuals' structure: stored ones at the batch's points, 1
    for unweighted terms, each in its residuals' dtype."""
    names = _base.term_names(residuals, short=True)
    out = []
    for name, r in zip(names, jax.tree.leaves(residuals), strict=True):
        r = jnp.asarray(r)
        if name in stored:
            w = gather(stored[name], batch.indices[name])
        else:
            w = jnp.ones(r.shape, r.dtype)
        out.append(jax.lax.stop_gradient(w).astype(r.dtype))
    return jax.tree.unflatten(jax.tree.structure(residuals), out)


def check_init_scale(init_scale, terms: Sequence[str] | None) -> None:
    """A number > 0, or a mapping of term names to numbers > 0."""
    scales = init_scale.values() if isinstance(init_scale, Mapping) else [init_scale]
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ValueError(
                f"init_scale must be a number > 0 or a mapping of term names to "
                f"numbers > 0, got init_scale = {init_scale!r}."
            )
    if isinstance(init_scale, Mapping) and terms is not None:
        extra = [t for t in init_scale if t not in terms]
        if extra:
            raise ValueError(
                f"init_scale names {extra[0]!r}, which is not among terms = "
                f"{tuple(terms)!r}."
            )
