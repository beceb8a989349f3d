"""Projection of positive weights onto the capped simplex."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from optax_invloss import _numerics


def check_caps(n: int, min_weight: float, max_weight: float) -> None:
    """Raises ValueError if no n weights in [min_weight, max_weight] sum to 1."""
    if n * min_weight > 1.0 or n * max_weight < 1.0:
        raise ValueError(
            f"No weights can satisfy min_weight = {min_weight!r} and max_weight = "
            f"{max_weight!r} with n = {n} loss terms: n weights that sum to 1 need "
            f"n * min_weight <= 1 <= n * max_weight (here n * min_weight = "
            f"{n * min_weight:g}, n * max_weight = {n * max_weight:g})."
        )


def project_capped_simplex(
    mantissa: jax.Array, exponent: jax.Array, lo: float, hi: float
) -> jax.Array:
    r"""Scales and clips positive weights onto ``{w : sum w = 1, lo <= w_i <= hi}``.

    The weights are given as :math:`v_i = m_i 2^{e_i}` (``mantissa`` positive
    and of moderate size, ``exponent`` int32), so that weights whose ratios
    span more than the dtype's range (inverse losses from 0 to 3e38 in
    float32) are represented without underflow. Returns
    :math:`w_i = \mathrm{clip}(c\, v_i, lo, hi)` with the one scale :math:`c > 0`
    that makes the weights sum to 1. This is the exact projection of ``v`` onto
    the capped simplex in the Kullback-Leibler divergence (the minimiser of
    :math:`\sum_i w_i \log(w_i / v_i)` under the constraints), so the weights
    that are not on a cap keep their ratios: for inverse-loss weights,
    :math:`w_i \propto 1/L_i` still holds among the uncapped terms.

    :math:`g(c) = \sum_i \mathrm{clip}(c v_i, lo, hi)` is non-decreasing in
    :math:`c`, with kinks at :math:`lo / v_i` and :math:`hi / v_i`. The kinks
    are sorted in the log domain (:math:`\log lo - \log v_i`, all finite), the
    last one with :math:`g \le 1` gives the segment that holds the solution and
    with it which terms sit on the floor, which on the ceiling and which are
    free; the free terms then share what the caps leave,
    :math:`1 - lo\, n_{lo} - hi\, n_{hi}`, in the ratios of their :math:`v_i`,
    computed from the mantissas brought to a common exponent (exact ratios,
    no logarithms). The caller guarantees ``n * lo <= 1 <= n * hi``.
    """
    n = mantissa.shape[0]
    dtype = mantissa.dtype
    log_v = jnp.log(mantissa) + exponent.astype(dtype) * jnp.log(
        jnp.asarray(2.0, dtype)
    )
    lower = (math.log(lo) if lo > 0 else -jnp.inf) - log_v
    upper = math.log(hi) - log_v
    kinks = jnp.sort(jnp.concatenate([lower, upper]))
    g = jnp.sum(jnp.clip(jnp.exp(kinks[:, None] + log_v[None, :]), lo, hi), axis=1)
    # The last kink with g <= 1; g(first kink) = n * lo <= 1 by construction.
    k = jnp.clip(jnp.sum(g <= 1.0) - 1, 0, 2 * n - 2)
    start, end = kinks[k], kinks[k + 1]
    # On the segment (start, end): a term is on the floor if its lower kink is
    # at or after the end, on the ceiling if its upper kink is at or before the
    # start, free otherwise.
    at_lo = (lower >= end) if lo > 0 else jnp.zeros((n,), bool)
    at_hi = (upper <= start) & ~at_lo
    free = ~at_lo & ~at_hi
    rest = 1.0 - lo * jnp.sum(at_lo, dtype=dtype) - hi * jnp.sum(at_hi, dtype=dtype)
    top = jnp.max(jnp.where(free, exponent, jnp.iinfo(jnp.int32).min))
    shares = jnp.where(free, _numerics.scale_by_pow2(mantissa, exponent - top), 0.0)
    total = jnp.sum(shares)
    shares = shares / jnp.where(total > 0, total, 1.0)
    w = jnp.where(at_lo, lo, jnp.where(at_hi, hi, rest * shares))
    return jnp.clip(w, lo, hi).astype(dtype)
