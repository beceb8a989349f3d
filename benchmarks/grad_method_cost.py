"""What learning-rate annealing costs per training step, against the plain sum.

Run from the repository root::

    python -m benchmarks.grad_method_cost

The problem: an MLP 2 -> 50 -> 50 -> 50 -> 1 (tanh, Xavier init) on a Helmholtz-like
two-term loss (the 2D Helmholtz benchmark's residual and zero Dirichlet boundary,
a1 = 1, a2 = 4, k = 1) with 128 residual and 128 boundary points, trained by
Adam. The baseline is the unweighted step (``optax.adam`` on the plain sum of the
two terms); the others are :func:`optax_invloss.lr_annealing` through
:func:`optax_invloss.with_weighting`, with ``update_every`` 1, 10 and 100, whose
per-term gradients are computed only on update steps.

Steps run jitted in chunks of ``--chunk`` steps under ``lax.scan``, compiled
ahead of time. The configurations are timed one chunk at a time in turn,
``--repeats`` rounds, so that all of them see the same load on a
shared machine; the ratio reported is the median chunk time over the median
chunk time of the plain step.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_invloss as oil

A1, A2, K = 1.0, 4.0, 1.0


def exact(xy):
    return jnp.sin(A1 * jnp.pi * xy[0]) * jnp.sin(A2 * jnp.pi * xy[1])


def forcing(xy):
    return (K**2 - (A1 * jnp.pi) ** 2 - (A2 * jnp.pi) ** 2) * exact(xy)


def init_mlp(key, sizes=(2, 50, 50, 50, 1)):
    params = []
    keys = list(jax.random.split(key, len(sizes) - 1))
    for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True):
        limit = np.sqrt(6.0 / (m + n))  # Xavier (Glorot) uniform
        params.append(
            {
                "W": jax.random.uniform(k, (m, n), minval=-limit, maxval=limit),
                "b": jnp.zeros(n),
            }
        )
    return params


def u(params, xy):
    h = xy
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    return (h @ params[-1]["W"] + params[-1]["b"])[0]


def loss_terms(params, batch):
    def residual(xy):
        hessian = jax.hessian(u, argnums=1)(params, xy)
        return jnp.trace(hessian) + K**2 * u(params, xy) - forcing(xy)

    r = jax.vmap(residual)(batch["interior"])
    b = jax.vmap(lambda xy: u(params, xy))(batch["boundary"])
    return {"pde": jnp.mean(r**2), "bc": jnp.mean(b**2)}


def make_batch(key, n=128):
    k1, k2, k3 = jax.random.split(key, 3)
    interior = jax.random.uniform(k1, (n, 2), minval=-1.0, maxval=1.0)
    t = jax.random.uniform(k2, (n,), minval=-1.0, maxval=1.0)
    side = jax.random.randint(k3, (n,), 0, 4)
    ones = jnp.ones(n)
    boundary = jnp.select(
        [side[:, None] == s for s in range(4)],
        [jnp.stack(c, axis=1) for c in ((t, -ones), (t, ones), (-ones, t), (ones, t))],
    )
    return {"interior": interior, "boundary": boundary}


def plain_chunk(tx, steps):
    def step(carry, _):
        params, opt_state, batch = carry
        loss = lambda p: sum(jax.tree.leaves(loss_terms(p, batch)))
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, batch), None

    return jax.jit(lambda carry: jax.lax.scan(step, carry, length=steps)[0])


def weighted_chunk(tx, steps):
    def step(carry, _):
        params, opt_state, batch = carry
        weights = oil.loss_weights(opt_state)
        loss_fn = lambda p: loss_terms(p, batch)

        def total(p):
            losses = loss_fn(p)
            return oil.weighted_sum(losses, weights), losses

        (_, losses), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = tx.update(
            grads, opt_state, params, losses=losses, loss_fn=loss_fn
        )
        return (optax.apply_updates(params, updates), opt_state, batch), None

    return jax.jit(lambda carry: jax.lax.scan(step, carry, length=steps)[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=100, help="steps per chunk")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    args = parser.parse_args(argv)

    params = init_mlp(jax.random.PRNGKey(0))
    batch = make_batch(jax.random.PRNGKey(1))
    losses = jax.eval_shape(loss_terms, params, batch)
    configs = {
        "plain sum": None,
        "lr_annealing every 1": 1,
        "lr_annealing every 10": 10,
        "lr_annealing every 100": 100,
    }
    runners, carries = {}, {}
    for name, every in configs.items():
        if every is None:
            tx = optax.adam(1e-3)
            runners[name] = plain_chunk(tx, args.chunk)
        else:
            method = oil.lr_annealing(reference="pde", update_every=every)
            tx = oil.with_weighting(optax.adam(1e-3), method, losses)
            runners[name] = weighted_chunk(tx, args.chunk)
        carries[name] = (params, tx.init(params), batch)
        runners[name] = runners[name].lower(carries[name]).compile()

    times = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name in configs:
            start = time.perf_counter()
            carries[name] = jax.block_until_ready(runners[name](carries[name]))
            times[name].append(time.perf_counter() - start)

    base = np.median(times["plain sum"])
    print(
        f"{jax.devices()[0].platform}, {args.chunk} steps per chunk, "
        f"{args.repeats} rounds, medians"
    )
    print(f"{'configuration':<24} {'ms/step':>8} {'ratio':>6}")
    for name in configs:
        med = np.median(times[name])
        print(f"{name:<24} {1e3 * med / args.chunk:8.3f} {med / base:6.2f}")


if __name__ == "__main__":
    main()
