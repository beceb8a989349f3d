"""Guarded arithmetic for losses and gradients anywhere in the floating-point range.

Losses may be any finite non-negative number of their dtype: zero, denormal, or
close to the largest finite value. The weighting formulas square, subtract,
sum and exponentiate such numbers; done naively, ``3e38 ** 2``, ``3e38 + 3e38``
or ``exp(1e11 - 1e11)`` (whose two operands XLA may round differently in two
fusions) give ``inf`` or ``nan`` although the weights they lead to are finite.
The helpers here keep every intermediate finite:

- values are scaled by powers of two (exact: only the exponent changes) before
  they are squared, summed or differenced, and the scale is carried as an
  integer exponent (:func:`exponent`, :func:`scale_by_pow2`);
- the softmax pins its largest entry at ``exp(0) = 1`` (:func:`softmax`,
  :func:`shifted_logits`), so its sum is at least 1 whatever the rounding;
- ratios have one named contract each (:func:`capped_ratio`,
  :func:`ratio_or`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------------
# Powers of two.


def exponent(x: jax.Array) -> jax.Array:
    """The int32 ``e`` with ``|x| = m 2^e``, ``m`` in ``[0.5, 1)``; 0 for ``x = 0``.

    Right for denormal numbers too (``jnp.frexp`` is not: it returns the
    smallest exponent for all of them).
    """
    x = jnp.abs(x)
    info = jnp.finfo(x.dtype)
    shift = info.nmant + 1
    small = x < info.tiny
    boosted = jnp.where(small, x * jnp.asarray(2.0**shift, x.dtype), x)
    _, e = jnp.frexp(boosted)
    e = e.astype(jnp.int32) - jnp.where(small, shift, 0).astype(jnp.int32)
    return jnp.where(x > 0, e, 0).astype(jnp.int32)


def _pow2(k: jax.Array, dtype) -> jax.Array:
    info = jnp.finfo(dtype)
    k = jnp.clip(k, info.minexp, info.maxexp - 1)
    return jnp.ldexp(jnp.ones((), dtype), k.astype(jnp.int32))


def scale_by_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x * 2**k`` for any integer ``k``; exact unless the result under/overflows.

    Done as two multiplications by normal powers of two, so that ``k`` may lie
    outside the dtype's exponent range (``x`` small and ``k`` large, say) and
    denormal inputs and results are handled (``jnp.ldexp`` is not exact there).
    """
    x = jnp.asarray(x)
    info = jnp.finfo(x.dtype)
    k = jnp.asarray(k, jnp.int32)
    k1 = jnp.clip(k, info.minexp, info.maxexp - 1)
    return x * _pow2(k1, x.dtype) * _pow2(k - k1, x.dtype)


def peak_exponent(x: jax.Array, axis=None) -> jax.Array:
    """:func:`exponent` of ``max |x|`` (along ``axis``); ``x * 2**-e`` is below 1."""
    return exponent(jnp.max(jnp.abs(x), axis=axis))


# ----------------------------------------------------------------------------------
# Softmax.


def softmax(logits: jax.Array) -> jax.Array:
    """A softmax that is finite and sums to 1 for any logits in ``[-inf, +inf)``.

    The entries are shifted by the largest, clipped at 0, and the largest is
    set to exactly 0: its exponential is 1, so the denominator is at least 1
    even when XLA recomputes the logits with different rounding in two places
    (which made ``jax.nn.softmax`` return ``nan`` under ``jax.jit`` for logits
    like ``(1e11, 0)``). All entries ``-inf``: equal weights.
    """
    n = logits.shape[0]
    top = jnp.argmax(logits)
    peak = logits[top]
    some = peak > -jnp.inf
    shifted = logits - jnp.where(some, peak, 0.0)
    shifted = jnp.where(some, jnp.minimum(shifted, 0.0), 0.0)
    shifted = jnp.where(jnp.arange(n) == top, 0.0, shifted)
    e = jnp.exp(shifted)
    return e / jnp.sum(e)


def shifted_logits(x: jax.Array, beta: float, scale_exponent=None) -> jax.Array:
    """``beta * s * x`` minus its largest entry, finite or ``-inf``, never ``nan``.

    ``s = 2**scale_exponent`` (1 when None), so a vector known as ``x * 2**E``
    with ``x`` of moderate size can be passed whole even when ``beta * s * x``
    would overflow. The result is :math:`\\beta s (x_i - x_{top})` with ``top``
    the entry where ``beta * x`` is largest: at most 0, exactly 0 at ``top``
    (``-inf`` where the difference overflows). ``beta`` is a Python number;
    ``beta = 0`` gives zeros. Feed it to :func:`softmax`.
    """
    n = x.shape[0]
    if beta == 0:
        return jnp.zeros_like(x)
    top = jnp.argmax(x if beta > 0 else -x)
    diff = x - x[top]
    if scale_exponent is not None:
        diff = scale_by_pow2(diff, scale_exponent)
    logits = jnp.minimum(diff * beta, 0.0)
    return jnp.where(jnp.arange(n) == top, 0.0, logits)


