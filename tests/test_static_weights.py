"""Tests of static_weights: fixed weights, term matching, schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_invloss as oil

LOSSES = {
    "pde": jnp.asarray(0.3),
    "bc": jnp.asarray(0.01),
    "ic": jnp.asarray(2.0),
}


def _as_floats(weights):
    return {k: float(v) for k, v in weights.items()}


def test_weights_are_used_as_given_not_normalised():
    method = oil.static_weights({"pde": 1.0, "bc": 100.0, "ic": 10.0})
    state = method.init(LOSSES)
    assert _as_floats(oil.loss_weights(state)) == {"pde": 1.0, "bc": 100.0, "ic": 10.0}
    step = jax.jit(method.update)
    for _ in range(2):
        weights, state = step(LOSSES, state)
        # 1 + 100 + 10 = 111: not normalised, whatever the losses are.
        assert _as_floats(weights) == {"pde": 1.0, "bc": 100.0, "ic": 10.0}
    assert int(state.weighting_step) == 2


def test_schedule_is_evaluated_at_the_weighting_step():
    # bc: 100 * linear_schedule(0 -> 1 over 4 steps) = 100 * k / 4 after k updates,
    # 100 from k = 4 on; the other terms keep their weights.
    method = oil.static_weights(
        {"pde": 1.0, "bc": 100.0, "ic": 10.0},
        schedules={"bc": optax.linear_schedule(0.0, 1.0, transition_steps=4)},
    )
    state = method.init(LOSSES)
    assert _as_floats(oil.loss_weights(state)) == {"pde": 1.0, "bc": 0.0, "ic": 10.0}
    step = jax.jit(method.update)
    expected_bc = [25.0, 50.0, 75.0, 100.0, 100.0]  # 100 * 1/4, 2/4, 3/4, 1, 1
    for bc in expected_bc:
        weights, state = step(LOSSES, state)
        assert _as_floats(weights) == {"pde": 1.0, "bc": bc, "ic": 10.0}
        assert float(oil.loss_weights(state)["bc"]) == bc


def test_schedule_inside_lax_scan():
    method = oil.static_weights(
        {"pde": 2.0, "bc": 100.0, "ic": 1.0},
        schedules={
            "bc": optax.linear_schedule(0.0, 1.0, transition_steps=4),
            "pde": optax.constant_schedule(0.5),
        },
    )

    def body(state, _):
        weights, state = method.update(LOSSES, state)
        return state, weights

    _, weights = jax.jit(lambda s: jax.lax.scan(body, s, None, length=5))(
        method.init(LOSSES)
    )
    # bc: 100 * (1/4, 2/4, 3/4, 1, 1); pde: 2 * 0.5 = 1 throughout.
    np.testing.assert_array_equal(weights["bc"], [25.0, 50.0, 75.0, 100.0, 100.0])
    np.testing.assert_array_equal(weights["pde"], [1.0] * 5)
    np.testing.assert_array_equal(weights["ic"], [1.0] * 5)


def test_skipped_update_holds_the_schedule():
    method = oil.static_weights(
        {"pde": 1.0, "bc": 100.0, "ic": 10.0},
        schedules={"bc": optax.linear_schedule(0.0, 1.0, transition_steps=4)},
    )
    state = method.init(LOSSES)
    _, state = method.update(LOSSES, state)  # bc 25
    weights, state = method.update(dict(LOSSES, ic=jnp.asarray(jnp.nan)), state)
    assert float(weights["bc"]) == 25.0 and int(state.skipped_updates) == 1
    weights, state = method.update(LOSSES, state)
    assert float(weights["bc"]) == 50.0  # the skipped step did not count


def test_missing_term_is_an_error_naming_it():
    method = oil.static_weights({"pde": 1.0, "bc": 10.0})
    with pytest.raises(ValueError, match=r"no weight for the loss term \['ic'\]"):
        method.init(LOSSES)


def test_extra_term_is_an_error_naming_it():
    method = oil.static_weights({"pde": 1.0, "bc": 10.0, "ic": 1.0, "data": 5.0})
    with pytest.raises(ValueError, match=r"names the term \['data'\]"):
        method.init(LOSSES)


def test_nested_terms_are_matched_by_path():
    losses = {"bc": {"left": 0.1, "right": 0.2}, "pde": 1.0}
    method = oil.static_weights({"bc": {"left": 3.0, "right": 4.0}, "pde": 1.0})
    weights = oil.loss_weights(method.init(losses))
    assert float(weights["bc"]["right"]) == 4.0
    with pytest.raises(ValueError, match=r"\['bc'\]\['right'\]"):
        oil.static_weights({"bc": {"left": 3.0}, "pde": 1.0}).init(losses)


def test_schedule_for_an_unknown_term_is_an_error():
    with pytest.raises(ValueError, match=r"schedules names the term \['data'\]"):
        oil.static_weights(
            {"pde": 1.0}, schedules={"data": optax.constant_schedule(1.0)}
        )
    with pytest.raises(ValueError, match=r"schedule of term \['pde'\]"):
        oil.static_weights({"pde": 1.0}, schedules={"pde": 2.0})


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "heavy"])
def test_bad_weight_is_an_error_naming_the_term(bad):
    with pytest.raises(ValueError, match=r"weight of term \['bc'\]"):
        oil.static_weights({"pde": 1.0, "bc": bad})


def test_empty_weights_are_an_error():
    with pytest.raises(ValueError, match="at least one"):
        oil.static_weights({})


def test_float16_losses_get_float16_weights():
    losses = {"pde": jnp.asarray(0.5, jnp.float16), "bc": jnp.asarray(1.0, jnp.float16)}
    method = oil.static_weights({"pde": 1.0, "bc": 3.0})
    weights, _ = method.update(losses, method.init(losses))
    assert weights["bc"].dtype == jnp.float16 and float(weights["bc"]) == 3.0


def test_one_number_is_the_weight_of_every_term():
    losses = {"pde": jnp.asarray(0.5), "bc": {"left": jnp.asarray(2.0)}}
    method = oil.static_weights(1.0)
    weights, state = method.update(losses, method.init(losses))
    assert weights == {"pde": 1.0, "bc": {"left": 1.0}}
    # The plain sum: 0.5 + 2.0.
    np.testing.assert_allclose(oil.weighted_sum(losses, weights), 2.5)
    # With a schedule on one term (by its name, checked against the losses).
    method = oil.static_weights(
        2.0, schedules={"pde": optax.linear_schedule(0.0, 1.0, transition_steps=4)}
    )
    weights, _ = method.update(losses, method.init(losses))
    assert float(weights["pde"]) == 0.5 and float(weights["bc"]["left"]) == 2.0
    with pytest.raises(ValueError, match=r"schedules names the term \['ic'\]"):
        oil.static_weights(1.0, schedules={"ic": optax.constant_schedule(1.0)}).init(
            losses
        )


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1.0", True])
def test_bad_single_weight_is_an_error(bad):
    with pytest.raises(ValueError, match=r"^weights must be a finite number >= 0"):
        oil.static_weights(bad)
