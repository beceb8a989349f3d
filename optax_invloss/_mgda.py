"""MGDA and CAGrad: weights on the simplex from a small convex problem on ``G``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optax_invloss import _aggregation

NORMALIZATIONS = ("none", "l2")


def _check_iterations(name: str, iterations) -> None:
    if (
        not isinstance(iterations, int)
        or isinstance(iterations, bool)
        or iterations < 1
    ):
        raise ValueError(
            f"{name}: iterations must be a positive int, got iterations = "
            f"{iterations!r}."
        )


def _check_exact(name: str, max_exact_terms) -> None:
    if (
        not isinstance(max_exact_terms, int)
        or isinstance(max_exact_terms, bool)
        or not 1 <= max_exact_terms <= 12
    ):
        raise ValueError(
            f"{name}: max_exact_terms must be an int in [1, 12] (the exact solve "
            f"enumerates 2^m supports), got max_exact_terms = {max_exact_terms!r}."
        )


def min_norm_simplex(
    g: jax.Array, iterations: int = 100, max_exact_terms: int = 8
) -> jax.Array:
    r"""``argmin_{alpha in simplex} alpha^T G alpha`` over the active terms.

    Two terms: the closed form. Up to ``max_exact_terms``: exact, by enumerating
    the supports. More: Frank-Wolfe from the uniform point with an exact line
    search, a fixed number of iterations. Terms with a zero gradient are left
    out (else the minimum would be zero on them).
    """
    m = g.shape[0]
    _, active = _aggregation.norms(g)
    count = jnp.sum(active)
    if m == 2:
        denom = g[0, 0] + g[1, 1] - 2 * g[0, 1]
        a0 = jnp.clip((g[1, 1] - g[0, 1]) / jnp.where(denom > 0, denom, 1), 0, 1)
        a0 = jnp.where(denom > 0, a0, 0.5)
        both = jnp.stack([a0, 1 - a0])
        one = active.astype(g.dtype)
        return jnp.where(count == 2, both, jnp.where(count == 1, one, 0))
    if m <= max_exact_terms:
        # On each support S of active terms: alpha_S = G_SS^-1 1 / (1^T G_SS^-1 1);
        # the feasible candidate of smallest norm is the minimum.
        gs = _aggregation.normalized_gram(g)
        eye = jnp.eye(m, dtype=g.dtype)
        tol = jnp.sqrt(jnp.finfo(g.dtype).eps)

        def candidate(s):
            s = s & active
            x = jnp.linalg.solve(
                jnp.where(s[:, None] & s[None, :], gs, eye), s.astype(g.dtype)
            )
            total = jnp.sum(jnp.where(s, x, 0))
            alpha = jnp.where(s, x / jnp.where(total > 0, total, 1), 0)
            ok = jnp.any(s) & (total > 0) & jnp.all(alpha >= -tol)
            alpha = jnp.clip(alpha, 0, None)
            alpha = alpha / jnp.maximum(jnp.sum(alpha), jnp.finfo(g.dtype).tiny)
            return alpha, jnp.where(ok, alpha @ gs @ alpha, jnp.inf)

        alphas, values = jax.vmap(candidate)(_aggregation.subsets(m)[1:])
        return jnp.where(count > 0, alphas[jnp.argmin(values)], 0)
    start = jnp.where(active, 1 / jnp.maximum(count, 1), 0).astype(g.dtype)

    def body(_, alpha):
        ga = g @ alpha
        t = jnp.argmin(jnp.where(active, ga, jnp.inf))
        vv, vt, tt = alpha @ ga, ga[t], g[t, t]
        denom = vv - 2 * vt + tt
        gamma = jnp.clip((vv - vt) / jnp.where(denom > 0, denom, 1), 0, 1)
        gamma = jnp.where(denom > 0, gamma, 0)
        return (1 - gamma) * alpha + gamma * jax.nn.one_hot(t, m, dtype=g.dtype)

    return jax.lax.fori_loop(0, iterations, body, start)


def mgda(
    *,
    normalization: str = "none",
    rescale: bool = False,
    iterations: int = 100,
    max_exact_terms: int = 8,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""MGDA: the minimum-norm point of the convex hull of the gradients.

    .. math::

      \alpha = \arg\min_{\alpha \in \Delta} \Big|\sum_i \alpha_i g_i\Big|^2
      = \arg\min_{\alpha \in \Delta} \alpha^\top G \alpha,
      \qquad \text{update} = \sum_i \alpha_i g_i ,

    with :math:`\Delta` the probability simplex. The update has a nonnegative
    dot product with every gradient; it is zero at a Pareto-stationary point.
    For two terms the closed form
    :math:`\alpha_1 = \mathrm{clip}\big((G_{22}-G_{12})/(G_{11}+G_{22}-2G_{12}),
    0, 1\big)`; up to ``max_exact_terms`` terms the exact minimiser (the support
    enumerated: :math:`\alpha_S \propto G_{SS}^{-1}\mathbf 1` on each support
    :math:`S`, the feasible one of smallest norm); beyond, Frank-Wolfe from
    :math:`\alpha = 1/m` with exact line search, ``iterations`` steps (a fixed
    cost, no early stop). torchjd and the official code use Frank-Wolfe for
    every :math:`m \ge 3` and stop at a tolerance (torchjd: 1e-3), so their
    weights are approximate where these are exact.

    The official code returns 0.001/0.999 instead of 0/1 on the boundary of the
    two-term case; this returns 0/1. Its per-term normalisation before the solve
    is offered as ``normalization="l2"`` (the weights are found for the unit
    gradients and applied to the raw ones, as in the official code); the loss
    normalisations are not. A term whose gradient is exactly zero is left out
    of the solve (else MGDA would return zero).

    Args:
      normalization: ``"none"`` or ``"l2"``.
      rescale: multiply the weights (which sum to one) by the number of terms.
      iterations: Frank-Wolfe iterations, beyond ``max_exact_terms`` terms.
      max_exact_terms: the exact solve (:math:`2^m` small solves) up to this
        many terms.
      num_terms: the number of loss terms; needed for ``update_every > 1``.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.mgda()
      >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> print(np.asarray(update, float).round(4))
      [0.2 0.4]

    References:
      Sener and Koltun, `Multi-Task Learning as Multi-Objective Optimization
      <https://arxiv.org/abs/1810.04650>`_, NeurIPS 2018.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"mgda: normalization must be 'none' or 'l2'; got normalization = "
            f"{normalization!r}."
        )
    _check_iterations("mgda", iterations)
    _check_exact("mgda", max_exact_terms)

    def solve(g, previous, key):
        del previous, key
        if normalization == "l2":
            n, active = _aggregation.norms(g)
            g = _aggregation.unit_gram(g, n, active) * (
                active[:, None] & active[None, :]
            )
        alpha = min_norm_simplex(g, iterations, max_exact_terms)
        return alpha * g.shape[0] if rescale else alpha

    return _aggregation.aggregator(
        "mgda", solve, num_terms=num_terms, update_every=update_every
    )


# ----------------------------------------------------------------------------------
# CAGrad


def _cagrad_objective(w, g, b, phi):
    return w @ b + phi * jnp.sqrt(jnp.maximum(w @ g @ w, 0))


def cagrad_simplex(
    g: jax.Array, c: float, iterations: int = 200, max_exact_terms: int = 8
) -> jax.Array:
    r"""``argmin_{w in simplex} w^T G 1/m + phi sqrt(w^T G w)``, phi = c |g0|.

    Exact for up to ``max_exact_terms`` terms: on each support :math:`S` the
    stationary point is closed form,
    :math:`w_S = (\mu G_{SS}^{-1}\mathbf 1 - G_{SS}^{-1} b_S)/\sqrt D`,
    with :math:`\mu` the root of a quadratic; the feasible candidate of
    smallest objective wins. Beyond: Frank-Wolfe with step 2/(k+2).
    ``g`` is normalised (trace one, tiny ridge) first; the problem is scale-free.
    """
    m = g.shape[0]
    gs = _aggregation.normalized_gram(g)
    b = gs @ jnp.full((m,), 1 / m, g.dtype)
    phi = c * jnp.sqrt(jnp.maximum(jnp.sum(gs), 0)) / m
    if m > max_exact_terms:
        start = jnp.full((m,), 1 / m, g.dtype)

        def body(k, w):
            r = jnp.sqrt(w @ gs @ w)
            grad = b + phi * (gs @ w) / r
            t = jnp.argmin(grad)
            gamma = 2 / (k + 2.0)
            return (1 - gamma) * w + gamma * jax.nn.one_hot(t, m, dtype=g.dtype)

        return jax.lax.fori_loop(0, iterations, body, start)
    supports = _aggregation.subsets(m)[1:]
    eye = jnp.eye(m, dtype=g.dtype)

    def candidate(s):
        both = s[:, None] & s[None, :]
        mat = jnp.where(both, gs, eye)
        ones = s.astype(g.dtype)
        a = jnp.linalg.solve(mat, ones)
        e = jnp.linalg.solve(mat, jnp.where(s, b, 0))
        big_a, big_e, big_b = (
            jnp.sum(a * ones),
            jnp.sum(e * ones),
            jnp.sum(jnp.where(s, b, 0) * e),
        )
        disc = big_e**2 - big_a * (big_b - phi**2)
        ok = disc > 0
        root = jnp.sqrt(jnp.where(ok, disc, 1))
        mu = (big_e + root) / big_a
        w = jnp.where(s, (mu * a - e) / root, 0)
        tol = jnp.sqrt(jnp.finfo(g.dtype).eps)
        feasible = ok & jnp.all(w >= -tol)
        w = jnp.clip(w, 0, None)
        w = w / jnp.sum(w)
        value = _cagrad_objective(w, gs, b, phi)
        return w, jnp.where(feasible, value, jnp.inf)

    ws, values = jax.vmap(candidate)(supports)
    return ws[jnp.argmin(values)]


def cagrad(
    c: float = 0.4,
    *,
    rescale: bool = False,
    iterations: int = 200,
    max_exact_terms: int = 8,
    num_terms: int | None = None,
    update_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""CAGrad: the mean gradient, moved to help the worst-off term.

    With :math:`g_0 = \frac1m \sum_i g_i` and :math:`\phi = c\,|g_0|`,

    .. math::

      w = \arg\min_{w \in \Delta}\; g_w^\top g_0 + \phi\,|g_w|, \quad
      g_w = \sum_i w_i g_i, \qquad
      \text{update} = g_0 + \frac{\phi}{|g_w|}\, g_w ,

    the direction within distance :math:`\phi` of :math:`g_0` that maximises the
    smallest improvement over the terms. ``c = 0`` is the mean gradient.

    The official code solves with SciPy (SLSQP) and, with ``rescale``, divides
    the update by :math:`1 + c^2` and multiplies it by :math:`m`; torchjd does
    neither. The default here is torchjd's (``rescale=False``); ``rescale=True``
    is the official scaling. Default ``c = 0.4`` (the ports'; the official
    function's default is 0.5). The simplex problem is solved exactly in-graph
    for up to ``max_exact_terms`` terms (closed form per support), approximately
    beyond (``iterations`` Frank-Wolfe steps).

    Args:
      c: the radius of the ball around the mean, relative to its norm (>= 0).
      rescale: divide by :math:`1 + c^2` and multiply by :math:`m` (official).
      iterations: Frank-Wolfe iterations, beyond ``max_exact_terms`` terms only.
      max_exact_terms: the exact solve (:math:`2^m` small solves) up to this
        many terms.
      num_terms: the number of loss terms; needed for ``update_every > 1``.
      update_every: recompute the weights every this many steps (in between:
        the weighted sum with the stored weights).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with the inputs of
      :func:`optax_invloss.config`.

    Examples:
      >>> import jax.numpy as jnp, numpy as np, optax_invloss
      >>> tx = optax_invloss.cagrad(c=0.5)
      >>> grads = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
      >>> update, _ = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> print(np.asarray(update, float).round(4))
      [0.25 0.5 ]

    References:
      Liu et al., `Conflict-Averse Gradient Descent for Multi-task Learning
      <https://arxiv.org/abs/2110.14048>`_, NeurIPS 2021.
    """
    if not isinstance(c, (int, float)) or isinstance(c, bool) or c < 0:
        raise ValueError(f"cagrad: c must be a number >= 0, got c = {c!r}.")
    _check_iterations("cagrad", iterations)
    _check_exact("cagrad", max_exact_terms)

    def solve(g, previous, key):
        del previous, key
        m = g.shape[0]
        w = cagrad_simplex(g, c, iterations, max_exact_terms)
        gw2 = w @ g @ w
        g02 = jnp.sum(g) / m**2
        ok = gw2 > 0
        lam = jnp.where(
            ok, c * jnp.sqrt(jnp.maximum(g02, 0)) / jnp.sqrt(jnp.where(ok, gw2, 1)), 0
        )
        weights = 1 / m + lam * w
        return weights * (m / (1 + c**2)) if rescale else weights

    return _aggregation.aggregator(
        "cagrad", solve, num_terms=num_terms, update_every=update_every
    )
