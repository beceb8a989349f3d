"""jinns side by side: the cost of one training step of the same PINN and method.

The 2D Helmholtz problem of ``benchmarks/problems/helmholtz.py`` at its quick
preset's size (a 3 x 50 tanh MLP, 128 PDE points and 128 boundary points, the
preset's Adam schedule) is trained for ``--steps`` steps three ways, timed in one
process, compile excluded:

- plain JAX: the sum of the losses and the bare optimizer, a jitted ``lax.scan``
  chunk (``benchmarks/overhead_steps.plain_step``);
- this library: the same chunk with the weighting method
  (``benchmarks/overhead_steps.method_step``, the step of ``benchmarks/train.py``);
- jinns: ``jinns.solve`` with the same network, points, optimizer and jinns'
  closest weight update. ``jinns.solve`` compiles its whole training loop (a
  ``lax.while_loop``) ahead of time on every call and reports the compile and the
  run separately; the run's time (its ``Training took`` line) is the one used.

The methods, ours against jinns': equal weights (our plain step; jinns without
``update_weight_method``), inverse loss (``inverse_loss()``; jinns'
``"prior_loss"``, :math:`w_i = 1/(L_i + 10^{-6})` from the previous step's losses,
unnormalised, no caps) and learning-rate annealing (``lr_annealing(update_every=1,
mask=None)``: jinns updates on every step from all parameters' gradients).

Each repeat runs the programs of one method back to back in an order that
alternates (plain, ours, jinns / jinns, ours, plain); the ratios are the medians
over repeats of the per-repeat ratios, with their min and max. jinns' step costs
a compile of some seconds per repeat, so its run is further in time from ours
than two of our chunks are from each other: on a loaded machine its ratios are
the noisier ones.

jinns is an optional dependency (``pip install .[bench-peers]``), never one of
the tests'. Run::

    python -m benchmarks.jinns_compare --repeats 5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import optax_invloss as oil
from benchmarks import provenance, timing
from benchmarks.overhead_steps import make_task, method_step, plain_step

try:
    import equinox as eqx
    import jinns
    from jinns.loss import (
        Dirichlet,
        LossPDEStatio,
        LossWeightsPDEStatio,
        PDEStatio,
        laplacian_rev,
    )
    from jinns.parameters import Params
except ImportError as error:  # pragma: no cover - depends on the environment
    jinns = None
    _IMPORT_ERROR = error

LAYERS = (2, 50, 50, 50, 1)
POINTS = 128

# Ours, and jinns' closest update_weight_method.
METHODS = {
    "equal weights": (None, None),
    "inverse loss": (lambda: oil.inverse_loss(), "prior_loss"),
    "lr_annealing": (
        lambda: oil.lr_annealing(update_every=1, mask=None),
        "lr_annealing",
    ),
}
JINNS_METHOD_NAMES = {
    "equal weights": "update_weight_method=None",
    "inverse loss": '"prior_loss"',
    "lr_annealing": '"lr_annealing"',
}
OURS_NAMES = {
    "equal weights": "plain sum (no weighting)",
    "inverse loss": "`inverse_loss()`",
    "lr_annealing": "`lr_annealing(update_every=1, mask=None)`",
}


@dataclasses.dataclass(frozen=True)
class _Size:
    layers: tuple[int, ...] = LAYERS
    points: int = POINTS


def _require_jinns() -> None:
    if jinns is None:
        sys.exit(
            "benchmarks.jinns_compare needs jinns, an optional benchmark "
            "dependency: pip install 'optax_invloss[bench-peers]' (or pip install "
            f"jinns). Import failed: {_IMPORT_ERROR}"
        )


def _jinns_problem(optimizer, seed: int = 0):
    """jinns' network, points and a loss factory for the Helmholtz problem."""
    a1, a2, k = 1.0, 4.0, 1.0

    class Helmholtz(PDEStatio):
        """``lap u + k^2 u - q`` with the source of the exact solution."""

        def equation(self, x, u, params):
            exact = jnp.sin(a1 * jnp.pi * x[0]) * jnp.sin(a2 * jnp.pi * x[1])
            q = (k**2 - (a1 * jnp.pi) ** 2 - (a2 * jnp.pi) ** 2) * exact
            return laplacian_rev(x, u, params)[..., None] + k**2 * u(x, params) - q

    widths = list(zip(LAYERS[:-1], LAYERS[1:], strict=True))
    eqx_list = []
    for i, (n_in, n_out) in enumerate(widths):
        eqx_list.append((eqx.nn.Linear, n_in, n_out))
        if i < len(widths) - 1:
            eqx_list.append((jax.nn.tanh,))
    u, nn_params = jinns.nn.PINN_MLP.create(
        key=jax.random.key(seed), eqx_list=tuple(eqx_list), eq_type="PDEStatio"
    )
    params = Params(nn_params=nn_params, eq_params={})
    # nb points on the boundary: nb / 4 per side, as our per-term thinning keeps.
    data = jinns.data.CubicMeshPDEStatio(
        key=jax.random.key(seed + 1),
        n=POINTS,
        nb=POINTS,
        dim=2,
        min_pts=(-1.0, -1.0),
        max_pts=(1.0, 1.0),
        method="uniform",
    )

    def loss(update_weight_method):
        return LossPDEStatio(
            u=u,
            dynamic_loss=Helmholtz(),
            loss_weights=LossWeightsPDEStatio(dyn_loss=1.0, boundary_loss=1.0),
            boundary_condition=Dirichlet(),
            params=params,
            update_weight_method=update_weight_method,
        )

    return params, data, loss, optimizer


