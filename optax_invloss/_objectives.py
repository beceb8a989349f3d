r"""Fixed objectives for line-search optimizers: the ``value_fn`` of a phase.

A line search (``optax.lbfgs``, ``optax.scale_by_backtracking_linesearch``)
evaluates the objective itself, through the ``value_fn`` it is given. These
functions build it from the same ``loss_fn`` and weights that give the
gradient, so the line search and the gradient see one objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optax_invloss import _base

LossFn = Callable[[Any], Any]  # params -> pytree of scalar losses


def weighted_objective(
    loss_fn: LossFn, weights: _base.Weights
) -> Callable[[Any], jax.Array]:
    r"""The ``value_fn`` :math:`p \mapsto \sum_i w_i L_i(p)` for fixed weights.

    Build the value that the line search calls and the gradient passed to the
    optimizer from this one function, so that both are of the same objective
    with the same weights::

      value_fn = optax_invloss.weighted_objective(loss_fn, weights)
      value, grad = optax.value_and_grad_from_state(value_fn)(params, state=s)
      updates, s = opt.update(grad, s, params, value=value, grad=grad,
                              value_fn=value_fn)

    The weights are held constant (:func:`optax_invloss.weighted_sum` stops
    their gradient). ``value_fn`` takes only the parameters, so the line search
    never needs extra keyword arguments: close over a fixed batch in
    ``loss_fn``.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of scalar loss terms.
      weights: the weights, in the structure of the losses (for example
        ``optax_invloss.loss_weights(opt_state)``).

    Returns:
      ``value_fn(params) -> scalar``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> loss_fn = lambda p: {"pde": p**2, "bc": (p - 1.0) ** 2}
      >>> value_fn = optax_invloss.weighted_objective(
      ...     loss_fn, {"pde": 0.25, "bc": 0.75})
      >>> print(value_fn(jnp.asarray(2.0)))  # 0.25 * 4 + 0.75 * 1
      1.75
    """

    def value_fn(params):
        return _base.weighted_sum(loss_fn(params), weights)

    return value_fn


def log_objective(loss_fn: LossFn, *, eps: float = 1e-12) -> Callable[[Any], jax.Array]:
    r"""The ``value_fn`` :math:`p \mapsto \sum_i \log(L_i(p) + \epsilon)`.

    The fixed objective whose gradient is parallel to the gradient of the
    inverse-loss weighted total: with the bare formula's weights
    :math:`w_i = (1/L_i) / \sum_j (1/L_j)` held constant,
    :math:`\nabla \sum_i w_i L_i = (\sum_j 1/L_j)^{-1} \nabla \sum_i \log L_i`
    (derived in :func:`optax_invloss.inverse_loss`), exactly for
    :math:`\epsilon = 0` and no caps. The factor :math:`(\sum_j 1/L_j)^{-1}`
    changes from point to point; a line search absorbs it into the step length,
    so following re-weighted gradients is, up to step lengths, descent on this
    one function, which L-BFGS can minimise directly.

    :math:`\epsilon > 0` bounds the objective below by :math:`n \log \epsilon`
    and each term's effective weight by :math:`1/\epsilon`, as the ``eps`` of
    :func:`optax_invloss.inverse_loss` does; the default is that method's. With
    :math:`\epsilon = 0` one term that reaches zero sends the objective to
    :math:`-\infty` whatever the others do.

    It is the fixed objective of the *bare* formula (no caps, no average, every
    step), and has the same runaway mode: lowering a term that is easy to drive
    to zero by a factor of 10 is worth as much as lowering a hard one by 10
    (``benchmarks/results/lbfgs_policies.md`` has the runs). While a cap of
    ``inverse_loss`` binds, the capped weighted gradient is not this
    objective's. Prefer frozen weights unless the bare formula is known to
    behave on your problem.

    Args:
      loss_fn: ``loss_fn(params) -> losses``, a pytree of non-negative scalar
        loss terms.
      eps: added to each loss inside the logarithm. Must be >= 0.

    Returns:
      ``value_fn(params) -> scalar``, in the promoted dtype of the losses.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import optax_invloss
      >>> loss_fn = lambda p: {"pde": p**2, "bc": 0.01 * (p - 1.0) ** 2}
      >>> value_fn = optax_invloss.log_objective(loss_fn, eps=0.0)
      >>> print(f"{float(value_fn(jnp.asarray(2.0))):.4f}")  # log 4 + log 0.01
      -3.2189
    """
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got eps = {eps!r}.")

    def value_fn(params):
        losses = loss_fn(params)
        _base.check_losses(losses, argname="loss_fn(params)")
        return sum(jnp.log(loss + eps) for loss in jax.tree.leaves(losses))

    return value_fn
