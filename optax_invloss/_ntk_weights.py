"""Neural tangent kernel trace weights (Wang, Yu and Perdikaris 2022)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_invloss import _base, _checks, _gradients, _numerics


class NTKWeightsState(NamedTuple):
    """State of :func:`ntk_weights`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32).
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative, or a kernel trace was not finite. Shape ``()``, int32;
        saturates.
    """

    loss_weights: Any
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def kernel_traces(
    residual_fn: Callable,
    params: Any,
    flags: list[bool],
    losses: Any,
    dtype,
    *,
    chunk_size: int | None,
    method: str = "ntk_weights",
    points: Any = None,
) -> tuple[jax.Array, np.ndarray]:
    r"""The NTK trace of each term, :math:`\sum_k \|\partial r_k/\partial\theta\|^2`.

    Returns ``(traces, counts)``: the traces as a vector in the losses' leaf
    order, in ``dtype`` (``inf`` where a trace overflows it), and the number of
    residual entries of each term (a NumPy array). See
    :func:`scaled_kernel_traces`, which the weights are computed from.
    """
    (mantissa, exponent), counts = scaled_kernel_traces(
        residual_fn,
        params,
        flags,
        losses,
        dtype,
        chunk_size=chunk_size,
        method=method,
        points=points,
    )
    return _numerics.scale_by_pow2(mantissa, 2 * exponent), counts


def _row_traces(q: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The sum of rows' squared norms ``q_k 4^(e_k)``, as ``(t, E)``: ``t 4^E``."""
    v, top = _numerics.common_scale(q, e, power=2)
    return jnp.sum(v), top


def scaled_kernel_traces(
    residual_fn: Callable,
    params: Any,
    flags: list[bool],
    losses: Any,
    dtype,
    *,
    chunk_size: int | None,
    method: str = "ntk_weights",
    points: Any = None,
) -> tuple[jax.Array, np.ndarray]:
    r"""The NTK trace of each term, :math:`\sum_k \|\partial r_k/\partial\theta\|^2`.

    With ``points``, see :func:`_point_traces`. Without: one forward pass of
    ``residual_fn`` (a ``jax.vjp``), then one vector-Jacobian product per residual
    entry with a one-hot cotangent, which is the row
    :math:`\partial r_k / \partial\theta` of the Jacobian; each term's rows are
    computed ``chunk_size`` at a time (``jax.lax.map`` with ``batch_size``; all
    at once when ``chunk_size`` is None or covers the term). Returns
    ``((t, E), counts)``: the traces are ``t * 4**E`` (``t`` a vector in the
    losses' leaf order, in ``dtype``; ``E`` one int32 exponent), so that they
    neither overflow nor lose their ratios when the Jacobian's entries are
    large: each row is scaled by a power of two near its largest entry before
    it is squared. ``counts`` is the number of residual entries of each term (a
    NumPy array).
    """
    if points is not None:
        return _point_traces(
            residual_fn, params, flags, losses, dtype, points, chunk_size, method
        )
    g, selected = _gradients.restrict(residual_fn, params, flags)
    residuals, vjp_fn = jax.vjp(g, selected)
    _base.check_structure(residuals, losses, what="the output of residual_fn(params)")
    leaves, treedef = jax.tree.flatten(residuals)
    _check_floating(residuals, method)

    def term_trace(i, residual):
        size = int(np.size(residual))
        if size == 0:
            return jnp.zeros((), dtype), jnp.zeros((), jnp.int32)

        def row_square_norm(k):
            # The one-hot cotangent of entry k of term i, zero elsewhere. It is
            # built on zeros_like(residual) so that it keeps the residual's
            # sharding when the points are sharded over devices.
            one_hot = jnp.arange(size).reshape(jnp.shape(residual)) == k
            cotangent = [jnp.zeros_like(leaf) for leaf in leaves]
            cotangent[i] = cotangent[i] + one_hot.astype(residual.dtype)
            (row,) = vjp_fn(jax.tree.unflatten(treedef, cotangent))
            return _numerics.scaled_square_norm([r.astype(dtype) for r in row])

        return _row_traces(*_map_rows(row_square_norm, jnp.arange(size), chunk_size))

    parts = [term_trace(i, r) for i, r in enumerate(leaves)]
    traces = _numerics.common_scale(
        jnp.stack([t for t, _ in parts]), jnp.stack([e for _, e in parts]), power=2
    )
    return traces, np.asarray([np.size(r) for r in leaves])


