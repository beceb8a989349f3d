"""M-ConFIG: ConFIG on per-term momenta, one term's gradient per step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _aggregation, _base, _checks, _config


class MConFIGState(NamedTuple):
    """State of :func:`m_config`.

    Attributes:
      m_config_next_term: int32 scalar, the index (in the terms' leaf order) of
        the term whose gradient the next update takes; read it with
        :func:`m_config_term`.
      m_config_term_counts: int32 ``(m,)``, gradients seen per term (each
        momentum's own bias-correction count).
      m_config_momenta: the per-term first moments, parameter-shaped with a
        leading axis of size ``m`` on every leaf.
      m_config_second_moment: the shared second moment, parameter-shaped.
      m_config_previous: the previous pseudo-momentum :math:`c(1-\\beta_1^t)`.
      m_config_count: int32 scalar, updates since every term was seen (the
        shared bias-correction count :math:`t`).
      m_config_skipped: int32 scalar, updates refused for a non-finite gradient.
    """

    m_config_next_term: jax.Array
    m_config_term_counts: jax.Array
    m_config_momenta: Any
    m_config_second_moment: Any
    m_config_previous: Any
    m_config_count: jax.Array
    m_config_skipped: jax.Array


def m_config_term(state: Any) -> jax.Array:
    """The index of the term whose gradient the next :func:`m_config` update needs.

    Args:
      state: an :class:`MConFIGState`, an Optax chain state holding one, or a
        Flax ``nnx.Optimizer``'s ``opt_state``.

    Returns:
      An int32 scalar in ``[0, num_terms)``, in the terms' leaf order (sorted
      keys for a dict).

    Examples:
      >>> import jax.numpy as jnp, optax, optax_invloss
      >>> tx = optax.chain(optax_invloss.m_config(num_terms=3), optax.sgd(0.1))
      >>> state = tx.init(jnp.zeros(2))
      >>> print(optax_invloss.m_config_term(state))
      0
    """
    value = optax.tree.get(_base._unwrap_variables(state), "m_config_next_term")
    if value is None:
        raise ValueError("m_config_term: the state holds no m_config state.")
    return value


def m_config(
    num_terms: int,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    length: str = "projection",
) -> optax.GradientTransformationExtraArgs:
    r"""M-ConFIG: ConFIG of per-term momenta, fed one term's gradient per step.

    Step :math:`k` takes the gradient :math:`g` of term :math:`i = k \bmod m`
    only (round robin) and updates that term's first moment
    :math:`m_i \leftarrow \beta_1 m_i + (1-\beta_1) g` with its own count
    :math:`t_i`. Until every term has been seen the update is exactly zero.
    Then, with :math:`t` the steps since,

    .. math::

      c = \mathrm{ConFIG}\big(m_1/(1-\beta_1^{t_1}), \dots, m_m/(1-\beta_1^{t_m})\big),
      \quad q = \frac{c(1-\beta_1^t) - \beta_1 f}{1-\beta_1},\quad
      f \leftarrow c(1-\beta_1^t),

      s \leftarrow \beta_2 s + (1-\beta_2) q^2, \qquad
      \text{update} = \frac{c}{\sqrt{s/(1-\beta_2^t)} + \epsilon} .

    It is an optimizer on its own (Adam-like scaling included): **follow it by
    plain SGD** (``optax.chain(m_config(3), optax.sgd(lr))``); its authors advise
    against Adam after it. The update has the gradients' sign, so ``optax.sgd``
    descends. This follows the authors' ``PseudoMomentumOperator``.

    ``update(grads, state, params=None, *, loss_fn=None)`` takes any one of:

    - the gradient of term :func:`m_config_term` (``state``) alone, in the
      shape of ``params``: the cheap way, one term's backward pass per step;
    - the per-term gradients (a dict by term): the term due is picked;
    - ``loss_fn=`` (``params -> losses``): the due term's gradient is computed
      here, by ``lax.switch`` over the terms (one term's backward pass).

    Args:
      num_terms: the number of loss terms (>= 1).
      b1: decay of the per-term first moments.
      b2: decay of the shared second moment.
      eps: added to the root of the second moment.
      length: ConFIG's length model (see :func:`optax_invloss.config`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`MConFIGState`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax, optax_invloss
      >>> def losses(p):
      ...     return {"a": jnp.sum((p - 1.0) ** 2), "b": 3.0 * jnp.sum(p**2)}
      >>> tx = optax.chain(optax_invloss.m_config(num_terms=2), optax.sgd(0.1))
      >>> params = jnp.array([0.5, 2.0])
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     updates, state = tx.update(None, state, params, loss_fn=losses)
      ...     params = optax.apply_updates(params, updates)
      ...     print(np.asarray(updates, float).round(4) + 0.0)
      [0. 0.]
      [ 0.1 -0.1]
      [ 0.0988 -0.1   ]

    References:
      Liu, Chu and Thuerey, `ConFIG: Towards Conflict-free Training of Physics
      Informed Neural Networks <https://arxiv.org/abs/2408.11104>`_, ICLR 2025.
    """
    if not isinstance(num_terms, int) or isinstance(num_terms, bool) or num_terms < 1:
        raise ValueError(
            f"m_config: num_terms must be a positive int, got num_terms = "
            f"{num_terms!r}."
        )
    _checks.check_decay("b1", b1)
    _checks.check_decay("b2", b2)
    _checks.check_positive("eps", eps)
    if length not in _config.LENGTHS:
        raise ValueError(
            f"m_config: length must be one of {', '.join(map(repr, _config.LENGTHS))}"
            f"; got length = {length!r}."
        )
    m = num_terms

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return MConFIGState(
            m_config_next_term=jnp.zeros((), jnp.int32),
            m_config_term_counts=jnp.zeros((m,), jnp.int32),
            m_config_momenta=jax.tree.map(
                lambda x: jnp.zeros((m, *jnp.shape(x)), jnp.result_type(x)), params
            ),
            m_config_second_moment=zeros,
            m_config_previous=optax.tree.zeros_like(params),
            m_config_count=jnp.zeros((), jnp.int32),
            m_config_skipped=jnp.zeros((), jnp.int32),
        )

    def current_gradient(updates, state, params, loss_fn):
        k = state.m_config_next_term
        if loss_fn is not None:
            if params is None:
                raise ValueError(
                    "m_config: with loss_fn= the parameters are needed: call "
                    "update(grads, state, params, loss_fn=loss_fn)."
                )

            def branch(i):
                return lambda p: jax.grad(lambda q: jax.tree.leaves(loss_fn(q))[i])(p)

            return jax.lax.switch(k, [branch(i) for i in range(m)], params)
        pdef = jax.tree.structure(state.m_config_momenta)
        if jax.tree.structure(updates) == pdef:
            return updates
        terms, _ = _aggregation.split_terms(
            updates,
            params if params is not None else state.m_config_second_moment,
            method="m_config",
        )
        if len(terms) != m:
            raise ValueError(
                f"m_config: got the gradients of {len(terms)} loss terms, but "
                f"num_terms = {m}."
            )
        return jax.tree.map(lambda *xs: jnp.stack(xs)[k], *terms)

    def update_fn(updates, state, params=None, *, loss_fn=None, **extra):
        del extra
        g = current_gradient(updates, state, params, loss_fn)
        k = state.m_config_next_term
        ok = _aggregation._finite_tree(g)
        counts = state.m_config_term_counts.at[k].add(1)
        momenta = jax.tree.map(
            lambda mom, x: mom.at[k].set(b1 * mom[k] + (1 - b1) * x.astype(mom.dtype)),
            state.m_config_momenta,
            g,
        )
        seen = jnp.all(counts > 0)
        t = state.m_config_count + 1
        stacked = jax.tree.leaves(momenta)
        dtype = jnp.result_type(*stacked)
        correction = 1 - jnp.power(jnp.asarray(b1, dtype), counts.astype(dtype))
        correction = jnp.where(counts > 0, correction, 1)
        hats = [
            s / correction.reshape((m,) + (1,) * (s.ndim - 1)).astype(s.dtype)
            for s in stacked
        ]
        w = _config.config_solve(_aggregation.gram(hats), None, length)
        like = state.m_config_second_moment
        c = _aggregation.combine(w, hats, like)
        tf = t.astype(dtype)
        fake_m = jax.tree.map(lambda x: x * (1 - b1**tf).astype(x.dtype), c)
        fake_grad = jax.tree.map(
            lambda f, prev: (f - b1 * prev) / (1 - b1), fake_m, state.m_config_previous
        )
        s = jax.tree.map(
            lambda s, q: b2 * s + (1 - b2) * q * q,
            state.m_config_second_moment,
            fake_grad,
        )
        out = jax.tree.map(
            lambda c, s: (
                c / (jnp.sqrt(s / (1 - b2**tf).astype(s.dtype)) + eps)
            ).astype(c.dtype),
            c,
            s,
        )
        live = ok & seen
        keep = lambda new, old: jax.tree.map(
            lambda a, b: jnp.where(live, a, b), new, old
        )
        new_state = MConFIGState(
            m_config_next_term=jnp.where(ok, (k + 1) % m, k).astype(jnp.int32),
            m_config_term_counts=jnp.where(ok, counts, state.m_config_term_counts),
            m_config_momenta=jax.tree.map(
                lambda a, b: jnp.where(ok, a, b), momenta, state.m_config_momenta
            ),
            m_config_second_moment=keep(s, state.m_config_second_moment),
            m_config_previous=keep(fake_m, state.m_config_previous),
            m_config_count=jnp.where(live, t, state.m_config_count),
            m_config_skipped=state.m_config_skipped
            + jnp.where(ok, 0, 1).astype(jnp.int32),
        )
        out = jax.tree.map(
            lambda x: jnp.where(
                live & _aggregation._finite_tree(out), x, jnp.zeros_like(x)
            ),
            out,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