# ----------------------------------------------------------------------------------
# Slopes of loss histories.


def slopes(history: jax.Array, stencil) -> tuple[jax.Array, jax.Array]:
    """Finite-difference slopes of each row of ``history``, as ``(v, E)``.

    ``history`` has shape ``(n, m)`` (``n`` terms, the last ``m`` values, oldest
    first, finite and non-negative) and ``stencil`` ``m`` coefficients
    :math:`c_j`. The slope of term ``i`` is :math:`s_i = \\sum_j c_j h_{ij}
    = v_i 2^E`, returned as the vector ``v`` (``max |v|`` in ``[0.5, 1)``, or all
    zero) and the int32 exponent ``E``, so that slopes of losses near the
    dtype's largest value do not overflow.

    Each row is scaled by a power of two before the dot product (exact), and a
    slope no larger than the rounding error bound of that dot product,

    .. math::

      |s_i| \\le (m + 1)\\, \\varepsilon \\sum_j |c_j|\\, h_{ij},

    (:math:`\\varepsilon` the dtype's machine epsilon) is set to exactly 0: a
    constant history has slope 0 at every window, however its stencil rounds.
    """
    dtype = history.dtype
    coefficients = jnp.asarray(stencil, dtype)
    row_exponent = peak_exponent(history, axis=1)  # (n,)
    scaled = scale_by_pow2(history, -row_exponent[:, None])  # entries < 1
    raw = scaled @ coefficients
    m = history.shape[1]
    bound = float((m + 1) * jnp.finfo(dtype).eps) * (scaled @ jnp.abs(coefficients))
    raw = jnp.where(jnp.abs(raw) <= bound, 0.0, raw)
    # slope_i = raw_i * 2^row_exponent_i: bring all rows to the largest slope's
    # exponent.
    slope_exponent = jnp.where(raw != 0, exponent(raw) + row_exponent, -(2**30))
    top = jnp.max(slope_exponent)
    top = jnp.where(top == -(2**30), 0, top).astype(jnp.int32)
    v = scale_by_pow2(raw, row_exponent - top)
    return v, top


# ----------------------------------------------------------------------------------
# Ratios.


def capped_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """``numerator / denominator`` of non-negative arrays, finite.

    ``0 / 0`` is 1 (a term that stays at zero has not changed), ``x / 0`` for
    ``x > 0`` and any ratio that would overflow is the dtype's largest finite
    number. The division never sees a zero.
    """
    big = jnp.finfo(jnp.result_type(numerator, denominator)).max
    positive = denominator > 0
    ratio = numerator / jnp.where(positive, denominator, 1.0)
    ratio = jnp.where(positive, ratio, jnp.where(numerator > 0, big, 1.0))
    return jnp.minimum(ratio, big)


def ratio_or(numerator, denominator, fallback):
    """``numerator / denominator`` where ``denominator > 0``, else ``fallback``.

    The division never sees a zero, so neither the value nor its gradient becomes
    NaN or infinite there (the habit of ``optax.safe_norm``).
    """
    positive = denominator > 0
    safe = jnp.where(positive, denominator, jnp.ones_like(denominator))
    return jnp.where(positive, numerator / safe, fallback)


# ----------------------------------------------------------------------------------
# Gradient statistics in scaled form.


def scaled_leaves(leaves: list[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
    """Arrays scaled by one power of two, ``(scaled, e)``: ``leaf = scaled 2^e``.

    ``e`` is the exponent of the largest absolute entry over all the arrays, so
    every scaled entry is below 1 in magnitude and may be squared and summed
    without overflow. A non-finite entry stays non-finite.
    """
    peak = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in leaves]))
    e = exponent(jnp.where(jnp.isfinite(peak), peak, 0.0))
    return [scale_by_pow2(leaf, -e) for leaf in leaves], e


def scaled_square_norm(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``sum_k ||g_k||^2`` over a list of arrays, as ``(q, e)``: the sum is ``q 4^e``.

    The entries are scaled by :func:`scaled_leaves` before they are squared:
    ``q`` is at most the number of entries, and non-finite if an entry is.
    """
    scaled, e = scaled_leaves(leaves)
    return sum(jnp.sum(jnp.square(leaf)) for leaf in scaled), e


def common_scale(mantissas: jax.Array, exponents: jax.Array, power: int = 1):
    """Numbers ``m_i 2^(power e_i)`` as ``(v, E)`` with ``v_i 2^(power E)`` each.

    ``E`` is the largest ``e_i``, so each ``v_i = m_i 2^(power (e_i - E))`` is at
    most ``m_i``; a ratio of two of them is the ratio of the numbers.
    """
    top = jnp.max(exponents)
    return scale_by_pow2(mantissas, power * (exponents - top)), top


def all_finite(*arrays) -> jax.Array:
    """True when every entry of every array is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def hypot_mantissa(q: jax.Array) -> jax.Array:
    """``sqrt(q)`` for ``q >= 0`` with a finite gradient at 0 (``optax.safe_norm``)."""
    positive = q > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, q, 1.0)), 0.0)
