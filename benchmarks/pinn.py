"""Compare loss-weighting methods on PINN benchmarks: the library's main job.

Trains every requested method on the same seeds, collocation samples and step
budget, then writes a JSON and a CSV of every run, a markdown table (median and
min-max over seeds) and PNG plots: error against steps, weights against steps and
the solution of the best method.

Run from the repository root::

  python -m benchmarks.pinn                       # the main job (a few minutes)
  python -m benchmarks.pinn --problem helmholtz \\
      --methods 'equal,inverse_loss,inverse_loss(min_weight=0.0)' \\
      --seeds 3 --steps 20000 --preset quick --out benchmarks/out/helmholtz
  python -m benchmarks.pinn --problem all --seeds 3   # every problem
  python -m benchmarks.pinn --list                    # problems and methods
  python -m benchmarks.pinn --methods 'equal,inverse_loss+lbfgs(policy=frozen)' \
      --lbfgs-steps 500                               # Adam, then L-BFGS
  python -m benchmarks.pinn --problem burgers \
      --methods 'equal,config,upgrad,pcgrad(order=random),m_config'  # aggregators
  python -m benchmarks.pinn --problem allen_cahn \
      --methods 'equal,rba,self_adaptive' --pool 1024  # per-point, a fixed pool

Methods are named as in ``optax_invloss`` with their arguments (quote them in the
shell): term weightings, gradient aggregators and per-point weightings, see
:mod:`benchmarks.methods`. Per-point methods train on a fixed pool of points
drawn once per seed (``--pool``, default the batch size: a fixed collocation
set); ``--pool`` puts every method of the run on such a pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from benchmarks import methods as specs
from benchmarks import plots, provenance, report
from benchmarks.problems import PROBLEMS, Problem, get_problem
from benchmarks.train import Trainer

#: The main job's methods, in this order, those the library has.
MAIN_METHODS = (
    "equal",
    "inverse_loss",
    "inverse_loss(min_weight=0.0)",
    "lr_annealing",
    "relobralo",
)
#: The main job's step count: about 3 CPU-minutes for the five methods above.
MAIN_STEPS = 4000


def main_methods() -> str:
    names = set(specs.available())
    return ",".join(m for m in MAIN_METHODS if m.split("(")[0] in names)


def _problems(text: str) -> list[Problem]:
    if text == "all":
        return list(PROBLEMS.values())
    return [get_problem(name.strip()) for name in text.split(",")]


def _settings(problem: Problem, args: argparse.Namespace):
    settings = problem.preset(args.preset)
    changes = {}
    if args.hidden:
        hidden = tuple(int(n) for n in args.hidden.split(","))
        changes["layers"] = (problem.input_dim, *hidden, 1)
    if args.batch:
        changes["batch"] = args.batch
    return dataclasses.replace(settings, **changes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pinn",
        description="Compare loss-weighting methods on PINN benchmarks. Without "
        "--problem, --methods, --preset, --seeds, --steps, --hidden or --batch it "
        f"runs the main job: {MAIN_STEPS} steps of the quick preset on helmholtz, "
        "one seed, the default methods.",
    )
    p.add_argument(
        "--problem",
        default=None,
        help="a problem, a comma-separated list, or 'all' (default: helmholtz)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated method specs, e.g. "
        "'equal,inverse_loss,lr_annealing(update_every=10)' (default: "
        f"{main_methods()})",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 1)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="start the seeds here: seeds F..F+N-1 (default 0), e.g. to --add "
        "seeds to a folder",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per run (default: the preset's; {MAIN_STEPS} for the "
        "main job)",
    )
    p.add_argument("--preset", default=None, help="quick or paper (default: quick)")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: benchmarks/out/<problem>-<preset>)",
    )
    p.add_argument(
        "--eval-every", type=int, default=500, help="steps between error evaluations"
    )
    p.add_argument(
        "--lbfgs-steps",
        type=int,
        default=0,
        help="L-BFGS iterations after Adam: for specs with +lbfgs(...) that do not "
        "give iterations, and, with frozen weights, for every other spec (default "
        "0: no L-BFGS phase)",
    )
    p.add_argument("--hidden", default=None, help="hidden widths, e.g. 50,50,50")
    p.add_argument("--batch", type=int, default=None, help="points per piece")
    p.add_argument(
        "--pool",
        type=int,
        default=None,
        help="train every method on a fixed pool of this many points per piece, "
        "drawn once per seed, each step taking --batch of them (default: points "
        "resampled every step; per-point methods always use a pool, by default "
        "of the batch size, i.e. a fixed collocation set)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (logs only)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list problems and methods")
    p.add_argument(
        "--add",
        action="store_true",
        help="add the runs to those in --out's runs.json (same problem, preset "
        "and steps; a method and seed run again replaces its old run) and "
        "rewrite the table and plots from all of them",
    )
    p.add_argument(
        "--render",
        metavar="DIR",
        default=None,
        help="rewrite DIR's table and history plots from its runs.json, no training",
    )
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the defaults; the main job's step count when no run shape is given."""
    shape = ("problem", "methods", "preset", "seeds", "steps", "hidden", "batch")
    if all(getattr(args, name) is None for name in shape):
        args.steps = MAIN_STEPS
    args.problem = args.problem or "helmholtz"
    args.methods = args.methods or main_methods()
    args.preset = args.preset or "quick"
    args.seeds = 1 if args.seeds is None else args.seeds
    return args


