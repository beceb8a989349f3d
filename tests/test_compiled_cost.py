"""What the loss-value methods add to a compiled training step (issue 19, item 1).

Static counts on the optimised HLO of a ``lax.scan`` of a small training step,
plain sum against the same step wrapped in ``with_weighting``; no timings. On
CPU a scan step's fixed cost is roughly one dispatch per fusion or unfused op
in the loop body, so the added fusion count is what the bound pins. The bounds
are the counts measured on jax 0.10.2 (see benchmarks/overhead_notes.md): a
change that adds fused kernels, a sort, a loop, a conditional or a copy of the
parameters fails here.
"""

import collections
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_invloss as oil

_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\S+)\s+([\w\-]+)\(")
_SHAPES = {"w1": (2, 16), "w2": (16, 16), "w3": (16, 1)}


def _params():
    keys = jax.random.split(jax.random.key(0), 3)
    return {
        k: 0.3 * jax.random.normal(key, s)
        for key, (k, s) in zip(keys, _SHAPES.items(), strict=True)
    }


def _terms(params, x):
    h = jnp.tanh(x @ params["w1"])
    h = jnp.tanh(h @ params["w2"])
    u = (h @ params["w3"])[:, 0]
    return {"pde": jnp.mean((u - jnp.sin(x[:, 0])) ** 2), "bc": jnp.mean(u[:8] ** 2)}


def _compiled(method, length=4):
    inner = optax.adam(1e-3)
    x = jnp.linspace(-1.0, 1.0, 64).reshape(32, 2)
    params = _params()
    if method is None:
        tx = inner

        def step(carry, _):
            p, s = carry
            (_, losses), g = jax.value_and_grad(
                lambda p: (sum(jax.tree.leaves(_terms(p, x))), _terms(p, x)),
                has_aux=True,
            )(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), losses
    else:
        tx = oil.with_weighting(inner, method, losses=jax.eval_shape(_terms, params, x))

        def step(carry, _):
            p, s = carry
            w = oil.loss_weights(s)
            (_, losses), g = jax.value_and_grad(
                lambda p: (oil.weighted_sum(_terms(p, x), w), _terms(p, x)),
                has_aux=True,
            )(p)
            u, s = tx.update(
                g, s, p, losses=losses, loss_fn=lambda p: _terms(p, x)
            )
            return (optax.apply_updates(p, u), s), losses

    run = lambda c: jax.lax.scan(step, c, None, length=length)
    return jax.jit(run).lower((params, tx.init(params))).compile().as_text()


def _ops(text):
    ops = collections.Counter()
    param_copies = 0
    param_types = {f"f32[{','.join(map(str, s))}]" for s in _SHAPES.values()}
    for line in text.splitlines():
        m = _OP.match(line)
        if m:
            ops[m.group(2)] += 1
            if m.group(2) == "copy" and m.group(1).split("{")[0] in param_types:
                param_copies += 1
    return ops, param_copies


@pytest.fixture(scope="module")
def plain():
    return _ops(_compiled(None))


# (method, at most this many more fusions than the plain step). Measured on jax
# 0.10.2 after issue 19's pass (benchmarks/overhead_notes.md): 15, 20, 21, 33, 25,
# 22; before it 15, 24, 25, 41 (two PRNG calls), 25, 22, and a sort in the capped
# projection. The bounds are those counts: a change that adds a fused kernel, a
# sort, a loop, a conditional or a copy of the parameters fails here.
CASES = {
    "inverse_loss_uncapped": (lambda: oil.inverse_loss(min_weight=0.0), 15),
    "inverse_loss": (lambda: oil.inverse_loss(), 20),
    "inverse_loss_ema_every": (
        lambda: oil.inverse_loss(ema_decay=0.9, update_every=10), 21),
    "relobralo": (lambda: oil.relobralo(), 33),
    "softadapt": (lambda: oil.softadapt(), 25),
    "dwa": (lambda: oil.dwa(), 22),
}


@pytest.mark.parametrize("name", list(CASES))
def test_weighting_adds_few_ops_and_no_param_copies(name, plain):
    make, max_fusions = CASES[name]
    (base, base_copies), (ops, copies) = plain, _ops(_compiled(make()))
    added = ops["fusion"] - base["fusion"]
    assert added <= max_fusions, f"{name}: {added} more fusions than plain"
    assert copies == base_copies, f"{name}: copies of parameter-shaped arrays"
    for op in ("conditional", "sort", "while"):
        assert ops[op] == base[op], f"{name}: {ops[op] - base[op]} more {op} ops"
