"""The aggregation engine and the Optax shape: inputs, guards, state, contract.

Small shapes and few compilations: most checks use ConFIG or UPGrad as the
representative rule (the engine is shared); the rule values are in
test_aggregation_values.py.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_invloss as oil

ALL = {
    "config": oil.config,
    "imtl_g": oil.imtl_g,
    "pcgrad": oil.pcgrad,
    "mgda": oil.mgda,
    "cagrad": oil.cagrad,
    "nash_mtl": oil.nash_mtl,
    "upgrad": oil.upgrad,
    "dualproj": oil.dualproj,
}


def loss_fn(p):
    x = p["w"] @ jnp.array([1.0, -2.0]) + p["b"]
    return {
        "pde": (x - 1.0) ** 2,
        "bc": {"left": jnp.sum((p["w"] + 1.0) ** 2), "right": 0.5 * p["b"] ** 2},
    }


PARAMS = {"w": jnp.array([0.3, -0.2]), "b": jnp.array(0.1)}


def test_term_gradients_equal_jacrev_and_feed_the_update():
    grads = oil.term_gradients(loss_fn, PARAMS)
    jac = jax.jacrev(loss_fn)(PARAMS)
    chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12)
    jax.tree.map(chex_close, grads, jac)
    tx = oil.upgrad()
    state = tx.init(PARAMS)
    update = jax.jit(tx.update)
    a, _ = update(grads, state, PARAMS)
    b, _ = update(jac, state, PARAMS)  # nested terms, told apart by params
    jax.tree.map(chex_close, a, b)
    # loss_fn= as input: the aggregator differentiates the terms itself.
    c, _ = jax.jit(lambda s, p: tx.update(None, s, p, loss_fn=loss_fn, unknown=3))(
        state, PARAMS
    )
    jax.tree.map(chex_close, a, c)
    assert jax.tree.structure(a) == jax.tree.structure(PARAMS)


def test_term_gradients_zero_for_non_float_leaves():
    params = {"w": jnp.ones(2), "n": jnp.array(3)}
    grads = oil.term_gradients(lambda p: {"a": jnp.sum(p["w"] ** 2)}, params)
    assert grads["a"]["n"] == 0
    np.testing.assert_array_equal(grads["a"]["w"], [2.0, 2.0])


def _as_terms(jac):
    return {f"t{i}": jnp.asarray(row) for i, row in enumerate(jac)}


def test_no_absolute_small_norm_threshold():
    # torchjd zeroes G when trace(G) < 1e-4; here tiny gradients keep the rule.
    jac = np.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.5], [0.2, -1.0, 1.0]], np.float32)
    for make in (oil.upgrad, oil.dualproj, oil.cagrad, oil.config):
        tx = make()
        state = tx.init(jnp.zeros(3, jnp.float32))
        f = jax.jit(lambda j, tx=tx, state=state: tx.update(_as_terms(j), state)[0])
        big = np.asarray(f(jnp.asarray(jac)))
        small = np.asarray(f(jnp.asarray(jac * 1e-4)))
        np.testing.assert_allclose(small, big * 1e-4, rtol=2e-3, atol=1e-9)


def test_jit_no_retrace_dtype_and_unknown_inputs():
    tx = oil.upgrad(num_terms=3)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), PARAMS)
    state = tx.init(params)
    assert state.aggregation_weights.dtype == jnp.float32

    @jax.jit
    def step(params, state, shift):
        grads = oil.term_gradients(
            lambda p: loss_fn(jax.tree.map(lambda x: x + shift, p)), params
        )
        return tx.update(grads, state, params, losses=None, points=shift)

    upd, state1 = step(params, state, jnp.float32(0.0))
    upd, state2 = step(params, state1, jnp.float32(0.5))
    assert step._cache_size() == 1
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(upd))
    assert state2.aggregation_weights.dtype == jnp.float32
    assert int(state2.aggregation_step) == 2


def test_scan_chained_with_adam_decreases_the_loss():
    tx = optax.chain(oil.config(num_terms=3), optax.adam(0.05))

    def body(carry, _):
        params, opt_state = carry
        grads = oil.term_gradients(loss_fn, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    total = lambda p: sum(jax.tree.leaves(loss_fn(p)))
    (params, opt_state), _ = jax.jit(
        lambda p, s: jax.lax.scan(body, (p, s), None, length=40)
    )(PARAMS, tx.init(PARAMS))
    assert total(params) < 0.5 * total(PARAMS)
    weights = oil.aggregation_weights(opt_state)
    assert weights.shape == (3,) and np.all(np.isfinite(weights))


def test_update_every_holds_weights_between_refreshes():
    tx = oil.mgda(num_terms=2, update_every=3)
    state = tx.init(jnp.zeros(2))
    f = jax.jit(tx.update)
    j1 = _as_terms(np.array([[1.0, 0.0], [-1.0, 1.0]]))  # weights (0.6, 0.4)
    j2 = _as_terms(np.array([[3.0, 0.0], [0.0, 4.0]]))  # weights (0.64, 0.36)
    _, state = f(j1, state)
    held, state = f(j2, state)  # step 1: the stored (0.6, 0.4) on j2
    np.testing.assert_allclose(held, [1.8, 1.6], rtol=1e-10)
    _, state = f(j2, state)
    fresh, state = f(j2, state)  # step 3: a refresh
    np.testing.assert_allclose(fresh, [1.92, 1.44], rtol=1e-10)
    np.testing.assert_allclose(oil.aggregation_weights(state), [0.64, 0.36])


def test_update_every_with_loss_fn_takes_one_gradient_between_refreshes():
    tx = oil.config(num_terms=3, update_every=2)
    state = tx.init(PARAMS)
    f = jax.jit(lambda s, p: tx.update(None, s, p, loss_fn=loss_fn))
    _, state = f(state, PARAMS)
    w = oil.aggregation_weights(state)
    held, state = f(state, PARAMS)
    leaves = jax.tree.leaves(
        oil.term_gradients(loss_fn, PARAMS),
        is_leaf=lambda x: isinstance(x, dict) and "w" in x,
    )
    expected = jax.tree.map(
        lambda *g: sum(wi * gi for wi, gi in zip(w, g, strict=True)), *leaves
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), held, expected
    )


def test_non_finite_gradient_skips_and_keeps_state():
    tx = oil.upgrad(num_terms=2)
    state = tx.init(jnp.zeros(2))
    update = jax.jit(tx.update)
    _, state = update(_as_terms(np.array([[1.0, 0.0], [-1.0, 1.0]])), state)
    upd, new = update(_as_terms(np.array([[np.nan, 0.0], [-1.0, 1.0]])), state)
    np.testing.assert_array_equal(upd, [0.0, 0.0])
    assert int(new.aggregation_skipped) == 1
    np.testing.assert_array_equal(new.aggregation_weights, state.aggregation_weights)


def test_checkpoint_round_trip():
    tx = oil.pcgrad(order="random", num_terms=3, seed=1)
    state = tx.init(jnp.zeros(3))
    jacs = np.random.default_rng(1).normal(size=(2, 3, 3))
    update = jax.jit(tx.update)
    _, state = update(_as_terms(jacs[0]), state)
    restored = pickle.loads(pickle.dumps(jax.device_get(state)))
    restored = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(restored))
    a, _ = update(_as_terms(jacs[1]), state)
    b, _ = update(_as_terms(jacs[1]), restored)
    np.testing.assert_array_equal(a, b)
    assert optax.tree.get(state, "aggregation_key").shape == (2,)


def test_nnx_optimizer_chained_with_adam():
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    x = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    terms = {
        "a": lambda m: jnp.mean((m(x)[:, 0] - 1.0) ** 2),
        "b": lambda m: jnp.mean((m(x)[:, 0] + 0.5 * x[:, 0]) ** 2),
    }
    opt = nnx.Optimizer(
        model, optax.chain(oil.upgrad(num_terms=2), optax.adam(0.05)), wrt=nnx.Param
    )
    total = lambda m: sum(f(m) for f in terms.values())
    before = total(model)

    @nnx.jit
    def step(model, opt):
        grads = {k: nnx.grad(f)(model) for k, f in terms.items()}
        opt.update(model, grads)

    for _ in range(20):
        step(model, opt)
    assert total(model) < before
    assert oil.aggregation_weights(opt.opt_state).shape == (2,)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="num_terms"):
        oil.upgrad(update_every=2)
    with pytest.raises(ValueError, match="length"):
        oil.config(length="median")
    with pytest.raises(ValueError, match="order"):
        oil.pcgrad(order="shuffled")
    with pytest.raises(ValueError, match="c must be"):
        oil.cagrad(-1.0)
    with pytest.raises(ValueError, match="max_norm"):
        oil.nash_mtl(max_norm=-1.0)
    with pytest.raises(ValueError, match="preference"):
        oil.dualproj(preference=(1.0, -1.0))
    with pytest.raises(ValueError, match="num_terms"):
        oil.m_config(num_terms=0)
    tx = oil.upgrad(num_terms=3)
    with pytest.raises(ValueError, match="num_terms = 3"):
        tx.update(_as_terms(np.eye(2)), tx.init(jnp.zeros(2)))
    with pytest.raises(ValueError, match="one gradient in the shape of params"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


# ----------------------------------------------------------------------------------
# M-ConFIG


def _config_numpy(rows):
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    d = np.linalg.pinv(unit) @ np.ones(len(rows))
    d_hat = d / np.linalg.norm(d)
    return np.sum(rows @ d_hat) * d_hat


def _m_config_numpy(grads_by_step, m, b1=0.9, b2=0.999, eps=1e-8):
    """The authors' PseudoMomentumOperator, in numpy."""
    n = grads_by_step[0].shape[0]
    mom, counts = np.zeros((m, n)), np.zeros(m, int)
    s, fake_prev, t, out = np.zeros(n), np.zeros(n), 0, []
    for step, g in enumerate(grads_by_step):
        i = step % m
        counts[i] += 1
        mom[i] = b1 * mom[i] + (1 - b1) * g
        if np.any(counts == 0):
            out.append(np.zeros(n))
            continue
        t += 1
        c = _config_numpy(mom / (1 - b1 ** counts[:, None]))
        fake = c * (1 - b1**t)
        q = (fake - b1 * fake_prev) / (1 - b1)
        fake_prev = fake
        s = b2 * s + (1 - b2) * q**2
        out.append(c / (np.sqrt(s / (1 - b2**t)) + eps))
    return np.array(out)


