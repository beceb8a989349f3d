"""Adam, then L-BFGS, on 2D Helmholtz: which L-BFGS policy for the weights?

Trains a tanh MLP with Adam under ``optax_invloss.inverse_loss()`` (resampling the
collocation points each step), then continues from the same parameters and
weights with L-BFGS on one fixed batch, under each policy:

- ``frozen``: Adam's last weights for the whole phase (``run_lbfgs``, default);
- ``refreshed/N``: weights recomputed every N iterations, L-BFGS reset when they
  change (``run_lbfgs(policy="refreshed")``);
- ``log``: the fixed objective ``sum_i log(L_i + eps)`` (``policy="log"``);
- ``naive``: the weights recomputed at every iteration by
  ``with_weighting(optax.lbfgs(), ...)``, following Optax's L-BFGS example
  (``optax.value_and_grad_from_state``) with no reset: the line search starts
  from a value and gradient cached under the previous weights.

``refreshed`` and ``naive`` are run twice: with the Adam phase's method (the
library defaults, whose caps hold most weights still) and with the bare formula
(``inverse_loss(min_weight=0.0)``, from the same weights), whose weights move
much more from one iterate to the next.

For each policy: the relative L2 error on the 100 x 100 grid, the final loss
terms, how often the line search failed (no step of sufficient decrease), and how
often the objective of the iteration rose (its value at the new iterate above its
value at the old one; for ``naive`` the value at the old iterate is recomputed
under the iteration's weights, which is not what its line search compared with).

Run ``python -m benchmarks.lbfgs_policies`` (see ``--help``); it writes
``benchmarks/results/lbfgs_policies.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_invloss as oil
from benchmarks import provenance
from benchmarks.problems import MLP, get_problem, relative_l2
from benchmarks.train import weighted_step

RESULTS = pathlib.Path(__file__).parent / "results"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="helmholtz5")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--layers", default="2,50,50,50,1")
    parser.add_argument("--adam-steps", type=int, default=3000)
    parser.add_argument("--lbfgs-iterations", type=int, default=300)
    parser.add_argument("--refresh-every", default="50")
    parser.add_argument("--log-eps", default="1e-12,1e-4")
    parser.add_argument("--batch", type=int, default=128, help="points per piece")
    parser.add_argument("--out", default=str(RESULTS / "lbfgs_policies"))
    return parser.parse_args(argv)


def make_loss_fn(problem, graphdef, batch):
    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        return problem.loss_terms(model, batch)

    return loss_fn


def error_of(problem, graphdef, params) -> float:
    points, exact = problem.reference()
    model = nnx.merge(graphdef, params)
    return float(relative_l2(model(jnp.asarray(points, jnp.float32)), exact))


def make_adam_phase(problem, graphdef, params, method, steps, batch):
    """``run(params, key) -> (params, opt_state)``, compiled once for all seeds.

    The training step is ``benchmarks.train.weighted_step``, the one every
    benchmark runs.
    """
    preset = problem.preset("quick")
    sample = lambda key: problem.sample(key, batch)
    loss_fn = lambda p, batch: problem.loss_terms(nnx.merge(graphdef, p), batch)
    residual_fn = lambda p, batch: problem.residuals(nnx.merge(graphdef, p), batch)
    shapes = jax.eval_shape(loss_fn, params, sample(jax.random.key(0)))
    tx = oil.with_weighting(preset.make_optimizer(), method, losses=shapes)
    step = weighted_step(tx, loss_fn, residual_fn, sample)

    @jax.jit
    def run(params, key):
        keys = jax.random.split(key, steps)
        return jax.lax.scan(step, (params, tx.init(params)), keys)[0]

    return run


def make_naive_phase(loss_fn, params, method, iterations):
    """Weights recomputed every iteration through with_weighting, no reset.

    ``run(params, weighting_state) -> (params, weighting_state, info, used)``,
    ``used`` the start values its line searches compared with.
    """
    tx = oil.with_weighting(optax.lbfgs(), method, losses=loss_fn(params))

    def body(carry, _):
        params, opt_state = carry
        objective = oil.weighted_objective(loss_fn, oil.loss_weights(opt_state))
        # What the loop hands the line search: cached under the previous weights.
        value, grad = optax.value_and_grad_from_state(objective)(
            params, state=opt_state
        )
        true_value = objective(params)  # this iteration's objective, recomputed
        updates, opt_state = tx.update(
            grad,
            opt_state,
            params,
            value=value,
            grad=grad,
            value_fn=objective,
            losses=loss_fn(params),
        )
        params = optax.apply_updates(params, updates)
        # The same objective at the new iterate, recomputed: the line search's
        # cached value is cleared (inf) whenever with_weighting's weights move.
        after = objective(params)
        failed = optax.tree.get(opt_state, "decrease_error") > 0
        return (params, opt_state), (true_value, after, failed, value)

    @jax.jit
    def run(params, weighting_state):
        opt_state = tx.init(params)._replace(weighting_state=weighting_state)
        (params, opt_state), (objective, after, failed, used) = jax.lax.scan(
            body, (params, opt_state), None, length=iterations
        )
        no = jnp.zeros_like(failed)  # every step taken, none stopped, no refresh
        info = oil.LBFGSInfo(
            objective, after, failed, rejected=no, stopped=no, refreshed=no
        )
        return params, opt_state.weighting_state, info, used

    return run


def summarise(problem, graphdef, loss_fn, params, info, seconds, used=None):
    objective = np.asarray(info.objective, np.float64)
    after = np.asarray(info.objective_after, np.float64)
    # How far the value the line search started from was from the iteration's
    # objective at the iterate (exact for run_lbfgs's policies by construction).
    if used is None:
        start_error = 0.0
    else:
        start_error = float(
            np.max(np.abs(np.asarray(used, np.float64) - objective) / np.abs(objective))
        )
    return {
        "start_value_error": start_error,
        "error": error_of(problem, graphdef, params),
        "losses": {k: float(v) for k, v in loss_fn(params).items()},
        "linesearch_failures": int(np.sum(info.linesearch_failed)),
        "objective_rises": int(np.sum(after > objective)),
        "objective_rises_beyond_1e-6": int(
            np.sum(after > objective + 1e-6 * np.abs(objective))
        ),
        "refreshes": int(np.sum(info.refreshed)),
        "seconds": round(seconds, 1),
    }


def policies(args, method, bare):
    """``(label, run_lbfgs keyword arguments or ("naive", method))`` pairs."""
    out = [("frozen", dict(policy="frozen"))]
    for every in args.refresh_every.split(","):
        every = int(every)
        out.append(
            (
                f"refreshed/{every}",
                dict(policy="refreshed", method=method, refresh_every=every),
            )
        )
    for eps in args.log_eps.split(","):
        out.append((f"log, eps={float(eps):g}", dict(policy="log", eps=float(eps))))
    out.append(("naive: every iteration, no reset", ("naive", method)))
    # The same two with the bare formula in the L-BFGS phase (caps off, starting
    # from Adam's weights), whose weights move much more from one iterate to the
    # next.
    every = int(args.refresh_every.split(",")[0])
    out.append(
        (
            f"refreshed/{every}, bare formula",
            dict(policy="refreshed", method=bare, refresh_every=every),
        )
    )
    out.append(("naive, bare formula", ("naive", bare)))
    return out


def run_problem(name, args):
    """Results by policy, each a list over seeds."""
    problem = get_problem(name)
    layers = tuple(int(n) for n in args.layers.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    graphdef, params0 = nnx.split(MLP(layers, rngs=nnx.Rngs(seeds[0])))
    method = oil.inverse_loss()
    adam = make_adam_phase(
        problem, graphdef, params0, method, args.adam_steps, args.batch
    )
    # One fixed L-BFGS batch for all seeds, so that every phase compiles once.
    batch = problem.sample(jax.random.key(10_000), args.batch)
    loss_fn = make_loss_fn(problem, graphdef, batch)
    bare = oil.inverse_loss(min_weight=0.0)
    naive = {
        m: make_naive_phase(loss_fn, params0, m, args.lbfgs_iterations)
        for m in (method, bare)
    }
    rows = {}
    for seed in seeds:
        _, params = nnx.split(MLP(layers, rngs=nnx.Rngs(seed)))
        start = time.perf_counter()
        params, opt_state = adam(params, jax.random.key(seed))
        jax.block_until_ready(params)
        weighting_state = opt_state.weighting_state
        row = {
            "error": error_of(problem, graphdef, params),
            "losses": {k: float(v) for k, v in loss_fn(params).items()},
            "weights": {
                k: float(v) for k, v in oil.loss_weights(weighting_state).items()
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
        rows.setdefault("adam only", []).append(row)
        print(f"[{name} seed {seed}] adam only: {row}", flush=True)
        for label, kwargs in policies(args, method, bare):
            start = time.perf_counter()
            if isinstance(kwargs, tuple):
                new_params, ws, info, used = naive[kwargs[1]](params, weighting_state)
            else:
                used = None
                new_params, ws, info = oil.run_lbfgs(
                    loss_fn,
                    params,
                    weighting_state,
                    iterations=args.lbfgs_iterations,
                    **kwargs,
                )
            jax.block_until_ready(new_params)
            row = summarise(
                problem,
                graphdef,
                loss_fn,
                new_params,
                info,
                time.perf_counter() - start,
                used,
            )
            row["weights"] = {k: float(v) for k, v in oil.loss_weights(ws).items()}
            rows.setdefault(label, []).append(row)
            print(f"[{name} seed {seed}] {label}: {row}", flush=True)
    return rows


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def markdown(results, args, meta) -> str:
    lines = [
        "# L-BFGS policies after Adam, on 2D Helmholtz",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"{provenance.describe(meta)}; float32, seeds {args.seeds}.",
        "",
        f"Adam ({args.adam_steps} steps, lr 1e-3 * 0.9^(step/1000), {args.batch} "
        "points per piece resampled each step) under `inverse_loss()` (defaults), "
        f"then {args.lbfgs_iterations} iterations of `optax.lbfgs()` on one fixed "
        f"batch ({args.batch} points per piece), MLP {args.layers}. Error: relative "
        "L2 on the 100 x 100 grid, per seed and their mean; losses: mean over "
        "seeds, on the L-BFGS batch. Failures: iterations whose line search found "
        "no step of sufficient decrease. Rises: iterations whose objective was "
        "higher at the new iterate than at the old one (strictly / by more than "
        "the line search's 1e-6 relative tolerance); for `naive` the old value is "
        "recomputed under the iteration's weights. Start value off by: the largest "
        "relative difference, over iterations and seeds, between the value a line "
        "search started from and the iteration's objective at its iterate (0 by "
        "construction for `run_lbfgs`'s policies; `naive` reuses a value cached "
        "under the previous weights). Failures, rises and refreshes are totals "
        "over the seeds; seconds include compilation on the first seed.",
        "",
    ]
    for name, rows in results.items():
        terms = list(rows["adam only"][0]["losses"])
        lines += [
            f"## {name} ({len(terms)} terms)",
            "",
            "| policy | rel. L2 error: mean (per seed) | "
            + " | ".join(f"L_{t}" for t in terms)
            + " | line-search failures | objective rises (strict / > tol) "
            "| start value off by | refreshes | seconds |",
            "|---|---|" + "---|" * len(terms) + "---|---|---|---|---|",
        ]
        for label, runs in rows.items():
            errors = [r["error"] for r in runs]
            error = f"{fmt(float(np.mean(errors)))} ({', '.join(map(fmt, errors))})"
            losses = " | ".join(
                fmt(float(np.mean([r["losses"][t] for r in runs]))) for t in terms
            )
            total = lambda key, runs=runs: sum(r[key] for r in runs)
            if label == "adam only":
                rest = "- | - | - | - "
            else:
                off = max(r["start_value_error"] for r in runs)
                rest = (
                    f"{total('linesearch_failures')} | {total('objective_rises')} / "
                    f"{total('objective_rises_beyond_1e-6')} | "
                    f"{'0' if off == 0 else fmt(off)} | {total('refreshes')} "
                )
            seconds = sum(r["seconds"] for r in runs)
            lines.append(f"| {label} | {error} | {losses} | {rest}| {seconds:.0f} |")
        lines += ["", "Weights at the end of Adam (frozen uses these):", ""]
        for seed, run in zip(args.seeds.split(","), rows["adam only"], strict=True):
            weights = ", ".join(f"{k} {v:.3g}" for k, v in run["weights"].items())
            lines.append(f"- seed {seed}: {weights}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    meta = provenance.stamp("benchmarks.lbfgs_policies", argv)
    results = {name: run_problem(name, args) for name in args.problems.split(",")}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(results, args, meta)
    out.with_suffix(".md").write_text(text + "\n")
    payload = {**meta, "args": vars(args), "results": results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
