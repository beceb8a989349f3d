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
    :math:`c`, with kinks at :math:`lo / v_i` and :math:`hi / v_i` (taken in
    the log domain, :math:`\log lo - \log v_i`, all finite). :math:`g` is
    evaluated at every kink: a term sits on the floor where :math:`g > 1` at
    its lower kink (the solution is below it), on the ceiling where
    :math:`g \le 1` at its upper kink, and is free otherwise (no sort, no
    comparison of kinks); the free terms then share what
    the caps leave, :math:`1 - lo\, n_{lo} - hi\, n_{hi}`, in the ratios of
    their :math:`v_i`, computed from the mantissas brought to a common exponent
    (exact ratios, no logarithms). A ceiling that cannot bind,
    :math:`hi \ge 1 - (n - 1)\, lo` (every other weight is at least
    :math:`lo`), is left out, and with it the :math:`n` upper kinks. The
    caller guarantees ``n * lo <= 1 <= n * hi``.
    """
    n = mantissa.shape[0]
    dtype = mantissa.dtype
    log_v = jnp.log(mantissa) + exponent.astype(dtype) * jnp.log(
        jnp.asarray(2.0, dtype)
    )
    floor = lo > 0
    ceiling = hi < 1.0 - (n - 1) * lo
    kinks = ([math.log(lo) - log_v] if floor else []) + (
        [math.log(hi) - log_v] if ceiling else []
    )
    at_lo = jnp.zeros((n,), bool)
    at_hi = jnp.zeros((n,), bool)
    if kinks:
        kinks = jnp.concatenate(kinks)
        g = jnp.sum(jnp.clip(jnp.exp(kinks[:, None] + log_v[None, :]), lo, hi), axis=1)
        # g is non-decreasing: the kinks with g <= 1 are those at or before the
        # segment that holds the solution, the others at or after its end. A
        # term is on the floor if its lower kink is after the segment, on the
        # ceiling if its upper kink is before it. Read from g, not by comparing
        # kinks: XLA may round a kink differently where it is recomputed.
        below = g <= 1.0
        if floor:
            at_lo = ~below[:n]
        if ceiling:
            at_hi = below[-n:] & ~at_lo
    free = ~at_lo & ~at_hi
    rest = 1.0 - lo * jnp.sum(at_lo, dtype=dtype) - hi * jnp.sum(at_hi, dtype=dtype)
    top = jnp.max(jnp.where(free, exponent, jnp.iinfo(jnp.int32).min))
    shares = jnp.where(free, _numerics.scale_by_pow2(mantissa, exponent - top), 0.0)
    total = jnp.sum(shares)
    shares = shares / jnp.where(total > 0, total, 1.0)
    w = jnp.where(at_lo, lo, jnp.where(at_hi, hi, rest * shares))
    return jnp.clip(w, lo, hi).astype(dtype)