def test_m_config_zero_first_steps_and_authors_reference():
    m, steps = 3, 7
    grads = np.random.default_rng(2).normal(size=(steps, m, 4))
    tx = oil.m_config(num_terms=m)
    state = tx.init(jnp.zeros(4))
    f = jax.jit(tx.update)
    seen, indices = [], []
    for k in range(steps):
        indices.append(int(oil.m_config_term(state)))
        i = indices[-1]
        upd, state = f(jnp.asarray(grads[k, i]), state)  # the due term's gradient alone
        seen.append(np.asarray(upd))
    assert indices == [k % m for k in range(steps)]
    assert all(np.all(u == 0) for u in seen[: m - 1])
    assert np.all(seen[m - 1] != 0)
    expected = _m_config_numpy([grads[k, k % m] for k in range(steps)], m)
    np.testing.assert_allclose(np.array(seen), expected, rtol=1e-8, atol=1e-12)


def test_m_config_inputs_agree_and_chain_with_sgd():
    tx = optax.chain(oil.m_config(num_terms=3), optax.sgd(0.05))
    state_a = state_b = tx.init(PARAMS)
    params = PARAMS
    fa = jax.jit(lambda s, p: tx.update(None, s, p, loss_fn=loss_fn))
    fb = jax.jit(lambda s, p: tx.update(oil.term_gradients(loss_fn, p), s, p))
    for _ in range(5):
        ua, state_a = fa(state_a, params)
        ub, state_b = fb(state_b, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), ua, ub)
        params = optax.apply_updates(params, ua)
    total = lambda p: sum(jax.tree.leaves(loss_fn(p)))
    assert total(params) < total(PARAMS)