def _lbfgs_phase(spec, args) -> tuple[int, dict]:
    """``(iterations, run_lbfgs options)`` of a spec's L-BFGS phase (0: none)."""
    if spec.lbfgs is None:
        return args.lbfgs_steps, {}
    options = dict(spec.lbfgs)
    iterations = options.pop("iterations", args.lbfgs_steps)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(
            f"method {spec.text!r}: the L-BFGS phase needs iterations >= 1: give "
            f"+lbfgs(iterations=...) or --lbfgs-steps, got {iterations!r}"
        )
    return iterations, options


def _prediction(problem: Problem, result) -> np.ndarray:
    points, _ = problem.reference()
    model = nnx.merge(result.graphdef, result.params)
    return np.asarray(model(jnp.asarray(points, jnp.float32)))


def run_problem(problem, method_specs, args, log) -> tuple[list[dict], dict]:
    """Every method and seed on one problem: records and the best method's run."""
    settings = _settings(problem, args)
    steps = settings.steps if args.steps is None else args.steps
    chunk = max(1, min(args.eval_every, steps))
    records, results = [], {}
    for spec in method_specs:
        log(f"{problem.name}: compiling {spec.text} ...")
        lbfgs_steps, lbfgs = _lbfgs_phase(spec, args)
        trainer = Trainer(
            problem,
            spec.build(problem),
            settings,
            steps=steps,
            chunk=chunk,
            lbfgs_steps=lbfgs_steps,
            lbfgs=lbfgs,
            pool=args.pool,
        )
        bar = tqdm(
            total=trainer.n_chunks * trainer.chunk + trainer.lbfgs_steps * args.seeds,
            desc=f"{problem.name} {spec.text} seeds {args.first_seed}-"
            f"{args.first_seed + args.seeds - 1}",
            disable=args.no_progress,
            leave=True,
            file=sys.stderr,
        )
        postfix = lambda _, e, bar=bar: bar.set_postfix(rel_l2=f"{np.median(e):.3g}")
        seeds = list(
            range(args.first_seed, args.first_seed + args.seeds)
        )  # one program
        runs = trainer.run_seeds(seeds, progress=bar.update, on_eval=postfix)
        bar.close()
        for seed, result in zip(seeds, runs, strict=True):
            results[spec.text, seed] = result
            records.append(
                report.record(
                    result,
                    problem=problem.name,
                    preset=args.preset,
                    method=spec.text,
                    seed=seed,
                )
            )
            log(
                f"{problem.name} {spec.text} seed {seed}: rel. L2 "
                f"{result.final_error:.3g} (best {result.best_error:.3g}), "
                f"{1e3 * result.seconds_per_step:.3g} ms/step"
            )
    medians = {
        spec.text: np.median(
            [r["final_rel_l2"] for r in records if r["method"] == spec.text]
        )
        for spec in method_specs
    }
    best = min(medians, key=medians.get)
    median = report.median_run([r for r in records if r["method"] == best])
    error, seed = median["final_rel_l2"], median["seed"]
    chosen = dict(method=best, seed=seed, error=error, result=results[best, seed])
    return records, chosen


def _previous_runs(out: pathlib.Path, problems, args) -> dict:
    """``out``'s runs.json, checked to be comparable with this invocation."""
    path = out / "runs.json"
    if not path.exists():
        raise ValueError(f"--add: there is no {path} to add to")
    previous = json.loads(path.read_text())
    if previous["preset"] != args.preset:
        raise ValueError(
            f"--add: {path} holds preset {previous['preset']!r}, not {args.preset!r}"
        )
    for problem in problems:
        settings = _settings(problem, args)
        steps = settings.steps if args.steps is None else args.steps
        old = {
            r["adam_steps"] for r in previous["runs"] if r["problem"] == problem.name
        }
        if old and old != {steps}:
            raise ValueError(
                f"--add: {path} holds {problem.name} runs of {sorted(old)} steps; "
                f"this run would train {steps} (give --steps)"
            )
    return previous


