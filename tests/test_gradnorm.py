"""Tests for GradNorm (optax_invloss/_gradnorm.py).

The tiny model: a weight matrix W (2x1) and a bias b (2,), with

  pde = |W|^2 + |b|^2     ->  dW = 2 W          (b is not in the default mask)
  bc  = 0.25 + 0.5 W[0,0]  ->  dW = (0.5, 0), norm 0.5

The default mask (the last layer's weight matrix) selects W, the only matrix.
Step 0: W = (1.5, 2): pde norm |2 W| = 5, L(0) = (bc 1.0, pde 6.25 + |b|^2).
Step 1: W = (0.3, 0.4): pde norm 1, L = (bc 0.4, pde 0.25 + |b|^2).
With b = 0 the losses are exactly those numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import check_weights as check
from _helpers import run_updates

import optax_invloss as oil


def loss_fn(p):
    W, b = p["W"], p["b"]
    return {"pde": jnp.sum(W**2) + jnp.sum(b**2), "bc": 0.25 + 0.5 * W[0, 0]}


P0 = {"W": jnp.asarray([[1.5], [2.0]]), "b": jnp.zeros(2)}
P1 = {"W": jnp.asarray([[0.3], [0.4]]), "b": jnp.zeros(2)}


def run(method, params_seq, fn=loss_fn):
    return run_updates(method, params_seq, fn, loss_fn=fn)


def test_two_steps_by_hand_with_sgd():
    # Step 0: w = (1, 1) for (bc, pde); G = w * norms = (0.5, 5); r = (1, 1)
    #   (the losses are the initial ones); target = mean G = 2.75 for both.
    #   d/dw sum |G - target| = sign(G - target) * norms = (-0.5, +5).
    #   SGD 0.1: w = (1.05, 0.5); sum 1.55; renormalised to sum 2:
    #   (2.1 / 1.55, 1 / 1.55) = (42/31, 20/31).
    # Step 1: L~ = L / L(0) = (0.4 / 1.0, 0.25 / 6.25) = (0.4, 0.04), mean 0.22;
    #   r = (20/11, 2/11); alpha = 1. norms = (0.5, 1); G = (21/31, 20/31);
    #   mean G = 41/62; target = (41/62 * 20/11, 41/62 * 2/11) = (410/341, 41/341)
    #   = (1.2023, 0.1202). G_bc = 0.677 < 1.202 -> gradient -0.5;
    #   G_pde = 0.645 > 0.120 -> gradient +1.
    #   SGD 0.1: (42/31 + 0.05, 20/31 - 0.1) = (871/620, 338/620); sum 1209/620;
    #   renormalised: (1742/1209, 676/1209) = (1.44086, 0.55914).
    method = oil.gradnorm(alpha=1.0, optimizer=optax.sgd(0.1))
    history, state = run(method, [P0, P1])
    check(history[0], {"bc": 42 / 31, "pde": 20 / 31})
    check(history[1], {"bc": 1742 / 1209, "pde": 676 / 1209})
    initial = {k: float(v) for k, v in state.initial_losses.items()}
    assert initial == {"bc": 1.0, "pde": 6.25}
    assert int(state.weighting_step) == 2


def test_adam_first_step_moves_each_weight_by_the_learning_rate():
    # Adam's first step is -lr * m_hat / (sqrt(v_hat) + eps) = -lr * sign(g) (up
    # to eps = 1e-8): the gradient (-0.5, 5) of step 0 gives (1.025, 0.975),
    # which already sums to 2.
    history, _ = run(oil.gradnorm(), [P0])
    np.testing.assert_allclose(history[0]["bc"], 1.025, rtol=1e-7)
    np.testing.assert_allclose(history[0]["pde"], 0.975, rtol=1e-7)


def test_negative_weight_is_clipped_before_renormalising():
    # SGD 1.0 on step 0: (1 + 0.5, 1 - 5) = (1.5, -4) -> clipped (1.5, 0)
    # -> renormalised to sum 2: (2, 0).
    history, state = run(oil.gradnorm(optimizer=optax.sgd(1.0)), [P0])
    check(history[0], {"bc": 2.0, "pde": 0.0})
    assert int(state.skipped_updates) == 0


def test_alpha_zero_asks_for_equal_gradient_norms():
    # Step 1 with alpha = 0: target = mean G = 41/62 for both; G_bc = 21/31 =
    # 42/62 > 41/62 -> +0.5; G_pde = 40/62 < 41/62 -> -1.
    # SGD 0.1: (42/31 - 0.05, 20/31 + 0.1) = (809/620, 462/620); sum 1271/620;
    # renormalised: (1618/1271, 924/1271).
    method = oil.gradnorm(alpha=0.0, optimizer=optax.sgd(0.1))
    history, _ = run(method, [P0, P1])
    check(history[1], {"bc": 1618 / 1271, "pde": 924 / 1271})


def test_mask_and_update_every():
    # mask on b only: pde's gradient there is 2 b = 0 and bc's is 0, so G = 0 for
    # both, target 0, gradient sign(0) * 0 = 0: the weights stay (1, 1). With
    # update_every = 2 step 1 holds and only the step counter moves.
    method = oil.gradnorm(
        optimizer=optax.sgd(0.1), update_every=2, mask={"W": False, "b": True}
    )
    history, state = run(method, [P0, P1])
    check(history[1], {"bc": 1.0, "pde": 1.0})
    assert int(state.weighting_step) == 2


def test_weight_optimizer_state_does_not_collide_with_the_outer_optimizer():
    tx = oil.with_weighting(optax.adam(1e-3), oil.gradnorm(), loss_fn(P0))
    opt_state = tx.init(P0)
    grads = jax.grad(lambda p: sum(loss_fn(p).values()))(P0)
    _, opt_state = tx.update(grads, opt_state, P0, losses=loss_fn(P0), loss_fn=loss_fn)
    # One "count" (the outer Adam's), one "loss_weights".
    assert int(optax.tree.get(opt_state, "count")) == 1
    weights = optax.tree.get(opt_state, "loss_weights")
    np.testing.assert_allclose(float(weights["bc"]), 1.025, rtol=1e-7)


def test_non_finite_gradient_skips_the_update_and_keeps_the_optimizer_state():
    fn = lambda p: dict(loss_fn(p), bc=0.25 + jnp.sqrt(p["W"][0, 0] - 1.5))
    history, state = run(oil.gradnorm(), [P0], fn)
    assert history[0] == {"bc": 1.0, "pde": 1.0}
    assert int(state.skipped_updates) == 1 and int(state.weighting_step) == 0
    fresh = oil.gradnorm().init(fn(P0))
    for a, b in zip(
        state.weight_optimizer_leaves, fresh.weight_optimizer_leaves, strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"update_every": 0}, "update_every"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.gradnorm(**kwargs)
