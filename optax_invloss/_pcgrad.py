"""PCGrad: project each term's gradient off the gradients it conflicts with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _aggregation

ORDERS = ("fixed", "random")
REDUCTIONS = ("sum", "mean")


def pcgrad_solve(g: jax.Array, order: jax.Array, reduction: str = "sum") -> jax.Array:
    """PCGrad's weights from ``G`` and an ``(m, m)`` visiting order (row i for g_i).

    Each projected gradient is kept as coefficients on the original gradients,
    so every dot product comes from ``G``.
    """
    m = g.shape[0]
    diag = jnp.diagonal(g)
    eye = jnp.eye(m, dtype=g.dtype)

    def project(i, row_order):
        def body(k, coef):
            j = row_order[k]
            dot = coef @ g[:, j]  # g_i' . g_j
            hit = (j != i) & (dot < 0) & (diag[j] > 0)
            step = jnp.where(hit, dot / jnp.where(diag[j] > 0, diag[j], 1), 0)
            return coef - step * eye[j]

        return jax.lax.fori_loop(0, m, body, eye[i])

    coefs = jax.vmap(project)(jnp.arange(m), order)
    w = jnp.sum(coefs, axis=0)
    return w / m if reduction == "mean" else w


def pcgrad(
    *,
    order: str = "fixed",
    reduction: str = "sum",
    seed: int = 0,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""PCGrad: gradient surgery, each gradient projected off those it conflicts with.

    For each term :math:`i`, start from :math:`g_i' = g_i` and visit the other
    terms :math:`j` in turn; when :math:`g_i' \cdot g_j < 0`,

    .. math::

      g_i' \leftarrow g_i' - \frac{g_i' \cdot g_j}{|g_j|^2}\, g_j

    (always onto the original :math:`g_j`). The update is
    :math:`\sum_i g_i'` (or the mean). Every :math:`g_i'` is kept as
    coefficients on the original gradients, so the work is :math:`O(m^3)` on
    :math:`G` and the update is one weighted sum :math:`J^\top w`.

    The official TensorFlow code shuffles the task list but discards the result,
    so its order is fixed (``order="fixed"``, the default here: ``j = 0, 1,
    ...``); the PyTorch ports draw a random order per term (``order="random"``:
    a fresh permutation per term on every refresh, from the PRNG key in the
    state, seeded by ``seed``). The official code sums the projected gradients
    (``reduction="sum"``, default); some ports take the mean.

    Args:
      order: ``"fixed"`` or ``"random"``.
      reduction: ``"sum"`` or ``"mean"`` of the projected gradients.
      seed: seeds the PRNG key for ``order="random"``.
      num_terms: the number of loss terms; needed for ``update_every > 1``.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights; no-conflict surgery on
        refresh steps only).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.pcgrad()
      >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> print(np.asarray(update, float).round(4))
      [0.5 1.5]

    References:
      Yu et al., `Gradient Surgery for Multi-Task Learning
      <https://arxiv.org/abs/2001.06782>`_, NeurIPS 2020.
    """
    if order not in ORDERS:
        raise ValueError(
            f"pcgrad: order must be 'fixed' or 'random'; got order = {order!r}."
        )
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"pcgrad: reduction must be 'sum' or 'mean'; got reduction = {reduction!r}."
        )

    def solve(g, previous, key):
        del previous
        m = g.shape[0]
        if order == "fixed":
            visit = jnp.broadcast_to(jnp.arange(m), (m, m))
        else:
            keys = jax.random.split(key, m)
            visit = jax.vmap(lambda k: jax.random.permutation(k, m))(keys)
        return pcgrad_solve(g, visit, reduction)

    return _aggregation.aggregator(
        "pcgrad", solve, num_terms=num_terms, update_every=update_every, seed=seed
    )
