"""Tests for grad-norm balancing (optax_invloss/_grad_norm_balance.py).

The tiny model: one parameter vector w (2,), with

  pde = 0.5 |w|^2          ->  gradient w, norm |w|
  bc  = 100 + 0.6 w0 + 0.8 w1  ->  gradient (0.6, 0.8), norm 1
  ic  = 100 + 4 w1         ->  gradient (0, 4), norm 4

Step 0: w = (3, 4), so the norms are pde 5, bc 1, ic 4 (sum 10).
Step 1: w = (6, 8), so the norms are pde 10, bc 1, ic 4 (sum 15).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import check_weights as check
from _helpers import run_updates

import optax_invloss as oil


def loss_fn(p):
    w = p["w"]
    return {
        "pde": 0.5 * jnp.sum(w**2),
        "bc": 100.0 + 0.6 * w[0] + 0.8 * w[1],
        "ic": 100.0 + 4.0 * w[1],
    }


P0 = {"w": jnp.asarray([3.0, 4.0])}
P1 = {"w": jnp.asarray([6.0, 8.0])}


def run(method, params_seq, fn=loss_fn):
    return run_updates(method, params_seq, fn, loss_fn=fn)


def test_paper_sum_two_steps():
    # Step 0: hat = 10 / (5, 1, 4) = (2, 10, 2.5) for (pde, bc, ic);
    #   lambda = 0.9 * 1 + 0.1 * hat = (1.1, 1.9, 1.15).
    # Step 1: hat = 15 / (10, 1, 4) = (1.5, 15, 3.75);
    #   lambda = 0.9 * (1.1, 1.9, 1.15) + 0.1 * hat
    #          = (0.99 + 0.15, 1.71 + 1.5, 1.035 + 0.375) = (1.14, 3.21, 1.41).
    history, state = run(oil.grad_norm_balance(update_every=1), [P0, P1])
    check(history[0], {"pde": 1.1, "bc": 1.9, "ic": 1.15})
    check(history[1], {"pde": 1.14, "bc": 3.21, "ic": 1.41})
    assert int(state.weighting_step) == 2 and int(state.skipped_updates) == 0


def test_mean_reduction_of_the_authors_code():
    # Step 0: mean of the norms 10 / 3; hat = (2/3, 10/3, 5/6);
    #   lambda = 0.9 + 0.1 * hat = (0.9 + 1/15, 0.9 + 1/3, 0.9 + 1/12).
    method = oil.grad_norm_balance(update_every=1, reduction="mean")
    history, _ = run(method, [P0])
    check(history[0], {"pde": 0.9 + 1 / 15, "bc": 0.9 + 1 / 3, "ic": 0.9 + 1 / 12})


def test_decay_and_update_every():
    # decay 0.5, every 2: step 0 lambda = 0.5 + 0.5 * (2, 10, 2.5) = (1.5, 5.5, 1.75);
    # step 1 holds; step 2 (w = (6, 8)): 0.5 * (1.5, 5.5, 1.75) + 0.5 * (1.5, 15,
    # 3.75) = (1.5, 10.25, 2.75).
    method = oil.grad_norm_balance(decay=0.5, update_every=2)
    history, state = run(method, [P0, P1, P1])
    check(history[0], {"pde": 1.5, "bc": 5.5, "ic": 1.75})
    check(history[1], {"pde": 1.5, "bc": 5.5, "ic": 1.75})
    check(history[2], {"pde": 1.5, "bc": 10.25, "ic": 2.75})
    assert int(state.weighting_step) == 3


def test_mask_restricts_the_norm():
    # With a second parameter v that only pde sees (gradient 2 v = (0, 0, 10)
    # at v = (0, 0, 5)), the pde norm over all parameters is |(3, 4, 0, 0, 10)|
    # = sqrt(125); with the mask on w only it is 5 again, as in the paper test.
    fn = lambda p: dict(loss_fn(p), pde=loss_fn(p)["pde"] + jnp.sum(p["v"] ** 2))
    params = dict(P0, v=jnp.asarray([0.0, 0.0, 5.0]))
    method = oil.grad_norm_balance(update_every=1, mask={"w": True, "v": False})
    history, _ = run(method, [params], fn)
    check(history[0], {"pde": 1.1, "bc": 1.9, "ic": 1.15})
    # All parameters: sum = sqrt(125) + 5; pde hat = 1 + 5 / sqrt(125).
    history, _ = run(oil.grad_norm_balance(update_every=1), [params], fn)
    check(history[0], {"pde": 0.9 + 0.1 * (1.0 + 5.0 / np.sqrt(125.0))})


def test_zero_gradient_term_keeps_its_weight():
    fn = lambda p: dict(loss_fn(p), data=jnp.asarray(7.0))  # no gradient at all
    history, state = run(oil.grad_norm_balance(update_every=1), [P0], fn)
    # The zero norm adds nothing to the sum: the others as in the paper test.
    check(history[0], {"pde": 1.1, "bc": 1.9, "ic": 1.15, "data": 1.0})
    assert int(state.skipped_updates) == 0


def test_non_finite_gradient_skips_the_update():
    # d sqrt(x)/dx at x = 0 is infinite.
    fn = lambda p: dict(loss_fn(p), bc=100.0 + jnp.sqrt(p["w"][0] - 3.0))
    history, state = run(oil.grad_norm_balance(update_every=1), [P0], fn)
    assert history[0] == {"bc": 1.0, "ic": 1.0, "pde": 1.0}
    assert int(state.skipped_updates) == 1 and int(state.weighting_step) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decay": -0.1}, "decay"),
        ({"update_every": 1.5}, "update_every"),
        ({"reduction": "max"}, "reduction"),
        ({"mask": "weights"}, "mask"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.grad_norm_balance(**kwargs)
