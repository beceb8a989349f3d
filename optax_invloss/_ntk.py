"""Neural tangent kernel trace weights (Wang, Yu and Perdikaris 2022)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_invloss import _base, _gradients


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
) -> tuple[jax.Array, np.ndarray]:
    r"""The NTK trace of each term, :math:`\sum_k \|\partial r_k/\partial\theta\|^2`.

    One forward pass of ``residual_fn`` (a ``jax.vjp``), then one vector-Jacobian
    product per residual entry with a one-hot cotangent, which is the row
    :math:`\partial r_k / \partial\theta` of the Jacobian; each term's rows are
    computed ``chunk_size`` at a time (``jax.lax.map`` with ``batch_size``; all
    at once when ``chunk_size`` is None or covers the term). Returns
    ``(traces, counts)``: the traces as a vector in the losses' leaf order, in
    ``dtype``, and the number of residual entries of each term (a NumPy array).
    """
    g, selected = _gradients.restrict(residual_fn, params, flags)
    residuals, vjp_fn = jax.vjp(g, selected)
    _base.check_structure(residuals, losses, what="the output of residual_fn(params)")
    leaves, treedef = jax.tree.flatten(residuals)
    for path, leaf in jax.tree_util.tree_flatten_with_path(residuals)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"{method}: residual {jax.tree_util.keystr(path)} has dtype "
                f"{leaf.dtype}; residuals must be floating point."
            )

    def term_trace(i, residual):
        size = int(np.size(residual))
        if size == 0:
            return jnp.zeros((), dtype)

        def row_square_norm(k):
            # The one-hot cotangent of entry k of term i, zero elsewhere. It is
            # built on zeros_like(residual) so that it keeps the residual's
            # sharding when the points are sharded over devices.
            one_hot = jnp.arange(size).reshape(jnp.shape(residual)) == k
            cotangent = [jnp.zeros_like(leaf) for leaf in leaves]
            cotangent[i] = cotangent[i] + one_hot.astype(residual.dtype)
            (row,) = vjp_fn(jax.tree.unflatten(treedef, cotangent))
            return _gradients.sum_of_squares([r.astype(dtype) for r in row])

        index = jnp.arange(size)
        if chunk_size is None or chunk_size >= size:
            rows = jax.vmap(row_square_norm)(index)
        else:
            rows = jax.lax.map(row_square_norm, index, batch_size=chunk_size)
        return jnp.sum(rows)

    traces = jnp.stack([term_trace(i, r) for i, r in enumerate(leaves)])
    return traces, np.asarray([np.size(r) for r in leaves])


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

    The traces are computed exactly from per-point Jacobian rows (one
    vector-Jacobian product per residual entry, ``chunk_size`` at a time so that
    memory stays bounded), never from the gradient of a summed residual (that
    would be :math:`\|\sum_k \partial r_k/\partial\theta\|^2`, a different
    number). The cost of one update is about :math:`N` backward passes of
    ``residual_fn`` over all :math:`N` residual entries, so it grows as
    :math:`N^2`; the paper recomputes every 1000 steps, the default here.

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

    Bad values. A NaN, infinite or negative loss, or a trace that is not finite,
    skips the update (the state is kept, ``skipped_updates`` goes up by one). A
    term whose trace is zero keeps its weight.

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
      ``update(losses, state, *, params, residual_fn)`` needs the parameters and
      ``residual_fn(params)``, which returns a pytree in the structure of
      ``losses`` whose leaves are arrays of per-point residuals (any shape; every
      entry counts as one point). ``losses`` themselves are only checked.

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

    References:
      Wang, Yu and Perdikaris, `When and why PINNs fail to train: a neural
      tangent kernel perspective <https://arxiv.org/abs/2007.14527>`_, J. Comput.
      Phys. 449, 2022.
    """
    _base.check_every("update_every", update_every)
    _base.check_decay("decay", decay)
    if chunk_size is not None:
        _base.check_every("chunk_size", chunk_size)
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

    def update(losses, state, *, params, residual_fn, **inputs):
        del inputs
        _, ok = _base.prepare(losses, state)
        old = _base.stack(state.loss_weights)
        flags = _gradients.selected_leaves(params, mask, method=name)

        def compute():
            traces, counts = kernel_traces(
                residual_fn,
                params,
                flags,
                losses,
                old.dtype,
                chunk_size=chunk_size,
                method=name,
            )
            if per_point:
                traces = traces / jnp.asarray(counts, traces.dtype)
            estimate = _gradients.safe_ratio(jnp.sum(traces), traces, old)
            new = decay * old + (1.0 - decay) * estimate
            return new, _gradients.all_finite(traces, new)

        def hold():
            return old, jnp.asarray(True)

        due = _base.is_due(state.weighting_step, update_every)
        new, finite = jax.lax.cond(due, compute, hold)
        new_state = state._replace(loss_weights=_base.unstack(new, state.loss_weights))
        state = _base.finish(ok & finite, new_state, state)
        return _base.unstack(_base.stack(state.loss_weights), losses), state

    return _base.WeightingMethod(init, update)
