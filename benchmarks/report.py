"""Records of benchmark runs: JSON, CSV and the markdown summary table."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from benchmarks import provenance
from benchmarks.train import RunResult

#: Weight histories keep at most this many points per run (every step is too much
#: for a JSON file; the plots need a few hundred).
MAX_WEIGHT_POINTS = 400

CSV_FIELDS = (
    "problem",
    "preset",
    "method",
    "seed",
    "steps",
    "train_seconds",
    "compile_seconds",
    "seconds_per_step",
    "cpu_seconds_per_step",
    "final_rel_l2",
    "best_rel_l2",
    "final_weights",
    "kind",
    "pool",
    "skipped_updates",
    "lbfgs_steps",
    "lbfgs_seconds",
    "lbfgs_linesearch_failures",
)


def record(
    result: RunResult, *, problem: str, preset: str, method: str, seed: int
) -> dict:
    """One run as a JSON-ready dict, with its error and weight histories.

    A method without weights (M-ConFIG) has empty weight histories.
    """
    n = len(next(iter(result.weights.values()))) if result.weights else 0
    every = max(1, -(-n // MAX_WEIGHT_POINTS))
    index = np.arange(every - 1, n, every)
    if n and index[-1] != n - 1:
        index = np.append(index, n - 1)
    steps = int(result.steps[-1])
    return dict(
        problem=problem,
        preset=preset,
        method=method,
        seed=seed,
        steps=steps,
        adam_steps=int(result.adam_steps),
        train_seconds=result.train_seconds,
        compile_seconds=result.compile_seconds,
        seconds_per_step=result.seconds_per_step,
        cpu_seconds_per_step=result.cpu_seconds_per_step,
        final_rel_l2=result.final_error,
        best_rel_l2=result.best_error,
        final_weights=result.final_weights,
        skipped_updates=result.skipped_updates,
        lbfgs_steps=steps - int(result.adam_steps),
        lbfgs_seconds=result.lbfgs_seconds,
        lbfgs_linesearch_failures=result.lbfgs_linesearch_failures,
        batch_seeds=result.batch_seeds,
        kind=result.kind,
        pool=result.pool,
        error_history=dict(
            steps=result.steps.tolist(), rel_l2=[float(e) for e in result.errors]
        ),
        # ``steps[k]`` is the step whose weights are ``weights[term][k]``
        # (the weights applied at that step, counting from 1).
        weight_history=dict(
            steps=(index + 1).tolist(),
            weights={
                k: v[index].astype(float).tolist() for k, v in result.weights.items()
            },
        ),
    )


def write_json(path: pathlib.Path, runs: Sequence[dict], meta: dict) -> None:
    path.write_text(json.dumps(dict(meta, runs=list(runs)), indent=1) + "\n")


def write_csv(path: pathlib.Path, runs: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for run in runs:
            # Runs saved by an older runner may lack newer fields: left empty.
            row = {k: run.get(k, "") for k in CSV_FIELDS}
            row["final_weights"] = ";".join(
                f"{k}={v:.6g}" for k, v in run["final_weights"].items()
            )
            writer.writerow(row)


def _spread(values: Sequence[float]) -> str:
    values = np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.median(values):.3g} [{values.min():.3g}-{values.max():.3g}]"


def median_run(runs: Sequence[dict]) -> dict:
    """The run with the median final error (the lower median for an even count)."""
    ordered = sorted(runs, key=lambda r: r["final_rel_l2"])
    return ordered[(len(ordered) - 1) // 2]


def summary(runs: Sequence[dict], problem: str, methods: Sequence[str]) -> list[dict]:
    """Per method on one problem: medians over seeds and time per step."""
    rows = []
    for method in methods:
        mine = [r for r in runs if r["problem"] == problem and r["method"] == method]
        if not mine:
            continue
        rows.append(
            dict(
                method=method,
                seeds=len(mine),
                steps=mine[0]["steps"],
                lbfgs_steps=mine[0].get("lbfgs_steps", 0),
                final=[r["final_rel_l2"] for r in mine],
                best=[r["best_rel_l2"] for r in mine],
                seconds_per_step=float(
                    np.median([r["seconds_per_step"] for r in mine])
                ),
                cpu_seconds_per_step=float(
                    np.median([r.get("cpu_seconds_per_step", np.nan) for r in mine])
                ),
                # A real weight vector: that of the median seed.
                weights=median_run(mine)["final_weights"],
                pool=mine[0].get("pool"),
            )
        )
    return rows


def table(runs: Sequence[dict], problem: str, methods: Sequence[str]) -> str:
    """The markdown table of one problem (median and min-max over seeds)."""
    rows = summary(runs, problem, methods)
    base = next((r for r in rows if r["method"] == "equal"), rows[0])
    first = next(r for r in runs if r["problem"] == problem)
    seeds = max(r["seeds"] for r in rows)
    steps = first.get("adam_steps", first["steps"])
    lines = [
        f"### {problem} ({first['preset']} preset, {steps} steps, "
        f"{seeds} seed{'s' if seeds > 1 else ''})",
        "",
        "| method | final rel. L2 | best rel. L2 | time/step vs "
        f"{base['method']}: wall, CPU (wall ms) | final weights |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        wall = row["seconds_per_step"] / base["seconds_per_step"]
        cpu = row["cpu_seconds_per_step"] / base["cpu_seconds_per_step"]
        cpu = "n/a" if np.isnan(cpu) else f"{cpu:.2f}"  # older records: wall only
        weights = ", ".join(f"{t} {w:.3g}" for t, w in row["weights"].items())
        weights = weights or "-"
        lbfgs = f" + {row['lbfgs_steps']} L-BFGS" if row["lbfgs_steps"] else ""
        if row.get("pool"):
            lbfgs += f" (fixed pool of {row['pool']})"
        lines.append(
            f"| `{row['method']}`{lbfgs} | {_spread(row['final'])} "
            f"| {_spread(row['best'])} "
            f"| {wall:.2f}, {cpu} ({1e3 * row['seconds_per_step']:.2g} ms) "
            f"| {weights} |"
        )
    return "\n".join(lines)


HEADER = (
    "Relative L2 error on the evaluation grid: median over seeds [min-max]; "
    "'best' is the lowest error seen at any evaluation; time per step is the "
    "median over seeds of the training time per step (compilation and the first "
    "chunk's one-off start-up excluded) relative to equal weights (to the first "
    "method when equal was not run), in wall time and in CPU time of the process "
    "(steadier on a shared machine); final weights are those of the median seed "
    "(the seed with the median final error)."
)


def document(runs: Sequence[dict], meta: dict) -> str:
    """``table.md``: the command, how to read it, and one table per problem."""
    first = (
        f"Command: `{meta['command']}` ({meta['date'][:10]}, "
        f"{provenance.describe(meta)}; {meta['wall_seconds'] / 60:.1f} min wall)."
    )
    problems = dict.fromkeys(r["problem"] for r in runs)
    tables = [table(runs, p, meta["methods"]) for p in problems]
    header = HEADER
    kinds = {r.get("kind", "weighting") for r in runs}
    if "aggregator" in kinds:
        header += (
            " For a gradient aggregator the weights are the w of its update "
            "J^T w = sum_i w_i g_i at the last step (none for `m_config`, an "
            "optimizer of per-term momenta)."
        )
    if "point" in kinds:
        header += (
            " For a per-point method they are each term's mean per-point weight "
            "(1 for a term it does not weight)."
        )
    if any(r.get("pool") for r in runs):
        header += (
            " A method marked 'fixed pool of P' trained on P points per piece drawn "
            "once per seed (all of them every step when P is the batch size, a "
            "random batch of them otherwise), the others on points resampled "
            "every step."
        )
    if any(r.get("batch_seeds", 1) > 1 for r in runs):
        header += (
            " The seeds of a method were trained together in one compiled program "
            "(`jax.vmap` over seeds): a run's time is the batch's divided by its "
            "seeds."
        )
    return "\n\n".join([first, header, *tables]) + "\n"
