"""Tests for neural tangent kernel trace weights (optax_invloss/_ntk_weights.py).

By hand: a model with parameters w = (w0, w1) and residuals

  bc:  r_k = w0 + w1 * xb_k - 1, xb = (1, 1)  ->  row (1, 1), |row|^2 = 2
  pde: r_k = w1^2 * xr_k,        xr = (1, 1, 1) -> row (0, 2 w1), |row|^2 = 4 w1^2

so tr K_bc = 2 * 2 = 4 and tr K_pde = 3 * 4 w1^2 = 12 w1^2.
Step 0: w1 = 1, tr = (4, 12), total 16; step 1: w1 = 2, tr = (4, 48), total 52.

Against a dense computation: a small tanh MLP u(x, y), a PDE-like residual that
uses the derivatives of u, and boundary residuals u - g; the full Jacobian of the
concatenated residual vector by jax.jacfwd, squared and summed per term.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import check_weights as check
from _helpers import run_updates

import optax_invloss as oil
from optax_invloss import _ntk_weights

XB = jnp.ones(2)
XR = jnp.ones(3)


def residual_fn(p):
    w = p["w"]
    return {"bc": w[0] + w[1] * XB - 1.0, "pde": w[1] ** 2 * XR}


def losses_of(p):
    return {k: jnp.mean(r**2) for k, r in residual_fn(p).items()}


P0 = {"w": jnp.asarray([0.5, 1.0])}
P1 = {"w": jnp.asarray([0.5, 2.0])}


def run(method, params_seq, fn=residual_fn):
    return run_updates(method, params_seq, losses_of, residual_fn=fn)


def test_paper_rule_two_steps():
    # Step 0: bc 16 / 4 = 4, pde 16 / 12 = 4/3.
    # Step 1: bc 52 / 4 = 13, pde 52 / 48 = 13/12.
    history, state = run(oil.ntk_weights(update_every=1), [P0, P1])
    check(history[0], {"bc": 4.0, "pde": 4.0 / 3.0})
    check(history[1], {"bc": 13.0, "pde": 13.0 / 12.0})
    assert int(state.weighting_step) == 2


def test_decay_and_update_every():
    # decay 0.5: step 0: bc 0.5 + 0.5 * 4 = 2.5, pde 0.5 + 0.5 * 4/3 = 7/6.
    # every 2: step 1 holds; step 2 (w1 = 2): bc 0.5 * 2.5 + 0.5 * 13 = 7.75,
    # pde 0.5 * 7/6 + 0.5 * 13/12 = 7/12 + 13/24 = 27/24 = 1.125.
    method = oil.ntk_weights(update_every=2, decay=0.5)
    history, _ = run(method, [P0, P1, P1])
    check(history[0], {"bc": 2.5, "pde": 7.0 / 6.0})
    check(history[1], {"bc": 2.5, "pde": 7.0 / 6.0})
    check(history[2], {"bc": 7.75, "pde": 1.125})


def test_per_point_divides_each_trace_by_its_number_of_points():
    # Step 0: bc 4 / 2 = 2, pde 12 / 3 = 4, total 6: bc 6 / 2 = 3, pde 6 / 4 = 1.5.
    history, _ = run(oil.ntk_weights(update_every=1, per_point=True), [P0])
    check(history[0], {"bc": 3.0, "pde": 1.5})


def test_zero_trace_keeps_its_weight_and_non_finite_skips():
    # A term that does not depend on the parameters has trace 0: weight kept (1);
    # the others: total 16 + 0, as in the paper test.
    fn = lambda p: dict(residual_fn(p), data=jnp.zeros(4))
    losses = lambda p: {k: jnp.mean(r**2) for k, r in fn(p).items()}
    method = oil.ntk_weights(update_every=1)
    weights, state = method.update(
        losses(P0), method.init(losses(P0)), params=P0, residual_fn=fn
    )
    assert float(weights["data"]) == 1.0 and float(weights["bc"]) == 4.0
    # d sqrt(x)/dx at 0 is infinite: a non-finite trace skips the update.
    bad = lambda p: dict(residual_fn(p), bc=jnp.sqrt(p["w"][0] - 0.5) * XB)
    weights, state = method.update(
        losses_of(P0), method.init(losses_of(P0)), params=P0, residual_fn=bad
    )
    assert int(state.skipped_updates) == 1 and float(weights["bc"]) == 1.0


# ----------------------------------------------------------------------------------
# Against a dense Jacobian on a small MLP.


def mlp_params(key, sizes=(2, 6, 6, 1)):
    params = []
    for k, (m, n) in zip(
        jax.random.split(key, len(sizes) - 1),
        zip(sizes[:-1], sizes[1:], strict=True),
        strict=True,
    ):
        kw, kb = jax.random.split(k)
        params.append(
            {
                "W": jax.random.normal(kw, (m, n)) / np.sqrt(m),
                "b": 0.1 * jax.random.normal(kb, (n,)),
            }
        )
    return params


def u(params, xy):
    h = xy
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    return (h @ params[-1]["W"] + params[-1]["b"])[0]


XY_R = jax.random.uniform(jax.random.PRNGKey(1), (7, 2), minval=-1.0, maxval=1.0)
XY_B = jnp.stack([jnp.linspace(-1.0, 1.0, 5), jnp.ones(5)], axis=1)


def mlp_residual_fn(params):
    def pde(xy):  # u_x + u_y + u - sin(x)
        grad_u = jax.grad(u, argnums=1)(params, xy)
        return grad_u[0] + grad_u[1] + u(params, xy) - jnp.sin(xy[0])

    return {
        "pde": jax.vmap(pde)(XY_R),
        "bc": jax.vmap(lambda z: u(params, z))(XY_B) - 0.5,
    }


@functools.partial(jax.jit, static_argnames="matrices_only")
def dense_traces(params, matrices_only=False):
    flat = lambda p: jnp.concatenate(jax.tree.leaves(mlp_residual_fn(p)))
    jac = jax.jacfwd(flat)(params)  # leaves of shape (N, *param_shape)
    rows = sum(
        jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1)
        for leaf, p in zip(jax.tree.leaves(jac), jax.tree.leaves(params), strict=True)
        if p.ndim >= 2 or not matrices_only
    )
    # Leaf order of the residuals: bc (5 rows) before pde (7 rows).
    return jnp.stack([jnp.sum(rows[:5]), jnp.sum(rows[5:])])


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 64])
def test_traces_equal_a_dense_jacobian(chunk_size):
    # 12 rows in all: chunks of 5 leave a remainder of 2; 64 is more than all.
    params = mlp_params(jax.random.PRNGKey(0))
    losses = {k: jnp.mean(r**2) for k, r in mlp_residual_fn(params).items()}
    n_leaves = len(jax.tree.leaves(params))
    traces, counts = jax.jit(
        lambda p: _ntk_weights.kernel_traces(
            mlp_residual_fn,
            p,
            [True] * n_leaves,
            losses,
            jnp.float64,
            chunk_size=chunk_size,
        )
    )(params)
    np.testing.assert_allclose(traces, dense_traces(params), rtol=1e-10)
    np.testing.assert_array_equal(counts, [5, 7])


def mlp_point_residual_fn(params, points):
    def pde(xy):  # the residual of mlp_residual_fn, as a function of the point
        grad_u = jax.grad(u, argnums=1)(params, xy)
        return grad_u[0] + grad_u[1] + u(params, xy) - jnp.sin(xy[0])

    return {
        "pde": jax.vmap(pde)(points["pde"]),
        "bc": jax.vmap(lambda z: u(params, z))(points["bc"]) - 0.5,
    }


MLP_POINTS = {"pde": XY_R, "bc": XY_B}


# Chunking is shared with the path without points (tested there with 1, 5, 64):
# all at once, and chunks of 3 that leave a remainder of 2 of the 5 bc points.
@pytest.mark.parametrize("matrices_only", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_traces_from_points_equal_a_dense_jacobian(chunk_size, matrices_only):
    params = mlp_params(jax.random.PRNGKey(0))
    losses = {k: jnp.mean(r**2) for k, r in mlp_residual_fn(params).items()}
    flags = [jnp.ndim(p) >= 2 or not matrices_only for p in jax.tree.leaves(params)]
    traces, counts = jax.jit(
        lambda p, x: _ntk_weights.kernel_traces(
            mlp_point_residual_fn,
            p,
            flags,
            losses,
            jnp.float64,
            chunk_size=chunk_size,
            points=x,
        )
    )(params, MLP_POINTS)
    expected = dense_traces(params, matrices_only=matrices_only)
    np.testing.assert_allclose(traces, expected, rtol=1e-10)
    np.testing.assert_array_equal(counts, [5, 7])


def test_points_must_lead_the_residuals():
    params = mlp_params(jax.random.PRNGKey(0))
    losses = {k: jnp.mean(r**2) for k, r in mlp_residual_fn(params).items()}
    method = oil.ntk_weights()
    state = method.init(losses)
    # A residual that is a mean over the points: not one entry per point.
    pooled = lambda p, x: dict(
        mlp_point_residual_fn(p, x), bc=jnp.mean(mlp_point_residual_fn(p, x)["bc"])
    )
    with pytest.raises(ValueError, match=r"\['bc'\].*first axis"):
        method.update(
            losses, state, params=params, residual_fn=pooled, points=MLP_POINTS
        )
    with pytest.raises(ValueError, match="points"):
        method.update(
            losses,
            state,
            params=params,
            residual_fn=mlp_point_residual_fn,
            points={"pde": XY_R},
        )


def test_traces_on_a_subset_of_parameters():
    params = mlp_params(jax.random.PRNGKey(0))
    losses = {k: jnp.mean(r**2) for k, r in mlp_residual_fn(params).items()}
    flags = [jnp.ndim(p) >= 2 for p in jax.tree.leaves(params)]
    traces, _ = jax.jit(
        lambda p: _ntk_weights.kernel_traces(
            mlp_residual_fn, p, flags, losses, jnp.float64, chunk_size=4
        )
    )(params)
    expected = dense_traces(params, matrices_only=True)
    np.testing.assert_allclose(traces, expected, rtol=1e-10)


def test_weights_from_the_dense_traces():
    params = mlp_params(jax.random.PRNGKey(0))
    losses = {k: jnp.mean(r**2) for k, r in mlp_residual_fn(params).items()}
    method = oil.ntk_weights(update_every=1, chunk_size=5)
    weights, _ = method.update(
        losses, method.init(losses), params=params, residual_fn=mlp_residual_fn
    )
    tr_bc, tr_pde = np.asarray(dense_traces(params))
    np.testing.assert_allclose(
        float(weights["bc"]), (tr_bc + tr_pde) / tr_bc, rtol=1e-10
    )
    np.testing.assert_allclose(
        float(weights["pde"]), (tr_bc + tr_pde) / tr_pde, rtol=1e-10
    )


def test_residual_structure_must_match_the_losses():
    method = oil.ntk_weights()
    state = method.init(losses_of(P0))
    with pytest.raises(ValueError, match="residual_fn"):
        method.update(
            losses_of(P0),
            state,
            params=P0,
            residual_fn=lambda p: {"bc": residual_fn(p)["bc"]},
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"update_every": 0}, "update_every"),
        ({"decay": 1.0}, "decay"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.ntk_weights(**kwargs)
