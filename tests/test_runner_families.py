"""The runner's gradient aggregators and per-point methods (`benchmarks/train.py`).

Tiny networks and a few steps: each test compiles one or two chunks. Reference
values are computed here from the rules' formulas (METHODS_NEXT.md), not by the
library.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import optax_invloss as oil
from benchmarks import methods, pinn, report
from benchmarks.problems import get_problem
from benchmarks.train import Trainer


def _tiny(name: str, preset: str = "quick", batch: int = 4):
    problem = get_problem(name)
    settings = problem.preset(preset)
    layers = (problem.input_dim, 4, 1)
    return problem, dataclasses.replace(settings, layers=layers, batch=batch)


def _build(text: str, problem):
    return methods.parse_method(text).build(problem)


def _term_jacobian(problem, settings, params, batch) -> tuple[list, np.ndarray]:
    """Term names (leaf order) and the per-term gradients as rows, float64."""
    graphdef = nnx.split(problem.network(settings, 0))[0]
    loss_fn = lambda p: problem.loss_terms(nnx.merge(graphdef, p), batch)
    names = sorted(jax.eval_shape(loss_fn, params))
    rows = [
        ravel_pytree(jax.grad(lambda p, t=t: loss_fn(p)[t])(params))[0] for t in names
    ]
    return names, np.stack([np.asarray(r, np.float64) for r in rows])


def test_aggregator_first_step_is_the_hand_computed_config():
    # One step of config + sgd(1): the parameters move by exactly ConFIG's update
    # of this step's per-term gradients: d = pinv(U) 1 on the unit gradients,
    # update = (sum_i g_i . d^) d^ (METHODS_NEXT.md section 1).
    problem, settings = _tiny("poisson", "adam", batch=8)
    trainer = Trainer(
        problem,
        _build("config", problem),
        settings,
        steps=1,
        chunk=1,
        optimizer=optax.sgd(1.0),
    )
    assert (trainer.kind, trainer.vmapped) == ("aggregator", True)
    params0 = nnx.split(problem.network(settings, 0))[1]
    batch = problem.sample(trainer._keys(0)[0, 0], settings.batch)
    names, jac = _term_jacobian(problem, settings, params0, batch)
    unit = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    d = np.linalg.pinv(unit) @ np.ones(len(names))
    d_hat = d / np.linalg.norm(d)
    expected = jac.sum(axis=0) @ d_hat * d_hat
    result = trainer.run(0)
    moved = ravel_pytree(params0)[0] - ravel_pytree(result.params)[0]
    np.testing.assert_allclose(moved, expected, rtol=2e-4, atol=1e-7)
    # The no-conflict property, and the recorded weights are those of J^T w.
    assert np.all(jac @ expected > 0)
    w = np.array([result.weights[t][0] for t in names])
    np.testing.assert_allclose(jac.T @ w, expected, rtol=2e-4, atol=1e-7)
    assert result.final_weights == pytest.approx(dict(zip(names, w, strict=True)))


def test_update_every_holds_the_weights_and_runs_seed_by_seed():
    problem, settings = _tiny("poisson", "adam", batch=8)
    trainer = Trainer(
        problem, _build("config(update_every=2)", problem), settings, steps=3, chunk=3
    )
    # A refresh every 2 steps is a lax.cond: under vmap it would run every step.
    assert not trainer.vmapped
    result = trainer.run(0)
    pde = result.weights["pde"]
    bc = result.weights["bc"]
    # Steps 1 and 3 refresh; step 2 applies the weights of step 1.
    assert pde[1] == pde[0] and bc[1] == bc[0]
    assert (pde[2], bc[2]) != (pde[1], bc[1])


def test_m_config_takes_sgd_gives_no_weights_and_waits_for_every_term():
    # M-ConFIG (2 terms) returns exactly zero until each term was seen once, and
    # is followed by plain SGD at the preset's schedule, not Adam. Poisson trains
    # on a fixed grid, so equal losses at steps 1 and 2 mean no move at step 1.
    problem, settings = _tiny("poisson", "adam", batch=8)
    aggregator = _build("m_config", problem)
    assert aggregator.plain_sgd and not aggregator.vmappable
    trainer = Trainer(problem, aggregator, settings, steps=3, chunk=3)
    assert not trainer.vmapped  # its lax.switch over the terms: seed by seed
    params = nnx.split(problem.network(settings, 0))[1]
    assert optax.tree.get(trainer.tx.init(params), "mu") is None  # no Adam
    result = trainer.run(3)
    for term, losses in result.losses.items():
        assert losses[1] == losses[0], term
        assert losses[2] != losses[1], term
    assert result.weights == {} and result.final_weights == {}
    record = report.record(result, problem="p", preset="q", method="m_config", seed=3)
    assert record["weight_history"]["weights"] == {}
    assert report.table([record], "p", ["m_config"]).endswith("| - |")


def test_rba_on_a_pool_updates_the_batch_points_only():
    # A pool of 16 points per term, 4 drawn per step: after one step exactly the
    # 4 drawn residual points have a weight, eta |r| / max |r| (so the largest is
    # eta), and the pool's shape is kept.
    problem, settings = _tiny("poisson", "adam", batch=4)
    trainer = Trainer(problem, _build("rba", problem), settings, steps=1, pool=16)
    assert (trainer.kind, trainer.vmapped, trainer.pool) == ("point", True, 16)
    result = trainer.run(0)
    lam = result.point_weights["pde"]
    assert set(result.point_weights) == {"pde"} and lam.shape == (16,)
    assert np.count_nonzero(lam) == 4
    assert lam.max() == pytest.approx(1e-3, rel=1e-6)
    # The recorded weight is the batch's mean per-point weight; bc is unweighted.
    assert result.weights["pde"][0] == pytest.approx(lam.sum() / 4, rel=1e-5)
    assert result.weights["bc"][0] == 1.0


def test_self_adaptive_on_a_fixed_set_ascends_from_its_init():
    # Default pool: the batch itself, every point every step (no indices). The
    # weights start at U(0, 1) and never decrease.
    problem, settings = _tiny("poisson", "adam", batch=4)
    trainer = Trainer(problem, _build("self_adaptive", problem), settings, steps=3)
    assert trainer.pool == 4
    result = trainer.run(0)
    shapes = {t: jax.ShapeDtypeStruct((4,), jnp.float64) for t in problem.term_names}
    init = oil.self_adaptive().init(shapes).point_weights
    assert set(result.point_weights) == set(problem.term_names)
    for term, lam in result.point_weights.items():
        assert lam.shape == (4,)
        assert np.all(lam >= np.asarray(init[term])) and np.any(lam > init[term])
    # On a problem with an initial condition, its weights start at 100 U(0, 1).
    burgers = get_problem("burgers")
    shapes = {t: jax.ShapeDtypeStruct((64,), jnp.float64) for t in burgers.term_names}
    state = _build("self_adaptive", burgers).init(shapes)
    assert 1.0 < state.point_weights["ic"].max() <= 100.0
    assert state.point_weights["pde"].max() <= 1.0


def test_bad_combinations_are_errors_before_compiling():
    problem, settings = _tiny("poisson", "adam", batch=8)
    with pytest.raises(ValueError, match="L-BFGS phase follows a term weighting"):
        Trainer(problem, _build("config", problem), settings, steps=1, lbfgs_steps=2)
    with pytest.raises(ValueError, match="pool must be at least the batch size 8"):
        Trainer(problem, None, settings, steps=1, pool=4)
    assert methods.parse_method("upgrad").family == "aggregator"
    assert methods.parse_method("rba").family == "point"
    assert methods.parse_method("equal").family == "weighting"


def test_command_line_lists_and_runs_both_families(tmp_path, capsys):
    pinn.main(["--list"])
    listed = capsys.readouterr().out
    assert "gradient aggregators: cagrad, config," in listed
    assert "per-point weightings: rba, self_adaptive" in listed
    out = tmp_path / "run"
    pinn.main(
        ["--problem", "poisson", "--preset", "adam", "--methods", "rba",
         "--steps", "2", "--eval-every", "2", "--hidden", "4", "--batch", "8",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    data = json.loads((out / "runs.json").read_text())
    assert [(r["kind"], r["pool"]) for r in data["runs"]] == [("point", 8)]
    table = (out / "table.md").read_text()
    assert "| `rba` (fixed pool of 8) |" in table and "mean per-point" in table
    assert (out / "poisson_weights.png").read_bytes()[:4] == b"\x89PNG"


def test_aggregator_seeds_under_vmap_give_the_separate_runs():
    problem, settings = _tiny("poisson", "adam", batch=8)
    trainer = Trainer(problem, _build("config", problem), settings, steps=2, chunk=2)
    together = trainer.run_seeds([0, 2])
    for seed, got in zip((0, 2), together, strict=True):
        alone = trainer.run(seed)
        for term in alone.weights:
            np.testing.assert_allclose(
                got.weights[term], alone.weights[term], rtol=1e-4
            )
        moved, ref = (ravel_pytree(r.params)[0] for r in (got, alone))
        np.testing.assert_allclose(moved, ref, rtol=1e-5, atol=1e-7)
    assert not np.allclose(together[0].weights["pde"], together[1].weights["pde"])