def _merged(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` and ``new`` runs; a new (problem, method, seed) replaces the old."""
    key = lambda r: (r["problem"], r["method"], r["seed"])
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + list(new)


def _beats(chosen: dict, previous: dict, problem: str) -> bool:
    """Whether this run's best method has a lower median than every earlier one."""
    errors: dict[str, list[float]] = {}
    for r in previous["runs"]:
        if r["problem"] == problem and r["method"] != chosen["method"]:
            errors.setdefault(r["method"], []).append(r["final_rel_l2"])
    return all(chosen["error"] <= np.median(e) for e in errors.values())


def _history_plots(out, runs, problem: str, methods) -> dict:
    paths = {}
    for kind, plot in (("error", plots.error_plot), ("weights", plots.weights_plot)):
        paths[f"{problem}_{kind}"] = out / f"{problem}_{kind}.png"
        plot(paths[f"{problem}_{kind}"], runs, problem, methods)
    return paths


def render(folder: pathlib.Path) -> dict:
    """Rewrites the table, the CSV and the history plots of a folder from runs.json.

    The solution plots need the trained parameters, which the JSON does not
    hold; they are left as they are.
    """
    data = json.loads((folder / "runs.json").read_text())
    runs = data.pop("runs")
    paths = dict(table=folder / "table.md", csv=folder / "runs.csv")
    report.write_csv(paths["csv"], runs)
    for problem in dict.fromkeys(r["problem"] for r in runs):
        mine = [r for r in runs if r["problem"] == problem]
        paths |= _history_plots(folder, mine, problem, data["methods"])
    text = report.document(runs, data)
    paths["table"].write_text(text)
    print(text)
    return paths


def main(argv: list[str] | None = None) -> dict:
    """Runs the comparison; returns the paths it wrote (``{"json": ..., ...}``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _resolve(parser().parse_args(argv))
    if args.list:
        print("problems:", ", ".join(PROBLEMS))
        print("methods:", ", ".join(specs.available()))
        names = lambda found: ", ".join(sorted(found))
        print("  term weightings:", names([specs.EQUAL, *specs.factories()]))
        print("  gradient aggregators:", names(specs.aggregator_factories()))
        print("  per-point weightings:", names(specs.point_factories()))
        return {}
    if args.render:
        return render(pathlib.Path(args.render))
    if args.seeds < 1:
        parser().error(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        parser().error(f"--first-seed must be >= 0, got {args.first_seed}")
    try:
        problems = _problems(args.problem)
        method_specs = specs.parse_methods(args.methods)
        for problem in problems:  # every method builds before any training
            _settings(problem, args)
            for spec in method_specs:
                spec.build(problem)
                if _lbfgs_phase(spec, args)[0] and not specs.lbfgs_options():
                    raise ValueError(
                        "--lbfgs-steps: this version of optax_invloss has no "
                        "L-BFGS weighting policies (optax_invloss.run_lbfgs)"
                    )
                if _lbfgs_phase(spec, args)[0] and spec.family != "weighting":
                    raise ValueError(
                        f"method {spec.text!r}: the runner's L-BFGS phase follows "
                        "term weightings only (run aggregators and per-point "
                        "methods without --lbfgs-steps)"
                    )
            if args.pool is not None and args.pool < _settings(problem, args).batch:
                raise ValueError(
                    f"--pool {args.pool} is smaller than the batch "
                    f"({_settings(problem, args).batch} points per piece)"
                )
    except ValueError as error:
        parser().error(str(error))
    name = args.problem if len(problems) == 1 else "all"
    out = pathlib.Path(args.out or f"benchmarks/out/{name}-{args.preset}")
    previous = None
    if args.add:
        try:
            previous = _previous_runs(out, problems, args)
        except ValueError as error:
            parser().error(str(error))
    out.mkdir(parents=True, exist_ok=True)
    log = lambda message: tqdm.write(message, file=sys.stderr)
    stamp = provenance.stamp("benchmarks.pinn", argv)
    command = stamp["command"]
    start = time.perf_counter()
    records, paths = [], {}
    methods = [s.text for s in method_specs]
    if previous is not None:
        methods = list(dict.fromkeys([*previous["methods"], *methods]))
    for problem in problems:
        mine, chosen = run_problem(problem, method_specs, args, log)
        records += mine
        if previous is not None:
            mine = [
                r
                for r in _merged(previous["runs"], mine)
                if r["problem"] == problem.name
            ]
        if not args.no_plots:
            paths |= _history_plots(out, mine, problem.name, methods)
            if previous is not None and not _beats(chosen, previous, problem.name):
                continue  # the solution plot of a better earlier method stays
            path = out / f"{problem.name}_solution.png"
            label = (
                f"best method {chosen['method']}, seed {chosen['seed']}, "
                f"rel. L2 {chosen['error']:.3g}"
            )
            plots.solution_plot(
                path, problem, _prediction(problem, chosen["result"]), label
            )
            paths[f"{problem.name}_solution"] = path
    wall = time.perf_counter() - start
    meta = dict(
        stamp,
        wall_seconds=wall,
        preset=args.preset,
        seeds=args.seeds,
        methods=methods,
    )
    if previous is not None:
        records = _merged(previous["runs"], records)
        meta["command"] = f"{previous['command']}; then {command}"
        meta["wall_seconds"] += previous["wall_seconds"]
        meta["seeds"] = len({r["seed"] for r in records})
    text = report.document(records, meta)
    paths = dict(
        json=out / "runs.json", csv=out / "runs.csv", table=out / "table.md", **paths
    )
    report.write_json(paths["json"], records, meta)
    report.write_csv(paths["csv"], records)
    paths["table"].write_text(text)
    print(text)
    print(f"Wall time {wall:.0f} s. Wrote:")
    for path in paths.values():
        print(f"  {path}")
    return paths


if __name__ == "__main__":
    main()