def _jinns_run(problem, update_weight_method, steps: int) -> tuple[float, float]:
    """``jinns.solve`` for ``steps`` steps: (compile s, run s per step)."""
    params, data, loss, optimizer = problem
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        out = jinns.solve(
            n_iter=steps,
            init_params=params,
            data=data,
            loss=loss(update_weight_method),
            optimizer=optimizer,
            verbose=True,  # prints its compile and run times, read below
            print_loss_every=2**30,
            key=jax.random.key(2),
        )
    jax.block_until_ready(out[0])
    text = log.getvalue()
    found = dict(re.findall(r"(Compilation|Training) took\s+([0-9.eE+-]+)", text))
    if set(found) != {"Compilation", "Training"}:
        raise RuntimeError(f"jinns.solve did not report its times; it printed:\n{text}")
    losses = np.asarray(out[1])
    if not np.all(np.isfinite(losses)):
        raise RuntimeError(f"jinns training gave non-finite losses: {losses[-5:]}")
    return float(found["Compilation"]), float(found["Training"]) / steps


def _ours(task, make_method, keys):
    step, carry = (
        plain_step(task) if make_method is None else method_step(task, make_method())
    )
    return timing.compile_chunk(step, carry, keys)


def measure(steps: int, repeats: int) -> dict:
    task = make_task("helmholtz", _Size())
    keys = jax.random.split(jax.random.key(0), steps)
    jinns_problem = _jinns_problem(task.optimizer)
    plain = _ours(task, None, keys)
    rows = {}
    for name, (make_method, jinns_method) in METHODS.items():
        ours = plain if make_method is None else _ours(task, make_method, keys)
        times = {"plain": [], "ours": [], "jinns": [], "jinns_compile_s": []}
        for r in range(repeats):
            order = (
                ("plain", "ours", "jinns") if r % 2 == 0 else ("jinns", "ours", "plain")
            )
            for which in order:
                if which == "jinns":
                    compile_s, per_step = _jinns_run(jinns_problem, jinns_method, steps)
                    times["jinns"].append(per_step)
                    times["jinns_compile_s"].append(compile_s)
                else:
                    program = plain if which == "plain" else ours
                    wall, _ = timing.run(program, keys)
                    times[which].append(wall / steps)
        rows[name] = _summary(times, ours.compile_seconds, plain.compile_seconds)
        print(
            name, json.dumps({k: v for k, v in rows[name].items() if "ratios" not in k})
        )
    return rows


def _summary(times: dict, ours_compile: float, plain_compile: float) -> dict:
    t = {k: np.asarray(v) for k, v in times.items()}

    def ratio(a, b):
        r = t[a] / t[b]
        return {
            "median": float(np.median(r)),
            "min": float(r.min()),
            "max": float(r.max()),
            "ratios": [float(x) for x in r],
        }

    return {
        "plain_ms": float(np.median(t["plain"]) * 1e3),
        "ours_ms": float(np.median(t["ours"]) * 1e3),
        "jinns_ms": float(np.median(t["jinns"]) * 1e3),
        "jinns_over_ours": ratio("jinns", "ours"),
        "ours_over_plain": ratio("ours", "plain"),
        "jinns_over_plain": ratio("jinns", "plain"),
        "ours_compile_s": ours_compile,
        "plain_compile_s": plain_compile,
        "jinns_compile_s": float(np.median(t["jinns_compile_s"])),
        "repeats": len(t["plain"]),
    }


