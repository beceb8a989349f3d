"""Gradient-based methods with many loss terms: compile time, step time, memory.

A small tanh MLP (2 -> 32 -> 32 -> 1) and ``n`` loss terms, term ``i`` the mean
squared residual ``u(x) - sin(x_0 + i / n)`` on its own 16 points (so ``n``
terms hold ``16 n`` points). Every gradient-based method of the library
(``lr_annealing``, ``grad_norm_balance``, ``gradnorm``, ``ntk_weights``) and the
aggregators ``config``, ``upgrad``, ``pcgrad``, built with ``update_every=1``
(every step computes the per-term gradients), for both per-term gradient
strategies (``gradient_strategy="unrolled"`` / ``"batched"``).

Per row: the compile seconds of one jitted ``lax.scan`` chunk of ``--steps``
training steps (lower + compile), the compiler's temporary buffer bytes
(``compiled.memory_analysis()``), and the step time as a ratio to the plain-sum
step (plain ``optax.adam`` on the sum of the terms, same chunk): the two programs
run alternately, and the judged ratio is the median of the paired ratios.

``ntk_weights`` computes per-point Jacobian rows (``points=``), not per-term
gradients; it has no ``gradient_strategy`` and is measured once (``strategy`` -).

Usage::

    python -m benchmarks.many_terms --terms 2 10 50 200 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_invloss as oil
from benchmarks import provenance

WIDTH = 32
POINTS = 16
WEIGHTING = ("lr_annealing", "grad_norm_balance", "gradnorm", "ntk_weights")
AGGREGATORS = ("config", "upgrad", "pcgrad")
METHODS = WEIGHTING + AGGREGATORS
STRATEGIES = ("unrolled", "batched")


def make_problem(n: int, layout: str = "shared", seed: int = 0):
    """``(params, loss_fn, residual_fn, points)`` of the ``n``-term problem.

    ``layout="shared"``: one forward pass of the network over all ``16 n``
    points, each term the mean over its own slice (how a loss with many terms
    is written); ``"separate"``: one forward pass per term on its own points
    (how a PINN writes its few terms).
    """
    k = jax.random.split(jax.random.key(seed), 4)
    params = {
        "w1": jax.random.normal(k[0], (2, WIDTH)) / np.sqrt(2.0),
        "b1": jnp.zeros(WIDTH),
        "w2": jax.random.normal(k[1], (WIDTH, WIDTH)) / np.sqrt(WIDTH),
        "b2": jnp.zeros(WIDTH),
        "w3": jax.random.normal(k[2], (WIDTH, 1)) / np.sqrt(WIDTH),
    }
    xs = jax.random.uniform(k[3], (n, POINTS, 2), minval=-1.0, maxval=1.0)
    points = {f"t{i:03d}": xs[i] for i in range(n)}
    shift = {name: i / n for i, name in enumerate(points)}

    def net(p, x):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        h = jnp.tanh(h @ p["w2"] + p["b2"])
        return (h @ p["w3"])[:, 0]

    def residual_fn(p, pts):
        if layout == "separate" or any(x.shape[0] != POINTS for x in pts.values()):
            return {
                name: net(p, x) - jnp.sin(x[:, 0] + shift[name])
                for name, x in pts.items()
            }
        x = jnp.stack(list(pts.values()))  # (n, POINTS, 2)
        u = net(p, x.reshape(-1, 2)).reshape(x.shape[:2])
        r = u - jnp.sin(x[..., 0] + jnp.asarray(list(shift.values()))[:, None])
        return {name: r[i] for i, name in enumerate(pts)}

    def loss_fn(p):
        return {name: jnp.mean(r**2) for name, r in residual_fn(p, points).items()}

    return params, loss_fn, residual_fn, points


def make_method(name: str, strategy: str | None):
    kw = {} if strategy is None else {"gradient_strategy": strategy}
    if name == "lr_annealing":
        return oil.lr_annealing(reference="t000", update_every=1, **kw)
    if name == "grad_norm_balance":
        return oil.grad_norm_balance(update_every=1, **kw)
    if name == "gradnorm":
        return oil.gradnorm(update_every=1, **kw)
    if name == "ntk_weights":
        return oil.ntk_weights(update_every=1)
    raise ValueError(name)


def make_aggregator(name: str, strategy: str):
    """The aggregator ``name`` with its engine's ``gradient_strategy`` set.

    The aggregator factories do not take the keyword (they use ``"auto"``); the
    engine ``_aggregation.aggregator`` does, so the factory is called with the
    engine wrapped to pass it on: the same rule, the chosen strategy.
    """
    from optax_invloss import _aggregation

    original = _aggregation.aggregator

    def forced(*args, **kwargs):
        return original(*args, gradient_strategy=strategy, **kwargs)

    _aggregation.aggregator = forced
    try:
        return getattr(oil, name)()
    finally:
        _aggregation.aggregator = original


def plain_step(params, loss_fn):
    tx = optax.adam(1e-3)

    def step(carry, _):
        p, s = carry
        grads = jax.grad(lambda q: sum(jax.tree.leaves(loss_fn(q))))(p)
        u, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, u), s), None

    return step, (params, tx.init(params))


def method_step(params, loss_fn, residual_fn, points, name, strategy):
    if name in AGGREGATORS:
        tx = optax.chain(make_aggregator(name, strategy), optax.adam(1e-3))

        def step(carry, _):
            p, s = carry
            u, s = tx.update(None, s, p, loss_fn=loss_fn)
            return (optax.apply_updates(p, u), s), None

        return step, (params, tx.init(params))

    method = make_method(name, strategy)
    losses = loss_fn(params)
    tx = oil.with_weighting(optax.adam(1e-3), method, losses=losses)

    def step(carry, _):
        p, s = carry
        weights = oil.loss_weights(s)

        def total(q):
            ls = loss_fn(q)
            return oil.weighted_sum(ls, weights), ls

        (_, ls), grads = jax.value_and_grad(total, has_aux=True)(p)
        u, s = tx.update(
            grads,
            s,
            p,
            losses=ls,
            loss_fn=loss_fn,
            residual_fn=residual_fn,
            points=points,
        )
        return (optax.apply_updates(p, u), s), None

    return step, (params, tx.init(params))


def compile_chunk(step, carry, steps: int):
    chunk = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps)[0])
    start = time.perf_counter()
    compiled = chunk.lower(carry).compile()
    seconds = time.perf_counter() - start
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        temp = None
    return compiled, seconds, temp


def _time(compiled, carry) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(carry))
    return time.perf_counter() - start


def paired_ratio(base, other, carry_base, carry_other, repeats: int) -> dict:
    _time(base, carry_base), _time(other, carry_other)  # warm
    ratios, base_s = [], []
    for i in range(repeats):
        if i % 2 == 0:
            b, o = _time(base, carry_base), _time(other, carry_other)
        else:
            o, b = _time(other, carry_other), _time(base, carry_base)
        ratios.append(o / b)
        base_s.append(b)
    return {
        "ratio": float(np.median(ratios)),
        "ratio_min": float(np.min(ratios)),
        "ratio_max": float(np.max(ratios)),
        "base_chunk_s": float(np.median(base_s)),
    }


def run(args) -> list[dict]:
    rows = []
    for n in args.terms:
        params, loss_fn, residual_fn, points = make_problem(n, args.layout)
        base, base_s, base_temp = compile_chunk(
            *plain_step(params, loss_fn), args.steps
        )
        base_carry = plain_step(params, loss_fn)[1]
        print(f"n={n}: plain step compiles in {base_s:.2f} s", flush=True)
        for name in args.methods:
            strategies = [None] if name == "ntk_weights" else args.strategies
            for strategy in strategies:
                row = {
                    "terms": n,
                    "method": name,
                    "strategy": strategy or "-",
                    "steps": args.steps,
                    "repeats": args.repeats,
                }
                if strategy == "unrolled" and n > args.unrolled_max_terms:
                    row["note"] = (
                        f"not run: n > {args.unrolled_max_terms} (unrolled compile "
                        "time grows as n^2; issue 19 measured 256 s for "
                        "lr_annealing at n = 200)"
                    )
                    rows.append(row)
                    print(row, flush=True)
                    continue
                step, carry = method_step(
                    params, loss_fn, residual_fn, points, name, strategy
                )
                compiled, seconds, temp = compile_chunk(step, carry, args.steps)
                row.update(compile_s=round(seconds, 2), temp_bytes=temp)
                if args.repeats:
                    row.update(
                        paired_ratio(base, compiled, base_carry, carry, args.repeats)
                    )
                row["plain_compile_s"] = round(base_s, 2)
                row["plain_temp_bytes"] = base_temp
                rows.append(row)
                print(row, flush=True)
    return rows


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    runs = report["runs"]
    lines = ["# Gradient-based methods with many loss terms", ""]
    for meta in runs:
        lines.append(
            f"Command: `{meta['command']}` ({meta['date']}, "
            f"{provenance.describe(meta)}; load average "
            f"{meta['machine'].get('load_average_at_start')} at start)."
        )
        lines.append("")
    lines += [
        f"Problem: tanh MLP 2 -> {WIDTH} -> {WIDTH} -> 1, n terms, each the mean "
        f"squared residual on its own {POINTS} points (layout "
        f"`{runs[0]['layout']}`; `shared`: one forward pass over all points, each "
        "term on its slice); every method with `update_every=1`. Compile: lower + "
        "compile of one jitted `lax.scan` chunk of `steps` steps, beside the "
        "plain-sum step's (Adam on the sum, same chunk). Step ratio: chunk time "
        "over the plain step's, median of `repeats` paired ratios [min-max]. Temp "
        "MiB: `compiled.memory_analysis().temp_size_in_bytes`.",
        "",
        "| n | method | strategy | compile s | plain compile s | step ratio "
        "[min-max] | steps x repeats | temp MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "note" in r:
            lines.append(
                f"| {r['terms']} | `{r['method']}` | {r['strategy']} | - | - | "
                f"{r['note']} | - | - |"
            )
            continue
        ratio = (
            f"{r['ratio']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"
            if "ratio" in r
            else "-"
        )
        mib = None if r["temp_bytes"] is None else r["temp_bytes"] / 2**20
        lines.append(
            f"| {r['terms']} | `{r['method']}` | {r['strategy']} | "
            f"{r['compile_s']:.2f} | {r['plain_compile_s']:.2f} | {ratio} | "
            f"{r.get('steps', '?')} x {r.get('repeats', '?')} | {_fmt(mib, '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terms", type=int, nargs="+", default=[2, 10, 50, 200])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--layout", choices=("shared", "separate"), default="shared")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unrolled-max-terms", type=int, default=50)
    parser.add_argument("--out", default=None)
    parser.add_argument("--name", default="many_terms")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run's rows to OUT/NAME.json (a run in several commands)",
    )
    args = parser.parse_args(argv)
    meta = provenance.stamp("benchmarks.many_terms", argv)
    meta["layout"] = args.layout
    rows = run(args)
    report = {"runs": [meta], "rows": rows}
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{args.name}.json"
        if args.append and path.exists():
            old = json.loads(path.read_text())
            report = {"runs": old["runs"] + [meta], "rows": old["rows"] + rows}
        path.write_text(json.dumps(report, indent=1) + "\n")
        (out / f"{args.name}.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
