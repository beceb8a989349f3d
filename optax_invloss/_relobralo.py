"""ReLoBRaLo: relative loss balancing with random lookback."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_invloss import _base, _checks, _numerics


class ReLoBRaLoState(NamedTuple):
    """State of :func:`relobralo`.

    Attributes:
      loss_weights: the current weights, in the losses' structure (scalars in the
        state dtype: the losses' dtype, at least float32). They sum to ``n``.
      initial_losses: the losses of the first accepted update, :math:`L(0)`, the
        reference of the random lookback.
      previous_losses: the losses of the latest accepted update, :math:`L(t-1)`
        for the next one.
      lookback_key: the PRNG key of the Bernoulli draws, as raw key data
        (``jax.random.key_data``) so that the state is plain arrays. Shape
        ``(2,)``, uint32, for the default threefry key.
      weighting_step: number of accepted updates. Shape ``()``, int32; saturates.
      skipped_updates: number of updates refused because a loss was NaN, infinite
        or negative. Shape ``()``, int32; saturates.
    """

    loss_weights: Any
    initial_losses: Any
    previous_losses: Any
    lookback_key: jax.Array  # shape=(2,), dtype=jnp.uint32 for threefry keys.
    weighting_step: jax.Array  # shape=(), dtype=jnp.int32.
    skipped_updates: jax.Array  # shape=(), dtype=jnp.int32.


def _typed_key(key) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or raw uint32 key data."""
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if not hasattr(key, "dtype"):
        raise ValueError(
            f"key must be an int seed or a JAX PRNG key, got key = {key!r}."
        )
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"key must be a single PRNG key, got an array of keys of shape "
                f"{key.shape}."
            )
        return key
    if key.dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)
    raise ValueError(
        "key must be an int seed, a key from jax.random.key or raw key data "
        f"from jax.random.PRNGKey, got an array of dtype {key.dtype}."
    )


def balance(losses: jax.Array, reference: jax.Array, temperature: float):
    """``n * softmax(L_i / (T * L_i(ref)))``; see :func:`optax_invloss.relobralo`."""
    ratio = _numerics.capped_ratio(losses, reference)
    logits = _numerics.shifted_logits(ratio, 1.0 / temperature)
    return losses.shape[0] * _numerics.softmax(logits)


def _keep_history(lookback: float):
    """``bits -> rho``: 1 with probability ``lookback`` for uniform uint32 bits."""
    threshold = round(lookback * 2.0**32)
    if threshold >= 2**32:
        return lambda bits: jnp.ones((), bool)
    return lambda bits: bits < jnp.uint32(threshold)