def _fmt(r: dict) -> str:
    return f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        "# jinns side by side (2D Helmholtz, quick preset size)",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, "
        f"{provenance.describe(meta)}; jinns {result['jinns_version']}; "
        f"load average {meta['machine'].get('load_average_at_start')} at start, "
        f"{result['load_average_at_end']} at end).",
        "",
        f"Problem: `benchmarks/problems/helmholtz.py` (`helmholtz`, 2 terms) on a "
        f"{len(LAYERS) - 2} x {LAYERS[1]} tanh MLP, {POINTS} PDE points and "
        f"{POINTS} boundary points ({POINTS // 4} per side), the quick preset's Adam "
        "schedule, float32, in both libraries. Steps: jitted chunks of "
        f"{result['steps']} steps (ours: `lax.scan`; jinns: `jinns.solve`'s "
        "compiled `lax.while_loop`, its own reported run time), compile excluded; "
        f"{result['repeats']} repeats, the programs of a row run back to back in an "
        "alternating order; each ratio is the median over repeats of the "
        "per-repeat ratio [min-max].",
        "",
        "| method | ours | jinns | plain ms/step | ours ms/step | jinns ms/step "
        "| jinns / ours | ours / plain | jinns / plain "
        "| compile s (plain, ours, jinns) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {OURS_NAMES[name]} | {JINNS_METHOD_NAMES[name]} "
            f"| {row['plain_ms']:.2f} | {row['ours_ms']:.2f} | {row['jinns_ms']:.2f} "
            f"| {_fmt(row['jinns_over_ours'])} | {_fmt(row['ours_over_plain'])} "
            f"| {_fmt(row['jinns_over_plain'])} "
            f"| {row['plain_compile_s']:.1f}, {row['ours_compile_s']:.1f}, "
            f"{row['jinns_compile_s']:.1f} |"
        )
    equal = result["rows"]["equal weights"]
    lines += [
        "",
        f"In short: with equal weights jinns' step takes "
        f"{_fmt(equal['jinns_over_plain'])} times the plain JAX step, on a "
        f"machine at load {meta['machine'].get('load_average_at_start')} (2 cores "
        "shared with other jobs: each ratio's range is its noise, and the "
        "equal-weights row's ours / plain, the same program twice, shows its size).",
    ]
    lines += ["", *result["notes"], ""]
    return "\n".join(lines)


NOTES = [
    "What differs between the two steps, besides the libraries' own code:",
    "",
    "- jinns computes every term's gradient separately on every step "
    "(`loss.values_and_grads`) and sums them with the weights, whatever the "
    "weight update; ours takes one gradient of the weighted sum (plain, inverse "
    "loss) and per-term gradients only where the method needs them "
    "(`lr_annealing`).",
    "- The PDE residual's Laplacian: jinns' `laplacian_rev` (reverse over "
    "reverse, one pass per dimension); ours `jnp.trace(jax.hessian(u))` "
    "(forward over reverse).",
    "- Points: ours draws new points every step (`helmholtz.sample2`, thinned "
    "to 128 per term); jinns draws its 128 + 128 points once and takes the whole "
    "set each step (batch size = the set), so its step draws no points.",
    "- `jinns.solve`'s loop also stores each step's losses and checks the "
    "parameters for NaN (its normal bookkeeping, kept in the timing).",
    "- The equal-weights row runs the same program of ours twice (plain and "
    "ours): its ours / plain is the noise of this machine's timings.",
    "- jinns' `prior_loss` weights are 1 / (previous loss + 1e-6), not "
    "normalised and not capped; ours are normalised to sum to 1 with a floor "
    "of 0.05. jinns' `lr_annealing` uses all parameters and updates every step; "
    "ours here too (`mask=None, update_every=1`), where the default is the "
    "weight matrices, every 10 steps.",
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    _require_jinns()
    import importlib.metadata

    meta = provenance.stamp("benchmarks.jinns_compare", argv)
    start = time.perf_counter()
    rows = measure(args.steps, args.repeats)
    result = {
        "meta": meta,
        "jinns_version": importlib.metadata.version("jinns"),
        "equinox_version": eqx.__version__,
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds": time.perf_counter() - start,
        "load_average_at_end": provenance.load_average(),
        "rows": rows,
        "notes": NOTES,
    }
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "jinns_compare.json").write_text(json.dumps(result, indent=1))
        (args.out / "jinns_compare.md").write_text(text)


if __name__ == "__main__":
    main()
