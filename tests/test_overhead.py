"""The structure that makes the overhead targets reachable (benchmarks/overhead.py).

Not timing tests. They compile the benchmark's own training steps on a toy task and
read the compiled programs (benchmarks/_hlo.py): a loss-value method must add no
matrix product to the plain step, and a gradient-based method with
``update_every = K`` must keep its extra passes inside a conditional that runs only
on update steps, so that a step with no update costs what the plain step costs.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _methods import CASES

import optax_invloss as oil
from benchmarks import methods, overhead, overhead_rows, provenance, timing
from benchmarks import overhead_steps as steps
from benchmarks._hlo import dot_stats
from optax_invloss import _base

CHUNK = 2


# ----------------------------------------------------------------------------------
# A toy task: a two-layer tanh network, two terms on their own points.


def _toy_task(count=None) -> steps.Task:
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(keys[0], (2, 16), jnp.float32),
        "b1": jnp.zeros(16, jnp.float32),
        "w2": jax.random.normal(keys[1], (16, 16), jnp.float32) / 4,
        "w3": jax.random.normal(keys[2], (16, 1), jnp.float32) / 4,
    }

    def net(p, x):
        h = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
        return (jnp.tanh(h @ p["w2"]) @ p["w3"])[:, 0]

    def residual_fn(p, batch):
        if count is not None:
            jax.debug.callback(count)  # one call per evaluation of the residuals
        return {
            "pde": net(p, batch["pde"]) - jnp.sin(batch["pde"][:, 0]),
            "bc": net(p, batch["bc"]),
        }

    def loss_fn(p, batch):
        return {k: jnp.mean(r**2) for k, r in residual_fn(p, batch).items()}

    points = jax.random.uniform(jax.random.key(2), (2, 32, 2), jnp.float32)

    def sample(key):  # a fixed batch: random draws make XLA compile much longer
        del key
        return {"pde": points[0], "bc": points[1]}

    return steps.Task(params, loss_fn, residual_fn, sample, optax.sgd(1e-3))


def _program(step_and_carry):
    keys = jax.random.split(jax.random.key(1), CHUNK)
    return timing.compile_chunk(*step_and_carry, keys), keys


def _stats(step_and_carry):
    program, _ = _program(step_and_carry)
    return dot_stats(program.compiled.as_text(), timing.MIN_FLOPS)


@pytest.fixture(scope="module")
def plain():
    return _stats(steps.plain_step(_toy_task()))


def _factory(case) -> str:
    """The library factory a registry case builds (``inverse_loss`` for ...)."""
    return case.make().update.__qualname__.split(".")[0]


def _one_per_factory(cases):
    seen, kept = set(), []
    for case in cases:
        if _factory(case) not in seen:
            seen.add(_factory(case))
            kept.append(case)
    return kept


LOSS_VALUE = _one_per_factory(
    [c for c in CASES if not methods.needs_gradients(c.make())]
)
GRADIENT = [c for c in CASES if methods.needs_gradients(c.make())]


# ----------------------------------------------------------------------------------
# The HLO reader, on a program whose products are known by hand.


def _matmul_then_cond(x, w, i, *, use_cond):
    def extra():
        # Forward x @ w (8x16 @ 16x16) and its transpose product x^T g: each
        # 2 * 8 * 16 * 16 = 4096 FLOPs.
        return jnp.sum(jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w))

    y = jnp.tanh(x @ w)  # always: 2 * 8 * 16 * 16 = 4096 FLOPs
    if use_cond:
        g = jax.lax.cond(i % 10 == 0, extra, lambda: jnp.float32(0.0))
    else:
        g = jnp.where(i % 10 == 0, extra(), 0.0)
    return y + g


@pytest.mark.parametrize("use_cond", [True, False])
def test_dot_stats_counts_products_by_hand(use_cond):
    x = jnp.ones((8, 16), jnp.float32)
    w = jnp.ones((16, 16), jnp.float32)
    f = jax.jit(lambda x, w, i: _matmul_then_cond(x, w, i, use_cond=use_cond))
    stats = dot_stats(f.lower(x, w, 3).compile().as_text())
    if use_cond:
        assert (stats.dots, stats.flops) == (1, 4096.0)
        assert (stats.conditional_dots, stats.conditional_flops) == (2, 8192.0)
    else:
        # jnp.where runs both sides every time; the two identical forward
        # products are merged (CSE), leaving x @ w and x^T g: 2 * 4096 FLOPs.
        assert (stats.dots, stats.flops) == (2, 2 * 4096.0)
        assert (stats.conditional_dots, stats.conditional_flops) == (0, 0.0)


def test_dot_stats_rejects_text_without_an_entry():
    with pytest.raises(ValueError, match="ENTRY"):
        dot_stats("HloModule m\n")


def test_the_reference_steps_add_the_per_term_passes(plain):
    jac = _stats(steps.jacrev_step(_toy_task()))
    loop = _stats(steps.per_term_step(_toy_task()))
    # Both compute per-term gradients on top of the plain step, apart from it (in
    # a branch, as a method does): the step's own products, and more on demand.
    assert (jac.dots, jac.flops) == (loop.dots, loop.flops) == (plain.dots, plain.flops)
    # jacrev runs the backward pass of both terms for each term; the loop runs
    # each term's own. Forward: 4 products per term, backward: 2 + 3 per term.
    assert jac.conditional_flops > loop.conditional_flops > 0


# ----------------------------------------------------------------------------------
# Loss-value methods: the step with the method has exactly the plain step's products.


@pytest.mark.parametrize("case", LOSS_VALUE, ids=[c.name for c in LOSS_VALUE])
def test_loss_value_method_adds_no_forward_or_backward_pass(case, plain):
    stats = _stats(steps.method_step(_toy_task(), case.make()))
    assert (stats.dots, stats.flops) == (plain.dots, plain.flops)
    assert stats.conditional_dots == 0


# ----------------------------------------------------------------------------------
# Gradient-based methods: extra passes on update steps only.


class _PerTermNormState(NamedTuple):
    """State of ``_per_term_norms`` (a test-only gradient-based method).

    Attributes:
      loss_weights: weights by term.
      weighting_step: int32 scalar.
      skipped_updates: int32 scalar.
    """

    loss_weights: dict
    weighting_step: jax.Array  # int32 ()
    skipped_updates: jax.Array  # int32 ()


def _per_term_norms(update_every: int, *, on_demand: bool) -> oil.WeightingMethod:
    """Weights max_j |g_j| / |g_i|, recomputed every K steps: lax.cond or where."""

    def init(losses):
        dtype = _base.state_dtype(losses)
        weights = _base.equal_weights(losses, dtype)
        return _PerTermNormState(weights, _base.counter(), _base.counter())

    def update(losses, state, *, params, loss_fn, **inputs):
        del inputs
        vector, ok = _base.prepare(losses, state, _PerTermNormState)

        def fresh():
            grads = jax.jacrev(loss_fn)(params)
            norms = jnp.stack([optax.tree.norm(grads[k]) for k in losses])
            return (jnp.max(norms) / (norms + 1e-12)).astype(vector.dtype)

        old = _base.stack(state.loss_weights)
        due = _base.is_due(state.weighting_step, update_every)
        if on_demand:
            weights = jax.lax.cond(due, fresh, lambda: old)
        else:
            weights = jnp.where(due, fresh(), old)
        return _base.finish(losses, state, ok, loss_weights=weights)

    return oil.WeightingMethod(init, update, inputs=frozenset({"params", "loss_fn"}))


def _check_on_demand(method_for, plain):
    """The checks every gradient-based method must pass; ``method_for(K)``."""
    calls = []
    task = _toy_task(count=lambda: calls.append(1))
    program, keys = _program(steps.method_step(task, method_for(10)))
    stats = dot_stats(program.compiled.as_text(), timing.MIN_FLOPS)
    # Every step: the plain step's products and nothing more ...
    assert (stats.dots, stats.flops) == (plain.dots, plain.flops)
    # ... and the per-term passes inside a branch taken on update steps.
    assert stats.conditional_flops > 0

    carry, _ = program.compiled(program.carry, keys)  # steps 0, 1: 0 updates
    jax.effects_barrier()
    with_update = len(calls)
    program.compiled(carry, keys)  # steps 2, 3: no update due
    jax.effects_barrier()
    # The step's own forward pass evaluates the residuals once per step.
    assert len(calls) - with_update == CHUNK
    assert with_update > CHUNK


def test_the_checks_accept_a_method_that_updates_on_demand(plain):
    _check_on_demand(lambda k: _per_term_norms(k, on_demand=True), plain)


def test_the_checks_catch_a_method_that_computes_gradients_every_step(plain):
    with pytest.raises(AssertionError):
        _check_on_demand(lambda k: _per_term_norms(k, on_demand=False), plain)


def test_gradient_methods_pass_only_on_update_steps(plain):
    # Every gradient-based factory of the registry, built with update_every=10
    # (a loop, not a parametrization, so that a registry without one does not
    # skip).
    for factory in sorted({_factory(case) for case in GRADIENT}):
        try:
            _check_on_demand(
                lambda k, f=factory: getattr(oil, f)(update_every=k), plain
            )
        except AssertionError as error:
            raise AssertionError(f"{factory}: {error}") from error


# ----------------------------------------------------------------------------------
# Targets, amortised rows and the command line.


def _row(method, kind, every, **fields):
    return overhead_rows.Row(
        "small", "helmholtz", 128, [2, 1], method, kind, every, chunk=100, **fields
    )


def _r(method, kind, every, ratio):
    same = dict(ratio=ratio, ratio_wall=ratio, ratio_cpu_time=ratio)
    return _row(method, kind, every, clock="wall", base_ms=1.0, method_ms=ratio, **same)


def test_ratio_is_the_median_of_the_paired_ratios():
    # Pair ratios 1.5, 2.0, 1.1: median 1.5. The ratio of the medians, 4 / 2 = 2,
    # is what a slowdown during the second pair's method half would report.
    base, other = [1.0, 2.0, 4.0], [1.5, 4.0, 4.4]
    times = {"base": base, "other": other, "base_cpu": base, "other_cpu": other}
    summary = timing.summarise(times)
    np.testing.assert_allclose(summary["ratio"], 1.5)
    np.testing.assert_allclose(summary["ratio_of_medians"], 2.0)
    np.testing.assert_allclose(summary["pair_ratios"], [1.5, 2.0, 1.1])


def test_targets_and_amortised_rows():
    rows = [
        _r(overhead.JACREV, "reference", None, 2.0),
        _r("inverse_loss", "loss-value", None, 1.005),  # <= 1.01 (issue 19)
        _r("m", "gradient", 1, 2.4),  # c = 2.4 <= 1.25 * 2.0 = 2.5
        _r("m", "gradient", 10, 1.16),  # <= 1 + 1.4 / 10 + 0.01 = 1.15: MISS
        _r("m", "gradient", "none", 1.01),
        _row("m", "gradient", 100, amortised=True, mode="amortised"),
    ]
    overhead_rows.judge(rows, overhead.SIZES["small"].target)
    result = [r.result for r in rows]
    assert result == ["reference", "PASS", "PASS", "MISS", "PASS", "PASS"]
    np.testing.assert_allclose(rows[3].target, 1.15)
    # Amortised: r0 + (c - r0) / K = 1.01 + 1.39 / 100 = 1.0239;
    # target 1 + 1.4 / 100 + 0.01 = 1.024.
    np.testing.assert_allclose(rows[5].ratio, 1.0239)
    np.testing.assert_allclose(rows[5].target, 1.024)
    # Both sizes hold loss-value methods to 1.01.
    for size in ("small", "large"):
        rows = [_r("inverse_loss", "loss-value", None, 1.02)]
        overhead_rows.judge(rows, overhead.SIZES[size].target)
        assert rows[0].result == "MISS"


def test_rows_round_trip_through_json():
    row = _r("m", "gradient", "none", 1.01).set(updates_per_chunk=0)
    saved = json.loads(json.dumps(row.to_json()))
    assert saved["update_every"] == "none" and saved["target"] is None
    assert saved["updates_per_chunk"] == 0  # a zero is a value, not "unset"
    assert "note" not in saved and "amortised" not in saved  # unset: not written
    assert overhead_rows.Row.from_json(saved) == row
    with pytest.raises(TypeError, match="ratios"):
        row.set(ratios=1.0)


def test_every_method_of_the_library_is_benchmarked():
    loss_value, gradient, _ = overhead.available_methods()
    factories = {_factory(c) for c in CASES}
    assert factories <= set(loss_value) | set(gradient)
    assert set(loss_value).isdisjoint(gradient)


def test_command_line_writes_json_and_markdown(tmp_path, monkeypatch):
    tiny = overhead.Size("small", (2, 16, 1), 32, chunk=2, repeats=1, target=1.03)
    monkeypatch.setitem(overhead.SIZES, "small", tiny)
    monkeypatch.setattr(overhead, "make_task", lambda problem, size: _toy_task())
    args = ["--sizes", "small", "--problems", "helmholtz", "--methods",
            "inverse_loss", "lr_annealing", "--every", "1", "100", "--clock",
            "cpu", "--out", str(tmp_path), "--name", "t", "--no-rerun", "--notes",
            str(tmp_path / "none.md")]  # fmt: skip
    report = overhead.main(args)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["command"] == provenance.command("benchmarks.overhead", args)
    assert saved["command"] == "python -m benchmarks.overhead " + " ".join(args)
    rows = [(r["method"], r["update_every"], r["mode"]) for r in saved["rows"]]
    assert rows == [
        (overhead.PER_TERM, None, "measured"),
        (overhead.JACREV, None, "measured"),
        ("inverse_loss", None, "measured"),
        ("lr_annealing", 1, "measured"),
        ("lr_annealing", "none", "measured"),  # from step 1 of update_every=100
        ("lr_annealing", 100, "amortised"),
    ]
    assert all(r["ratio"] > 0 for r in saved["rows"])
    assert {r["result"] for r in saved["rows"][2:]} <= {"PASS", "MISS"}
    assert saved["rows"][4]["flops_conditional_vs_plain"] > 0
    text = (tmp_path / "t.md").read_text()
    assert "| helmholtz | inverse_loss |" in text and report["machine"]["cpu"] in text
