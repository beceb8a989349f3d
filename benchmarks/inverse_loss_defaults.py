"""How inverse_loss's defaults were chosen: Helmholtz and Poisson, a few settings.

Runs equal weights, the bare formula and candidate settings of
``optax_invloss.inverse_loss`` on the 2D Helmholtz problem (2 terms) and on the 1D
Poisson problem (Adam, and the paper's plain gradient descent), and writes a
markdown table and a JSON file to ``benchmarks/results/``.

Run (about 15-20 minutes on a 2-core CPU)::

  python -m benchmarks.inverse_loss_defaults --seeds 2 --steps 10000
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from tqdm import tqdm

import optax_invloss as oil
from benchmarks import provenance
from benchmarks.problems import get_problem
from benchmarks.train import train

SETTINGS = {
    "equal weights (plain sum)": None,
    "bare formula (min_weight=0)": dict(min_weight=0.0),
    "bare + ema_decay=0.99": dict(min_weight=0.0, ema_decay=0.99),
    "min_weight=0.01/n": dict(min_weight="0.01/n"),
    "min_weight=0.1/n (default)": dict(),
    "min_weight=0.3/n": dict(min_weight="0.3/n"),
    "min_weight=0.1/n, ema_decay=0.9": dict(ema_decay=0.9),
}

CASES = [("helmholtz", "quick"), ("poisson", "adam"), ("poisson", "paper")]


def make(kwargs, n):
    if kwargs is None:
        return None
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("min_weight"), str):
        kwargs["min_weight"] = float(kwargs["min_weight"].split("/")[0]) / n
    return oil.inverse_loss(**kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    rows = []
    for name, preset in CASES:
        problem = get_problem(name)
        n = len(problem.term_names)
        steps = args.steps if name == "helmholtz" else problem.preset(preset).steps
        for label, kwargs in SETTINGS.items():
            for seed in range(args.seeds):
                bar = tqdm(
                    total=steps, desc=f"{name}/{preset} {label} s{seed}", leave=False
                )
                start = time.perf_counter()
                result = train(
                    problem,
                    make(kwargs, n),
                    preset=preset,
                    seed=seed,
                    steps=steps,
                    chunk=1000,
                    progress=bar.update,
                )
                bar.close()
                rows.append(
                    dict(
                        problem=name,
                        preset=preset,
                        setting=label,
                        seed=seed,
                        steps=int(result.steps[-1]),
                        final_error=result.final_error,
                        best_error=result.best_error,
                        final_weights=result.final_weights,
                        min_weight_seen={
                            k: float(np.min(v)) for k, v in result.weights.items()
                        },
                        seconds=time.perf_counter() - start,
                    )
                )
                print(
                    f"{name}/{preset} {label} seed {seed}: "
                    f"error {result.final_error:.3g} weights "
                    f"{ {k: round(v, 4) for k, v in result.final_weights.items()} }",
                    flush=True,
                )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = provenance.stamp(
        "benchmarks.inverse_loss_defaults",
        ["--seeds", str(args.seeds), "--steps", str(args.steps)],
    )
    command = meta["command"]
    (out / "inverse_loss_defaults.json").write_text(
        json.dumps(dict(meta, runs=rows), indent=1)
    )
    lines = [
        "# inverse_loss defaults: the runs that chose them",
        "",
        f"Command: `{command}` ({meta['date'][:10]}, {provenance.describe(meta)}).",
        "",
        "Relative L2 error at the end of training, median over seeds "
        "(min-max in brackets), and the final weights of the first seed.",
        "",
        "| problem | setting | final rel. L2 | final weights (seed 0) |",
        "|---|---|---|---|",
    ]
    for name, preset in CASES:
        for label in SETTINGS:
            runs = [
                r
                for r in rows
                if r["problem"] == name
                and r["preset"] == preset
                and r["setting"] == label
            ]
            errs = [r["final_error"] for r in runs]
            w = ", ".join(f"{k} {v:.3g}" for k, v in runs[0]["final_weights"].items())
            lines.append(
                f"| {name} ({preset}, {runs[0]['steps']} steps) | {label} | "
                f"{np.median(errs):.3g} [{min(errs):.3g}-{max(errs):.3g}] "
                f"| {w} |"
            )
    (out / "inverse_loss_defaults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
