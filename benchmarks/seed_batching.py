"""What training the seeds in one compiled program saves, against one run per seed.

For each method, one :class:`benchmarks.train.Trainer` trains seeds ``0..N-1``
both ways in the same process, alternating (batched, separate, separate,
batched, ...) over ``--repeats`` rounds: ``Trainer.run_seeds`` (every seed in
one program: ``jax.vmap`` over seeds, or seed by seed inside the program for a
gradient-based method) and ``Trainer.run`` once per seed. Both are compiled
before timing; the time is that of the whole call (training chunks, error
evaluations, host transfers). The speed-up is the median over rounds of
(separate time / batched time), in wall and in process CPU time.

Run::

  python -m benchmarks.seed_batching --problem helmholtz --steps 1000 --seeds 3

It writes ``benchmarks/results/seed_batching.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from benchmarks import methods as specs
from benchmarks import provenance
from benchmarks.problems import get_problem
from benchmarks.train import Trainer


def _timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(trainer: Trainer, seeds: list[int], repeats: int) -> dict:
    """Batched and separate times per round, and the median speed-ups."""
    trainer.run_seeds(seeds)  # compiles for len(seeds): not timed
    batched, separate = [], []
    for i in range(repeats):
        order = ("batched", "separate") if i % 2 == 0 else ("separate", "batched")
        for which in order:
            if which == "batched":
                batched.append(_timed(lambda: trainer.run_seeds(seeds)))
            else:
                separate.append(_timed(lambda: [trainer.run(s) for s in seeds]))
    b, s = np.asarray(batched), np.asarray(separate)
    return {
        "vmapped": trainer.vmapped,
        "batched_s": b.tolist(),
        "separate_s": s.tolist(),
        "speedup_wall": float(np.median(s[:, 0] / b[:, 0])),
        "speedup_cpu": float(np.median(s[:, 1] / b[:, 1])),
    }


def markdown(report: dict) -> str:
    args = report["args"]
    lines = [
        "# Seeds in one compiled program: the speed-up",
        "",
        f"Command: `{report['command']}` ({report['date'][:10]}, "
        f"{provenance.describe(report)}; load average "
        f"{report['machine'].get('load_average_at_start')} at start).",
        "",
        f"{args['seeds']} seeds of the {args['preset']} preset of {args['problem']}, "
        f"{args['steps']} steps each: one `Trainer.run_seeds` call against "
        f"`Trainer.run` once per seed, same process, alternating over "
        f"{args['repeats']} rounds, compiled first. Speed-up: median over rounds of "
        "separate / batched time (wall; process CPU time).",
        "",
        "| method | seeds in the program | batched s (median) | separate s (median) "
        "| speed-up wall | speed-up CPU |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["methods"].items():
        how = "vmap" if r["vmapped"] else "one after the other"
        lines.append(
            f"| `{name}` | {how} | {np.median([t[0] for t in r['batched_s']]):.2f} "
            f"| {np.median([t[0] for t in r['separate_s']]):.2f} "
            f"| {r['speedup_wall']:.2f} | {r['speedup_cpu']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="helmholtz")
    p.add_argument("--preset", default="quick")
    p.add_argument("--methods", default="equal,inverse_loss,lr_annealing")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/seed_batching")
    args = p.parse_args(argv)
    report = {**provenance.stamp("benchmarks.seed_batching", argv), "args": vars(args)}
    problem = get_problem(args.problem)
    settings = problem.preset(args.preset)
    seeds = list(range(args.seeds))
    report["methods"] = {}
    for spec in specs.parse_methods(args.methods):
        trainer = Trainer(
            problem, spec.build(problem), settings, steps=args.steps, chunk=args.chunk
        )
        report["methods"][spec.text] = r = measure(trainer, seeds, args.repeats)
        print(f"{spec.text}: speed-up {r['speedup_wall']:.2f} wall, "
              f"{r['speedup_cpu']:.2f} CPU", flush=True)  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
