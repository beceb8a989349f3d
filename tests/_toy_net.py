"""A small problem shared by the L-BFGS tests (test_lbfgs, test_line_search, ...).

A tanh network fitted to sin(3x) with a boundary term: non-convex, so L-BFGS
does not converge within the iterations used and every iteration is a real step.
The suite runs in float64 (see conftest.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import optax_invloss as oil

# The line search of optax.lbfgs accepts a step whose value is within
# approx_dec_rtol = 1e-6 (relative) of the start value (Hager-Zhang's approximate
# Wolfe condition), so "never increases" is checked to that tolerance.
LINESEARCH_RTOL = 1e-6
X = jnp.linspace(-1.0, 1.0, 24)


def net_params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "w1": 0.8 * jax.random.normal(k1, (6,)),
        "b1": jnp.zeros(6),
        "w2": 0.5 * jax.random.normal(k2, (6,)),
        "b2": jnp.zeros(()),
    }


def net(p, x):
    hidden = jnp.tanh(x[:, None] * p["w1"][None, :] + p["b1"][None, :])
    return hidden @ p["w2"] + p["b2"]


def loss_fn(p):
    dtype = p["w1"].dtype
    x, ends = X.astype(dtype), jnp.asarray([-1.0, 1.0], dtype)
    return {
        "fit": jnp.mean((net(p, x) - jnp.sin(3.0 * x)) ** 2),
        "bc": 0.05 * jnp.sum((net(p, ends) - jnp.sin(3.0 * ends)) ** 2),
    }


def residual_fn(p):
    """The residuals behind ``loss_fn``, in sum-of-squares form (for NTK weights)."""
    dtype = p["w1"].dtype
    x, ends = X.astype(dtype), jnp.asarray([-1.0, 1.0], dtype)
    return {
        "fit": (net(p, x) - jnp.sin(3.0 * x)) / jnp.sqrt(jnp.asarray(24.0, dtype)),
        "bc": jnp.sqrt(jnp.asarray(0.05, dtype)) * (net(p, ends) - jnp.sin(3.0 * ends)),
    }


# Shared settings, so that run_lbfgs compiles once for several tests.
ITERATIONS = 16
REFRESH = 8
BARE = oil.inverse_loss(min_weight=0.0)
DEFAULT = oil.inverse_loss()


def first_weights_state(method, params):
    losses = loss_fn(params)
    _, state = method.update(losses, method.init(losses))
    return state


def lbfgs_steps(opt, params, value_fn, steps):
    def body(carry, _):
        params, state = carry
        value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=value_fn
        )
        return (optax.apply_updates(params, updates), state), None

    run = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps)[0])
    return run((params, opt.init(params)))
