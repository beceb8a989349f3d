"""Per-term gradients with many loss terms (optax_invloss/_gradients.py).

The two strategies of ``_gradients.per_term_gradients`` give the same gradients;
the batched one's program does not grow with the number of terms (read from the
jaxpr and the compiled HLO, not timed); the gradient-based factories take and
check ``gradient_strategy``; and between updates the per-term passes stay inside
the ``lax.cond`` branch.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax._src import core

import optax_invloss as oil
from benchmarks._hlo import dot_stats
from optax_invloss import _gradients

WIDTH = 8
POINTS = 4


def _params(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return {
        "w1": jnp.asarray(rng.normal(size=(2, WIDTH)), dtype),
        "b1": jnp.zeros(WIDTH, dtype),
        "w2": jnp.asarray(rng.normal(size=(WIDTH, 1)) / WIDTH, dtype),
        "unused": jnp.ones(3, dtype),  # no term touches it
    }


def _loss_fn(n: int):
    """``n`` terms, each the mean squared residual on its own points, computed in
    one forward pass of the network over all points (the network's products do
    not multiply with ``n``)."""
    xs = np.random.default_rng(1).uniform(size=(n, POINTS, 2)).astype(np.float32)
    shift = np.arange(n, dtype=np.float32)[:, None]

    def loss_fn(p):
        h = jnp.tanh(xs.reshape(-1, 2) @ p["w1"] + p["b1"][None, :])
        u = (h @ p["w2"]).reshape(n, POINTS)
        r = u - jnp.sin(xs[..., 0] + shift)
        return {f"t{i:02d}": jnp.mean(r[i] ** 2) for i in range(n)}

    return loss_fn


def _mixed_loss_fn(p):
    """Terms of different structure and shape: a nested dict; a term on 3
    points, one on 5, a term that touches no parameter, one on ``b1`` alone."""
    x3 = jnp.linspace(-1.0, 1.0, 3 * 2, dtype=p["w1"].dtype).reshape(3, 2)
    x5 = jnp.linspace(0.0, 2.0, 5 * 2, dtype=p["w1"].dtype).reshape(5, 2)
    net = lambda x: (jnp.tanh(x @ p["w1"] + p["b1"][None, :]) @ p["w2"])[:, 0]
    return {
        "pde": jnp.mean(net(x3) ** 2),
        "bc": {"left": jnp.mean((net(x5) - 1.0) ** 2), "const": jnp.asarray(2.5)},
        "reg": jnp.sum(p["b1"] ** 2),
    }


def _eqns(jaxpr, counts=None) -> collections.Counter:
    """Equations of a jaxpr by primitive, sub-jaxprs (scan, cond, pjit) included."""
    counts = collections.Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] += 1
        for sub in core.jaxprs_in_params(eqn.params):
            _eqns(sub, counts)
    return counts


def _gradient_jaxpr(n: int, strategy: str) -> collections.Counter:
    loss_fn, params = _loss_fn(n), _params()
    flags = _gradients.selected_leaves(params, None, method="m")

    def grads(p):
        return _gradients.per_term_gradients(
            loss_fn, p, flags, None, method="m", strategy=strategy
        )

    return _eqns(jax.make_jaxpr(grads)(params).jaxpr)


@pytest.mark.parametrize("flags", [None, [True, False, True, False]])
def test_both_strategies_give_the_same_gradients(flags):
    params = _params()
    flags = flags or _gradients.selected_leaves(params, None, method="m")
    losses = _mixed_loss_fn(params)
    run = lambda strategy: jax.jit(
        lambda p: _gradients.per_term_gradients(
            _mixed_loss_fn, p, flags, losses, method="m", strategy=strategy
        )
    )(params)
    unrolled, batched = run("unrolled"), run("batched")
    # One array per selected leaf (the restricted selection applies), the four
    # terms along the first axis in leaf order: bc/const, bc/left, pde, reg.
    selected = [x for x, f in zip(jax.tree.leaves(params), flags, strict=True) if f]
    assert [g.shape for g in batched] == [(4, *x.shape) for x in selected]
    for u, b in zip(unrolled, batched, strict=True):
        assert u.dtype == b.dtype == jnp.float32
        # float32: the two differ by the order of the additions only.
        np.testing.assert_allclose(b, u, rtol=1e-5, atol=1e-6)
    # The constant term touches no parameter: exact zeros, never NaN; the
    # parameter no term uses ("unused", when selected) gets zero gradients too.
    for g in batched:
        np.testing.assert_array_equal(g[0], 0.0)
    if flags[1]:  # leaf order: b1, unused, w1, w2
        np.testing.assert_array_equal(batched[1], 0.0)
    # reg = sum(b1^2) has gradient 2 b1 = 0 on b1, and 0 on w1, w2.
    for g in batched:
        np.testing.assert_array_equal(g[3], 0.0)
    # pde against jax.grad of that term alone (not the code under test).
    direct = jax.grad(lambda p: _mixed_loss_fn(p)["pde"])(params)
    direct = [x for x, f in zip(jax.tree.leaves(direct), flags, strict=True) if f]
    for g, d in zip(batched, direct, strict=True):
        np.testing.assert_allclose(g[2], d, rtol=1e-5, atol=1e-7)


def test_batched_program_does_not_grow_with_the_number_of_terms():
    few, many = _gradient_jaxpr(4, "batched"), _gradient_jaxpr(40, "batched")
    # The network's products: one forward pass, one (vmapped) reverse pass,
    # whatever the number of terms.
    assert few["dot_general"] == many["dot_general"] > 0
    assert many["vmap"] == 0  # vmap is traced through, not left as a call
    # The equations that do grow are the loss function's own per-term ones (one
    # slice and one mean per term, and their transposes): at most a few per
    # term, nothing per term and per term.
    loss = lambda n: sum(_eqns(jax.make_jaxpr(_loss_fn(n))(_params()).jaxpr).values())
    growth = sum(many.values()) - sum(few.values())
    assert growth <= 4 * (loss(40) - loss(4))
    # The unrolled strategy traces the loss once per term: its products are
    # counted once per term (forward and backward, 12 / 4 = 3 times as many).
    unrolled_few, unrolled_many = (_gradient_jaxpr(n, "unrolled") for n in (4, 12))
    assert unrolled_many["dot_general"] == 3 * unrolled_few["dot_general"]


def test_batched_compiled_program_has_the_same_products_at_4_and_40_terms():
    def hlo(n):
        loss_fn, params = _loss_fn(n), _params()
        flags = _gradients.selected_leaves(params, None, method="m")
        fn = jax.jit(
            lambda p: _gradients.per_term_gradients(
                loss_fn, p, flags, None, method="m", strategy="batched"
            )
        )
        return dot_stats(fn.lower(params).compile().as_text())

    few, many = hlo(4), hlo(40)
    assert few.dots == many.dots > 0


@pytest.mark.parametrize(
    "factory", [oil.lr_annealing, oil.grad_norm_balance, oil.gradnorm]
)
def test_factories_check_gradient_strategy(factory):
    with pytest.raises(ValueError, match="gradient_strategy must be one of"):
        factory(gradient_strategy="fast")
    with pytest.raises(ValueError, match="gradient_strategy"):
        oil.term_gradients(lambda p: {"a": p}, jnp.ones(()), gradient_strategy=None)


def test_auto_strategy_threshold():
    assert _gradients.resolve_strategy("auto", _gradients.BATCHED_FROM - 1) == (
        "unrolled"
    )
    assert _gradients.resolve_strategy("auto", _gradients.BATCHED_FROM) == "batched"
    assert _gradients.resolve_strategy("unrolled", 500) == "unrolled"


def test_methods_give_the_same_weights_with_both_strategies():
    params, loss_fn = _params(), _loss_fn(3)
    losses = loss_fn(params)
    got = []
    for strategy in ("unrolled", "batched"):
        method = oil.lr_annealing(
            reference="t00", update_every=1, mask=None, gradient_strategy=strategy
        )
        weights, _ = jax.jit(
            lambda p, m=method: m.update(
                losses, m.init(losses), params=p, loss_fn=loss_fn
            )
        )(params)
        got.append(np.stack(jax.tree.leaves(weights)))
    np.testing.assert_allclose(got[1], got[0], rtol=1e-5)
    assert np.all(got[0][1:] != 1.0)  # moved (t00, the reference, stays at 1)
    # The public term_gradients (the aggregators' input): same with both.
    public = [
        jax.jit(lambda p, s=s: oil.term_gradients(loss_fn, p, gradient_strategy=s))(
            params
        )
        for s in ("unrolled", "batched")
    ]
    for u, b in zip(
        jax.tree.leaves(public[0]), jax.tree.leaves(public[1]), strict=True
    ):
        np.testing.assert_allclose(b, u, rtol=1e-5, atol=1e-7)


def test_between_updates_the_batched_gradients_stay_in_the_branch():
    """A scan of steps with ``update_every=10``: outside the conditional, the
    compiled program has exactly the products of the plain step."""
    params, loss_fn = _params(), _loss_fn(6)
    tx_plain = optax.sgd(1e-3)
    method = oil.grad_norm_balance(update_every=10, gradient_strategy="batched")
    tx = oil.with_weighting(optax.sgd(1e-3), method, losses=loss_fn(params))

    def plain(carry, _):
        p, s = carry
        g = jax.grad(lambda q: sum(jax.tree.leaves(loss_fn(q))))(p)
        u, s = tx_plain.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    def weighted(carry, _):
        p, s = carry
        w = oil.loss_weights(s)
        (_, losses), g = jax.value_and_grad(
            lambda q: (oil.weighted_sum(loss_fn(q), w), loss_fn(q)), has_aux=True
        )(p)
        u, s = tx.update(g, s, p, losses=losses, loss_fn=loss_fn)
        return (optax.apply_updates(p, u), s), None

    def stats(step, carry):
        chunk = jax.jit(lambda c: jax.lax.scan(step, c, None, length=2)[0])
        return dot_stats(chunk.lower(carry).compile().as_text(), min_flops=256)

    base = stats(plain, (params, tx_plain.init(params)))
    got = stats(weighted, (params, tx.init(params)))
    assert (got.dots, got.flops) == (base.dots, base.flops)
    assert got.conditional_dots > 0 and got.conditional_flops > base.flops


def test_aggregator_between_refreshes_forms_no_gram_matrix():
    """Given per-term gradients, a step between refreshes is ``J^T w`` only: one
    product per parameter leaf outside the conditional; ``G = J J^T`` (one more
    per leaf) inside it."""
    params = _params()
    m = 5
    grads = {
        f"t{i}": jax.tree.map(lambda x, i=i: x * (i + 1.0), params) for i in range(m)
    }
    tx = oil.config(num_terms=m, update_every=10)
    fn = jax.jit(lambda g, s, p: tx.update(g, s, p))
    stats = dot_stats(fn.lower(grads, tx.init(params), params).compile().as_text())
    leaves = len(jax.tree.leaves(params))
    assert stats.dots == leaves
    assert stats.conditional_dots >= leaves
