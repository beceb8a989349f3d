"""Per-point weights on a benchmark problem: plain, RBA (both loss forms) and SA-PINN.

Fixed collocation points (drawn once from ``--seed``), Adam with the problem
preset's schedule, the per-point recipe of :class:`optax_invloss.PointWeightingMethod`
(update inside the differentiated function), the loss the sum of the terms.
Prints one line per method with the relative L2 error against the reference.

Run (from the repository root)::

  python -m benchmarks.pointwise --problem allen_cahn --preset quick \\
      --methods plain rba rba_power2 self_adaptive --steps 10000

The RBA repository's Allen-Cahn run is ``--preset paper`` (6 x 128, 25,600
points, 30,000 steps): a GPU job.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_invloss as oil
from benchmarks.problems import MLP, get_problem, relative_l2


def make_method(name: str, term_names) -> oil.PointWeightingMethod | None:
    """The per-point method called ``name``; ``None`` for plain (unweighted)."""
    if name == "plain":
        return None
    if name == "rba":
        return oil.rba()
    if name == "rba_power2":
        return oil.rba(power=2)
    if name == "self_adaptive":
        scale = {"ic": 100.0} if "ic" in term_names else 1.0
        return oil.self_adaptive(init_scale=scale)
    raise ValueError(f"unknown method {name!r}")


def run(problem_name: str, preset_name: str, method_name: str, *, steps, points, seed):
    problem = get_problem(problem_name)
    preset = problem.preset(preset_name)
    steps = steps or preset.steps
    points = points or preset.batch
    model = MLP(preset.layers, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    apply = lambda p: lambda x: nnx.merge(graphdef, p)(x)
    batch = problem.sample(jax.random.key(seed), points)
    method = make_method(method_name, problem.term_names)
    optimizer = preset.make_optimizer()
    opt_state = optimizer.init(params)
    residual_fn = lambda p: problem.residuals(apply(p), batch)
    point_state = None if method is None else method.init(residual_fn(params))

    def total(p, point_state):
        residuals = residual_fn(p)
        if method is None:
            return sum(jnp.mean(r**2) for r in residuals.values()), point_state
        weights, point_state = method.update(residuals, point_state)
        return sum(method.loss(residuals, weights).values()), point_state

    def step(carry, _):
        params, opt_state, point_state = carry
        (value, point_state), grads = jax.value_and_grad(total, has_aux=True)(
            params, point_state
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, point_state), value

    start = time.perf_counter()
    (params, _, point_state), values = jax.jit(
        lambda c: jax.lax.scan(step, c, None, length=steps)
    )((params, opt_state, point_state))
    values.block_until_ready()
    seconds = time.perf_counter() - start
    eval_points, exact = problem.reference()
    error = float(relative_l2(jax.jit(apply(params))(eval_points), exact))
    skipped = 0 if point_state is None else int(point_state.skipped_updates)
    return {
        "problem": problem_name,
        "preset": preset_name,
        "method": method_name,
        "steps": steps,
        "points": points,
        "seed": seed,
        "relative_l2": error,
        "final_loss": float(values[-1]),
        "skipped_updates": skipped,
        "seconds": round(seconds, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="allen_cahn")
    parser.add_argument("--preset", default="quick")
    parser.add_argument(
        "--methods", nargs="+", default=["plain", "rba", "rba_power2", "self_adaptive"]
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--points", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.methods:
        result = run(
            args.problem,
            args.preset,
            name,
            steps=args.steps,
            points=args.points,
            seed=args.seed,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
