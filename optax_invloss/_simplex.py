"""Projection of positive weights onto the capped simplex."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_caps(n: int, min_weight: float, max_weight: float) -> None:
    """Raises ValueError if no n weights in [min_weight, max_weight] sum to 1."""
    if n * min_weight > 1.0 or n * max_weight < 1.0:
        raise ValueError(
            f"No weights can satisfy min_weight = {min_weight!r} and max_weight = "
            f"{max_weight!r} with n = {n} loss terms: n weights that sum to 1 need "
            f"n * min_weight <= 1 <= n * max_weight (here n * min_weight = "
            f"{n * min_weight:g}, n * max_weight = {n * max_weight:g})."
        )


def project_capped_simplex(v: jax.Array, lo: float, hi: float) -> jax.Array:
    r"""Scales and clips positive weights onto ``{w : sum w = 1, lo <= w_i <= hi}``.

    Returns :math:`w_i = \mathrm{clip}(c\, v_i, lo, hi)` with the one scale
    :math:`c > 0` that makes the weights sum to 1. This is the exact projection of
    ``v`` onto the capped simplex in the Kullback-Leibler divergence (the
    minimiser of :math:`\sum_i w_i \log(w_i / v_i)` under the constraints), so the
    weights that are not on a cap keep their ratios: for inverse-loss weights,
    :math:`w_i \propto 1/L_i` still holds among the uncapped terms.

    :math:`g(c) = \sum_i \mathrm{clip}(c v_i, lo, hi)` is non-decreasing and
    piecewise linear in :math:`c`, with kinks at :math:`lo / v_i` and
    :math:`hi / v_i`; ``c`` is found exactly by evaluating :math:`g` at the kinks
    and interpolating linearly on the segment where it crosses 1. The caller
    guarantees ``v > 0`` and ``n * lo <= 1 <= n * hi``.
    """
    kinks = jnp.sort(jnp.concatenate([lo / v, hi / v]))
    g = jnp.sum(jnp.clip(kinks[:, None] * v[None, :], lo, hi), axis=1)
    # The last kink with g <= 1; g(first kink) = n * lo <= 1 by construction.
    k = jnp.clip(jnp.sum(g <= 1.0) - 1, 0, kinks.shape[0] - 2)
    c0, c1 = kinks[k], kinks[k + 1]
    g0, g1 = g[k], g[k + 1]
    slope = jnp.where(g1 > g0, (c1 - c0) / jnp.where(g1 > g0, g1 - g0, 1.0), 0.0)
    c = c0 + (1.0 - g0) * slope
    return jnp.clip(c * v, lo, hi)
