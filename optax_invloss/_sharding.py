"""Globally correct weights when each device sees only its shard of the batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optax_invloss import _base


def global_mean(losses: Any, axis_name: Any, counts: Any = None) -> Any:
    r"""The global value of per-device mean losses, inside ``shard_map``/``pmap``.

    With ``counts=None`` every device holds the same number of points of each term
    and the global mean is the mean over devices (``lax.pmean``). Otherwise each
    device's loss is a mean over ``counts`` points (a scalar, or a pytree like
    ``losses`` with one count per term), and the global mean is
    :math:`\sum_d c_d L_d / \sum_d c_d`, which is right for any split of the batch.
    Both are summed as :math:`\sum_d (c_d / \sum_e c_e) L_d`, so losses up to
    the dtype's largest value do not overflow the sum.

    Args:
      losses: this device's loss terms (a pytree of scalars).
      axis_name: the mapped axis to reduce over (of ``shard_map``, ``pmap`` or
        ``vmap``).
      counts: None, or the number of points behind each of this device's
        losses: a scalar for every term, or a pytree like ``losses``.

    Returns:
      The global losses, the same on every device, in the structure of
      ``losses``.

    Examples:
      Two "devices" as a ``vmap`` axis (``shard_map`` reduces the same way):

      >>> import jax, jax.numpy as jnp, optax_invloss
      >>> local = {"pde": jnp.array([1.0, 3.0]), "bc": jnp.array([0.2, 0.4])}
      >>> mean = jax.vmap(
      ...     lambda l: optax_invloss.global_mean(l, "d"), axis_name="d")(local)
      >>> print({k: [round(float(x), 4) for x in v] for k, v in mean.items()})
      {'bc': [0.3, 0.3], 'pde': [2.0, 2.0]}

      With 1 point of ``pde`` on the first device and 3 on the second:

      >>> counts = {"pde": jnp.array([1.0, 3.0]), "bc": jnp.array([1.0, 1.0])}
      >>> mean = jax.vmap(
      ...     lambda l, c: optax_invloss.global_mean(l, "d", c), axis_name="d"
      ... )(local, counts)
      >>> print(round(float(mean["pde"][0]), 4))  # (1 * 1 + 3 * 3) / 4
      2.5
    """
    # Each device's loss is multiplied by its share of the points (1 / devices,
    # or count / total count) before the sum, so that the sum of losses near the
    # dtype's largest value cannot overflow: it is a convex combination.
    if counts is None:
        devices = jax.lax.psum(1, axis_name)
        return jax.tree.map(
            lambda loss: jax.lax.psum(loss / devices, axis_name), losses
        )
    if not isinstance(counts, dict | list | tuple):
        counts = jax.tree.map(lambda _: counts, losses)

    def reduce(loss, count):
        count = jnp.asarray(count, jnp.asarray(loss).dtype)
        share = count / jax.lax.psum(count, axis_name)
        return jax.lax.psum(loss * share, axis_name)

    return jax.tree.map(reduce, losses, counts)


def sharded(method: _base.WeightingMethod, axis_name: Any) -> _base.WeightingMethod:
    """Makes a weighting method compute global weights inside ``shard_map``.

    Use it when each device computes its loss terms on its own shard of the points
    (inside ``jax.shard_map`` or ``jax.pmap``) and passes those local losses to
    ``update``. Everything the method looks at is reduced over ``axis_name`` first,
    so every device computes the same weights, equal to those of one device that
    sees the whole batch:

    - ``losses`` are replaced by their global mean (see :func:`global_mean`);
    - a ``loss_fn`` keyword input (gradient-based methods) is replaced by the
      function that returns the global mean of its losses, so per-term gradients
      and their statistics are those of the global losses (JAX's ``shard_map``
      differentiates through the collective);
    - NTK trace weights: a ``points`` keyword input is gathered from every
      device (points that are the same on every device are taken once), and
      ``residual_fn(params, points)`` runs on all of them; without ``points``,
      ``residual_fn(params)`` is replaced by the function that gathers every
      device's per-point residuals (residuals that are the same on every
      device, computed from the replicated parameters alone, are taken once).
      Either way the trace is taken over all points, each device computing the
      whole trace (NTK updates are rare, ``update_every`` amortises it);
    - random draws (ReLoBRaLo) come from the key in the state, which is the same
      on every device.

    The keyword input ``counts`` (a scalar, or a pytree like ``losses``) gives the
    number of points each device's losses average over, for batches that are not
    split evenly (padding with a mask, for instance).

    Under plain ``jax.jit`` with sharded arrays (``NamedSharding``) no wrapper is
    needed: the losses are already global means there, computed by XLA.

    Args:
      method: any weighting method of the library.
      axis_name: the mapped axis (or tuple of axes) the batch is split over.

    Returns:
      A :class:`WeightingMethod` with the same state as ``method``; its
      ``inputs`` are ``method.inputs`` plus ``counts``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax_invloss
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> method = optax_invloss.sharded(optax_invloss.inverse_loss(), "data")
      >>> state = method.init({"pde": 0.0, "bc": 0.0})
      >>> @jax.jit  # compiled once; shard_map alone runs op by op, slowly
      ... @jax.shard_map(mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P())
      ... def weights_of(x):  # each device: its own points
      ...     losses = {"pde": jnp.mean(x**2), "bc": jnp.mean(x)}
      ...     return method.update(losses, state)[0]
      >>> x = jax.device_put(jnp.arange(4.0), jax.NamedSharding(mesh, jax.P("data")))
      >>> w = weights_of(x)  # global losses: pde 3.5, bc 1.5
      >>> print({k: round(float(v), 3) for k, v in w.items()})
      {'bc': 0.7, 'pde': 0.3}
    """
    inner_inputs = _base.declared_inputs(method)

    def update(losses, state, *, counts=None, **inputs):
        losses = global_mean(losses, axis_name, counts)
        loss_fn = inputs.get("loss_fn")
        if loss_fn is not None:
            inputs["loss_fn"] = _global_loss_fn(loss_fn, axis_name, counts)
        residual_fn = inputs.get("residual_fn")
        if inputs.get("points") is not None:
            inputs["points"] = jax.tree.map(
                lambda x: _gather(x, axis_name), inputs["points"]
            )
        elif residual_fn is not None:
            inputs["residual_fn"] = _gathered(residual_fn, axis_name)
        return method.update(losses, state, **inputs)

    return _base.WeightingMethod(method.init, update, inputs=inner_inputs | {"counts"})


def _global_loss_fn(loss_fn: Callable, axis_name, counts) -> Callable:
    return lambda params: global_mean(loss_fn(params), axis_name, counts)


def _varies(x, axis_name) -> bool:
    """Whether ``x`` is typed as varying over ``axis_name`` inside ``shard_map``.

    True when JAX does not say (``pmap``, or a JAX without varying-axis types).
    """
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    varying = manual.varying if manual is not None else getattr(aval, "vma", None)
    if varying is None:
        return True
    axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    return bool(set(axes) & set(varying))


def _gathered(residual_fn: Callable, axis_name) -> Callable:
    """``residual_fn`` with every device's per-point residuals gathered.

    A residual that varies over the axis is gathered and then averaged over the
    devices (``pmean``): the copies are equal, so the value is the gathered one,
    but it is typed as the same on every device, and its transpose hands each
    device exactly its own slice of a cotangent (a plain ``all_gather`` of a
    varying value transposes to a sum over devices, which would scale every
    Jacobian row by the number of devices). A residual that is already the same
    on every device (one computed from the replicated parameters alone, say) is
    not gathered, which would count it once per device.
    """

    def gathered(params):
        return jax.tree.map(lambda r: _gather(r, axis_name), residual_fn(params))

    return gathered


def _gather(x, axis_name):
    """Every device's ``x`` (tiled along the first axis), the same on all of them."""
    if not _varies(x, axis_name):
        return x
    return jax.lax.pmean(jax.lax.all_gather(x, axis_name, tiled=True), axis_name)