def _check_floating(residuals, method: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(residuals)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"{method}: residual {_base.term_name(path)} has dtype "
                f"{leaf.dtype}; residuals must be floating point."
            )


def _map_rows(fn: Callable, xs: jax.Array, chunk_size: int | None) -> jax.Array:
    """``fn`` over the leading axis of ``xs``, ``chunk_size`` rows at a time."""
    if chunk_size is None or chunk_size >= xs.shape[0]:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk_size)


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` resharded to one whole copy per device if its type says it is split.

    Mapping over the points (``lax.map``) needs them whole; under ``jit`` with
    explicitly sharded arrays they may be split over devices.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is not None and any(axis is not None for axis in spec):
        whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        return jax.sharding.reshard(x, whole)
    return x


def _point_traces(
    residual_fn, params, flags, losses, dtype, points, chunk_size, method
) -> tuple[jax.Array, np.ndarray]:
    """The traces from ``residual_fn(params, points)``, one point at a time.

    Entry ``k`` of a term's residuals depends on point ``k`` of that term only
    (the rule of a PINN residual), so its Jacobian row is the gradient of
    ``residual_fn`` evaluated on that one point: ``N`` single-point backward
    passes (vmapped, ``chunk_size`` at a time) instead of ``N`` backward passes
    over all the points.
    """
    _base.check_structure(points, losses, what="points")
    shapes = jax.eval_shape(residual_fn, params, points)
    _base.check_structure(
        shapes, losses, what="the output of residual_fn(params, points)"
    )
    _check_floating(shapes, method)
    point_leaves, point_def = jax.tree.flatten(points)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    for (path, shape), pts in zip(flat, point_leaves, strict=True):
        n = np.shape(pts)[0] if np.ndim(pts) else None
        if n is None or shape.shape[:1] != (n,):
            raise ValueError(
                f"{method}: term {_base.term_name(path)} has points of shape "
                f"{np.shape(pts)} and residuals of shape {shape.shape} from "
                "residual_fn(params, points); with points=, each term's residuals "
                "must have its points along their first axis (entry k computed "
                "from point k only)."
            )
    g, selected = _gradients.restrict(lambda p: p, params, flags)

    def term_trace(i: int) -> jax.Array:
        if np.size(flat[i][1]) == 0:
            return jnp.zeros((), dtype), jnp.zeros((), jnp.int32)

        def row_square_norm(x):
            # The other terms get one dummy point each: their residuals are
            # not used (and not computed: XLA drops the dead code).
            one = [
                jnp.zeros((1, *np.shape(leaf)[1:]), jnp.asarray(leaf).dtype)
                for leaf in point_leaves
            ]
            one[i] = x[None]
            one = jax.tree.unflatten(point_def, one)

            def residual(sel):
                return jax.tree.leaves(residual_fn(g(sel), one))[i]

            rows = jax.jacrev(residual)(selected)
            return _numerics.scaled_square_norm([r.astype(dtype) for r in rows])

        xs = _replicated(jnp.asarray(point_leaves[i]))
        return _row_traces(*_map_rows(row_square_norm, xs, chunk_size))

    parts = [term_trace(i) for i in range(len(point_leaves))]
    traces = _numerics.common_scale(
        jnp.stack([t for t, _ in parts]), jnp.stack([e for _, e in parts]), power=2
    )
    return traces, np.asarray([np.size(shape) for _, shape in flat])


def ntk_weights(
    update_every: int = 1000,
    decay: float = 0.0,
    chunk_size: int | None = 128,
    per_point: bool = False,
    mask: Callable | Any | None = None,
) -> _base.WeightingMethod:
    r"""Neural tangent kernel trace weights.

    Each term :math:`i` has per-point residuals :math:`r_{i,k}(\theta)` (the PDE
    residual at a collocation point, :math:`u - g` at a boundary point, ...) and
    a block :math:`K_i = J_i J_i^\top` of the network's neural tangent kernel,
    with :math:`J_i = \partial r_i / \partial\theta`. Its trace is the sum over
    the points of the squared norm of each residual's gradient, and the weights
    are

    .. math::

      \operatorname{tr} K_i = \sum_{k=1}^{N_i}
        \Big\| \frac{\partial r_{i,k}}{\partial\theta} \Big\|_2^2,
      \qquad
      \hat\lambda_i = \frac{\sum_j \operatorname{tr} K_j}{\operatorname{tr} K_i},
      \qquad \lambda_i \leftarrow \beta\lambda_i + (1 - \beta)\hat\lambda_i,

    so that every weighted block has the same trace: the terms converge at
    comparable rates under gradient descent. For a boundary term
    :math:`r_k = u(x_k) - g(x_k)` the block is the kernel of :math:`u` itself
    (:math:`K_{uu}` in the paper); for the PDE term it is the kernel of the
    residual operator (:math:`K_{rr}`); one rule covers both because the Jacobian
    is taken of the residual as ``residual_fn`` gives it.

    The traces are computed exactly from per-point Jacobian rows, never from
    the gradient of a summed residual (that would be
    :math:`\|\sum_k \partial r_k/\partial\theta\|^2`, a different number).
    Pass the points (recommended): ``update(..., residual_fn=f, points=x)``
    with ``f(params, x)`` returning each term's residuals with the points along
    the first axis, entry :math:`k` computed from point :math:`k` alone (the
    usual ``jax.vmap`` over points). Each row is then the gradient of ``f`` on
    one point, all of them vmapped ``chunk_size`` at a time: one update costs
    about as much as a few training steps. Without ``points``,
    ``residual_fn(params)`` is a black box and each row is one vector-Jacobian
    product of the whole batch with a one-hot cotangent: :math:`N` backward
    passes over all :math:`N` points, a cost that grows as :math:`N^2`. Both
    costs are measured in ``benchmarks/results/overhead_cpu.md``. The paper
    recomputes every 1000 steps, the default here.

    Sum or mean over the points. The trace sums over the points, as in the
    paper, and balances loss terms that are *sums* of squared residuals,
    :math:`L_i = \sum_k r_{i,k}^2`. For a term that is a *mean* over :math:`N_i`
    points, :math:`L_i = \frac{1}{N_i} \sum_k r_{i,k}^2`, gradient descent sees
    the block :math:`K_i / N_i`; two equivalent ways to account for it are to
    return the residuals in sum-of-squares form, :math:`r_{i,k} / \sqrt{N_i}`,
    from ``residual_fn``, or to pass ``per_point=True``, which divides each
    trace by the number of the term's residual entries (padding included: with
    masked, padded batches, use the first way). The two rules agree when every
    term has the same number of points, as in the paper's benchmarks.
    ``decay = 0`` (the default) is the paper's rule; ``decay > 0`` smooths the
    weights as ``optax.ema`` does (the old value weighted by ``decay``).

    Normalisation: none; each :math:`\hat\lambda_i \ge 1` and
    :math:`\sum_i 1/\hat\lambda_i = 1`. First step: the weights start at 1 and are
    computed at step 0. They are recomputed on steps :math:`0, K, 2K, \dots`
    (``update_every = K``) and held in between; the Jacobians are only computed
    on those steps (a ``lax.cond`` on the step counter).

    Bad values. A NaN, infinite or negative loss, or a Jacobian that is not
    finite, skips the update (the state is kept, ``skipped_updates`` goes up by
    one). A term whose trace is zero keeps its weight. The traces are summed
    from Jacobian rows scaled by powers of two and only their ratios are
    formed, so Jacobians of any finite size give finite weights (traces that
    overflow the dtype included). A trace more than the dtype's range below the
    largest (about 1e-38 times it in float32) counts as zero: its term keeps
    its weight.

    Args:
      update_every: recompute the weights every ``update_every`` accepted updates.
        Integer >= 1.
      decay: weight of the old value in the moving average of the weights, in
        ``[0, 1)``; 0 uses the new traces alone.
      chunk_size: number of Jacobian rows computed at once (integer >= 1), or None
        for all at once. Memory grows with it; any value gives the same traces.
      per_point: divide each trace by the number of the term's residual entries
        (for loss terms that are means over unequal numbers of points; see
        above).
      mask: which parameters :math:`\theta` counts: None for all floating-point
        parameters (the paper), a pytree of bools matching ``params``, or a
        function ``params -> such a pytree``.

    Returns:
      A :class:`optax_invloss.WeightingMethod`.
      ``update(losses, state, *, params, residual_fn, points=None)`` needs the
      parameters and the residuals. With ``points`` (a pytree in the structure
      of ``losses``, each leaf an array of one term's points, points along the
      first axis), ``residual_fn(params, points)`` returns that term's
      residuals with the same first axis. Without, ``residual_fn(params)``
      returns a pytree in the structure of ``losses`` whose leaves are arrays of
      per-point residuals (any shape; every entry counts as one point).
      ``losses`` themselves are only checked.

    Examples:
      A linear model :math:`u(x) = w_0 + w_1 x`, boundary residuals
      :math:`u(x) - 1` at :math:`x = 1, 1` (each row :math:`(1, 1)`, trace 4) and
      PDE residuals :math:`2 w_1 x` at :math:`x = 1, 1, 1` (each row
      :math:`(0, 2)`, trace 12):

      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> xb, xr = jnp.ones(2), jnp.ones(3)
      >>> def residual_fn(params):
      ...     w = params["w"]
      ...     return {"bc": w[0] + w[1] * xb - 1.0, "pde": 2.0 * w[1] * xr}
      >>> params = {"w": jnp.asarray([0.3, -0.4])}
      >>> losses = {k: jnp.mean(r**2) for k, r in residual_fn(params).items()}
      >>> method = optax_invloss.ntk_weights()
      >>> weights, state = method.update(
      ...     losses, method.init(losses), params=params, residual_fn=residual_fn)
      >>> print({k: round(float(v), 3) for k, v in weights.items()})  # 16/4, 16/12
      {'bc': 4.0, 'pde': 1.333}

      The same with the points passed, the way to use it on a PINN (the rows
      are computed one point at a time):

      >>> def residual_at(params, points):
      ...     w = params["w"]
      ...     return {"bc": w[0] + w[1] * points["bc"] - 1.0,
      ...             "pde": 2.0 * w[1] * points["pde"]}
      >>> weights, _ = method.update(
      ...     losses, method.init(losses), params=params,
      ...     residual_fn=residual_at, points={"bc": xb, "pde": xr})
      >>> print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 4.0, 'pde': 1.333}

    References:
      Wang, Yu and Perdikaris, `When and why PINNs fail to train: a neural
      tangent kernel perspective <https://arxiv.org/abs/2007.14527>`_, J. Comput.
      Phys. 449, 2022.
    """
    _checks.check_every("update_every", update_every)
    _checks.check_decay("decay", decay)
    if chunk_size is not None:
        _checks.check_integer("chunk_size", chunk_size, 1)
    _checks.check_flag("per_point", per_point)
    _gradients.check_mask(mask)
    name = "ntk_weights"

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        n = len(jax.tree.leaves(losses))
        return NTKWeightsState(
            loss_weights=_base.equal_weights(losses, dtype, total=float(n)),
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, *, params, residual_fn, points=None, **inputs):
        del inputs
        _, ok = _base.prepare(losses, state, NTKWeightsState)
        old = _base.stack(state.loss_weights)
        flags = _gradients.selected_leaves(params, mask, method=name)

        def compute():
            (traces, _), counts = scaled_kernel_traces(
                residual_fn,
                params,
                flags,
                losses,
                old.dtype,
                chunk_size=chunk_size,
                method=name,
                points=points,
            )
            if per_point:
                traces = traces / jnp.asarray(counts, traces.dtype)
            # The traces over one common power of two: only their ratios count.
            estimate = _numerics.ratio_or(jnp.sum(traces), traces, old)
            new = decay * old + (1.0 - decay) * estimate
            return new, _gradients.all_finite(traces, new)

        return _gradients.update_when_due(losses, state, ok, update_every, compute)

    return _base.WeightingMethod(
        init, update, inputs=frozenset({"params", "residual_fn", "points"})
    )