def relobralo(
    alpha: float = 0.999,
    temperature: float = 0.1,
    lookback: float = 0.9999,
    key: Any = 0,
) -> _base.WeightingMethod:
    r"""ReLoBRaLo: relative loss balancing with random lookback.

    Each term is weighted by how little its loss has fallen relative to the
    others, measured against the previous step and, at random moments, against
    the start of training:

    .. math::

      \lambda^{\mathrm{bal}}_i(t, t') = n \,
        \frac{\exp\big(L_i(t) / (T L_i(t'))\big)}
             {\sum_j \exp\big(L_j(t) / (T L_j(t'))\big)},

      \lambda_i(t) = \alpha \big(\rho_t \lambda_i(t-1)
        + (1 - \rho_t) \lambda^{\mathrm{bal}}_i(t, 0)\big)
        + (1 - \alpha) \lambda^{\mathrm{bal}}_i(t, t-1),
      \qquad \rho_t \sim \mathrm{Bernoulli}(\mathbb{E}[\rho]),

    with :math:`\alpha` = ``alpha``, :math:`T` = ``temperature`` and
    :math:`\mathbb{E}[\rho]` = ``lookback``. Every :math:`\lambda^{\mathrm{bal}}`
    sums to :math:`n` and :math:`\lambda(0) = 1`, so **the weights sum to n**
    (the number of terms) at every step. A term whose loss stalls while the
    others fall has the larger ratio and takes weight from them; a draw of
    :math:`\rho_t = 0` (probability ``1 - lookback``) replaces the accumulated
    history by the balance relative to the initial losses.

    Special cases: ``lookback = 1`` never looks back, and the weights are an
    exponential moving average of the step-wise balance,
    :math:`\lambda(t) = \alpha \lambda(t-1) + (1 - \alpha)
    \lambda^{\mathrm{bal}}(t, t-1)`; ``lookback = 0`` always looks back and
    keeps no history, :math:`\lambda(t) = \alpha \lambda^{\mathrm{bal}}(t, 0) +
    (1 - \alpha) \lambda^{\mathrm{bal}}(t, t-1)`; ``alpha = 0`` is the step-wise
    balance alone.

    First steps, as in the paper. ``init`` gives weights of 1 each. The first
    accepted update records its losses as :math:`L(0)` and as the previous
    losses and returns weights of 1 each (there is no ratio yet); from the second
    on the formula above applies, with :math:`\lambda(0) = 1`.

    Randomness. The key is stored in the state (as raw key data) and split on
    every update, so a run is reproducible from the key alone, the same on every
    device, and a checkpoint resumes the same sequence of draws. A skipped update
    does not consume a draw. One split per update is the only random-number
    work: :math:`\rho_t = 1` when the first 32-bit word of the split-off key's
    data (uniformly distributed bits) is below
    :math:`\mathrm{round}(\mathbb{E}[\rho]\, 2^{32})`, so
    :math:`P(\rho_t = 1)` is ``lookback`` within :math:`2^{-33}` (exactly 0
    and 1 at the ends), without a second PRNG call for the draw.

    Where the authors' code differs from the paper, this implements the paper:
    the authors' training script uses :math:`\alpha = 1` on the first step and
    :math:`\alpha = 0` on the second, and records as :math:`L(0)` the losses of
    the *second* step; here :math:`\alpha` is constant and :math:`L(0)` is the
    first losses. Ratios: the code adds ``1e-12`` to :math:`T L_i(t')`; here the
    ratio is exact, with ``0 / 0`` counted as 1 and ``x / 0`` as the largest
    finite number (that term then takes the whole step-wise share).

    Defaults. ``alpha = 0.999``, ``temperature = 0.1`` and ``lookback =
    0.9999`` (:math:`\mathbb{E}[\rho]`). The authors' training script has
    other command-line defaults (:math:`T = 1`, :math:`\mathbb{E}[\rho] = 1`,
    i.e. no lookback); the values behind the paper's results are in its
    hyperparameter table, and depend on the problem.

    Bad values. If any loss is NaN, infinite or negative, the update is skipped:
    the weights, the reference losses, the key and the step counter keep their
    values and ``skipped_updates`` goes up by one.

    Args:
      alpha: weight of the history (the previous weights, or the lookback to
        :math:`L(0)`) against the step-wise balance. In ``[0, 1]``.
      temperature: the softmax temperature :math:`T`; smaller values push the
        weights toward the term with the largest ratio. Must be > 0.
      lookback: :math:`\mathbb{E}[\rho]`, the probability of keeping the history
        at each step (``1 - lookback`` is the probability of looking back to
        :math:`L(0)`). In ``[0, 1]``.
      key: the seed of the Bernoulli draws: an int, a key from
        ``jax.random.key`` or raw key data from ``jax.random.PRNGKey``. The
        default is the fixed seed 0, so runs are reproducible unless asked
        otherwise.

    Returns:
      A :class:`optax_invloss.WeightingMethod`. ``update(losses, state)`` needs no
      keyword inputs (others are accepted and ignored). The weights sum to ``n``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax_invloss
      >>> method = optax_invloss.relobralo(alpha=0.5, temperature=1.0, lookback=1.0)
      >>> state = method.init({"pde": 0.0, "bc": 0.0})
      >>> for pde, bc in [(1.0, 1.0), (0.5, 1.0)]:
      ...     weights, state = method.update({"pde": pde, "bc": bc}, state)
      ...     print({k: round(float(v), 3) for k, v in weights.items()})
      {'bc': 1.0, 'pde': 1.0}
      {'bc': 1.122, 'pde': 0.878}

      On the second update ``pde`` has halved and ``bc`` has not: the step-wise
      balance is :math:`2 e^{1} / (e^{0.5} + e^{1}) = 1.245` for ``bc``, and
      with ``lookback = 1`` the weight is :math:`0.5 \cdot 1 + 0.5 \cdot 1.245`.

    References:
      Bischof and Kraus, `Multi-Objective Loss Balancing for Physics-Informed
      Deep Learning <https://arxiv.org/abs/2110.09813>`_, 2021.
    """
    _checks.check_range("alpha", alpha, 0, 1)
    _checks.check_positive("temperature", temperature)
    _checks.check_range("lookback", lookback, 0, 1)
    typed_key = _typed_key(key)
    impl = jax.random.key_impl(typed_key)
    key_data = jax.random.key_data(typed_key)
    keep_history = _keep_history(lookback)

    def init(losses):
        _base.check_losses(losses)
        dtype = _base.state_dtype(losses)
        return ReLoBRaLoState(
            loss_weights=_base.equal_weights(
                losses, dtype, total=len(jax.tree.leaves(losses))
            ),
            initial_losses=_base.zeros_like_losses(losses, dtype),
            previous_losses=_base.zeros_like_losses(losses, dtype),
            lookback_key=key_data,
            weighting_step=_base.counter(),
            skipped_updates=_base.counter(),
        )

    def update(losses, state, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, ReLoBRaLoState)
        first = state.weighting_step == 0
        initial = jnp.where(first, vector, _base.stack(state.initial_losses))
        previous = jnp.where(first, vector, _base.stack(state.previous_losses))
        next_key, draw_key = jax.random.split(
            jax.random.wrap_key_data(state.lookback_key, impl=impl)
        )
        # The split-off key's data are uniform random bits: the draw needs no
        # second PRNG call (each one is a loop of threefry rounds on CPU).
        bits = jax.random.key_data(draw_key).reshape(-1)[0]
        rho = keep_history(bits).astype(vector.dtype)
        history = rho * _base.stack(state.loss_weights) + (1.0 - rho) * balance(
            vector, initial, temperature
        )
        weights = alpha * history + (1.0 - alpha) * balance(
            vector, previous, temperature
        )
        weights = jnp.where(first, jnp.ones_like(weights), weights)
        return _base.finish(
            losses,
            state,
            ok,
            loss_weights=weights,
            initial_losses=initial,
            previous_losses=vector,
            lookback_key=jax.random.key_data(next_key),
        )

    return _base.WeightingMethod(init, update)
