"""Tests for learning-rate annealing (optax_invloss/_lr_annealing.py).

The tiny model: two weight matrices W1 (2x2), W2 (2x1) and a bias b (2,), with

  pde = 0.5 |W1|^2 + 0.5 |W2|^2 + 50 |b|^2   ->  dW1 = W1, dW2 = W2, db = 100 b
  bc  = 100 + <A, W1> + <B, W2>               ->  dW1 = A,  dW2 = B,  db = 0
  ic  = 100 + <A2, W1> + <B2, W2>             ->  dW1 = A2, dW2 = B2, db = 0

A = [[1, -1], [2, 0]] (mean |A| = 1), B = [[3], [-3]] (mean |B| = 3),
A2 = [[4, -4], [4, 4]] (mean 4), B2 = [[4], [-4]] (mean 4). So the boundary
terms' gradients do not depend on the parameters, and the reference term's
gradient is the parameters themselves.

Step 0: W1 = [[1, -2], [1, 0]] (max |.| 2, mean |.| 1), W2 = [[4], [-2]] (max 4,
mean 3), b = [3, -3] (gradient 100 b = [300, -300]).
Step 1: the same, but W2 = [[-4.4], [1]] (max 4.4, mean 2.7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import check_weights as check
from _helpers import run_updates

import optax_invloss as oil

A = jnp.asarray([[1.0, -1.0], [2.0, 0.0]])
B = jnp.asarray([[3.0], [-3.0]])
A2 = jnp.asarray([[4.0, -4.0], [4.0, 4.0]])
B2 = jnp.asarray([[4.0], [-4.0]])


def loss_fn(p):
    W1, W2, b = p["W1"], p["W2"], p["b"]
    return {
        "pde": 0.5 * jnp.sum(W1**2) + 0.5 * jnp.sum(W2**2) + 50.0 * jnp.sum(b**2),
        "bc": 100.0 + jnp.sum(A * W1) + jnp.sum(B * W2),
        "ic": 100.0 + jnp.sum(A2 * W1) + jnp.sum(B2 * W2),
    }


P0 = {
    "W1": jnp.asarray([[1.0, -2.0], [1.0, 0.0]]),
    "W2": jnp.asarray([[4.0], [-2.0]]),
    "b": jnp.asarray([3.0, -3.0]),
}
P1 = dict(P0, W2=jnp.asarray([[-4.4], [1.0]]))


def run(method, params_seq):
    return run_updates(method, params_seq, loss_fn, loss_fn=loss_fn)


def test_default_is_the_authors_code_two_steps():
    # Weight matrices only, max of the reference over layers, mean over layers of
    # each layer's mean |d(lambda L)/dW|, lambda inside, 0.9 on the old value.
    # Step 0 (all lambda = 1): S = max(2, 4) = 4.
    #   bc: D = 1 * (1 + 3) / 2 = 2, hat = 4 / 2 = 2  -> 0.9 * 1 + 0.1 * 2 = 1.1
    #   ic: D = 1 * (4 + 4) / 2 = 4, hat = 4 / 4 = 1  -> 0.9 * 1 + 0.1 * 1 = 1.0
    # Step 1: S = max(2, 4.4) = 4.4.
    #   bc: D = 1.1 * 2 = 2.2, hat = 2    -> 0.9 * 1.1 + 0.1 * 2   = 1.19
    #   ic: D = 1.0 * 4 = 4,   hat = 1.1  -> 0.9 * 1.0 + 0.1 * 1.1 = 1.01
    history, state = run(oil.lr_annealing(update_every=1), [P0, P1])
    check(history[0], {"pde": 1.0, "bc": 1.1, "ic": 1.0})
    check(history[1], {"pde": 1.0, "bc": 1.19, "ic": 1.01})
    assert int(state.weighting_step) == 2 and int(state.skipped_updates) == 0


def test_lambda_outside_the_denominator():
    # Step 0 as above (lambda = 1): bc 1.1, ic 1.0.
    # Step 1: bc hat = 4.4 / 2 = 2.2 -> 0.99 + 0.22 = 1.21; ic hat = 4.4 / 4 = 1.1
    #   -> 0.9 + 0.11 = 1.01.
    history, _ = run(oil.lr_annealing(update_every=1, lambda_inside=False), [P0, P1])
    check(history[0], {"pde": 1.0, "bc": 1.1, "ic": 1.0})
    check(history[1], {"pde": 1.0, "bc": 1.21, "ic": 1.01})


def test_mean_statistic():
    # Numerator: mean over layers of each layer's mean |dL_pde/dW|.
    # Step 0: S = (1 + 3) / 2 = 2. bc hat = 2 / 2 = 1 -> 1.0;
    #   ic hat = 2 / 4 = 0.5 -> 0.9 + 0.05 = 0.95.
    # Step 1: S = (1 + 2.7) / 2 = 1.85. bc hat = 1.85 / 2 = 0.925
    #   -> 0.9 * 1.0 + 0.0925 = 0.9925; ic hat = 1.85 / 4 = 0.4625
    #   -> 0.9 * 0.95 + 0.04625 = 0.90125.
    method = oil.lr_annealing(update_every=1, statistic="mean", lambda_inside=False)
    history, _ = run(method, [P0, P1])
    check(history[0], {"pde": 1.0, "bc": 1.0, "ic": 0.95})
    check(history[1], {"pde": 1.0, "bc": 0.9925, "ic": 0.90125})


def test_all_parameters():
    # mask=None: b counts as a third layer. S = max(2, 4, 300) = 300.
    #   bc: D = (1 + 3 + 0) / 3 = 4/3, hat = 225  -> 0.9 + 22.5  = 23.4
    #   ic: D = (4 + 4 + 0) / 3 = 8/3, hat = 112.5 -> 0.9 + 11.25 = 12.15
    history, _ = run(oil.lr_annealing(update_every=1, mask=None), [P0])
    check(history[0], {"pde": 1.0, "bc": 23.4, "ic": 12.15})


def test_update_every_holds_the_weights_in_between():
    # Steps 0 and 2 update, step 1 holds: 1.1 / 1.0, then the same, then step 2
    # with params P1 and lambda = (1.1, 1.0) inside: 1.19 / 1.01 (as in step 1 of
    # the default test).
    history, state = run(oil.lr_annealing(update_every=2), [P0, P1, P1])
    check(history[0], {"pde": 1.0, "bc": 1.1, "ic": 1.0})
    check(history[1], {"pde": 1.0, "bc": 1.1, "ic": 1.0})
    check(history[2], {"pde": 1.0, "bc": 1.19, "ic": 1.01})
    assert int(state.weighting_step) == 3


def test_another_reference_term():
    # reference="bc": its largest gradient entry is max(|A|, |B|) = 3.
    # Step 0: pde D = (1 + 3) / 2 = 2, hat = 1.5 -> 0.9 + 0.15 = 1.05;
    #   ic D = 4, hat = 0.75 -> 0.9 + 0.075 = 0.975.
    history, _ = run(oil.lr_annealing(reference="bc", update_every=1), [P0])
    check(history[0], {"pde": 1.05, "bc": 1.0, "ic": 0.975})


def test_reference_by_path_in_nested_losses():
    nested = lambda p: {"pde": loss_fn(p)["pde"], "bc": {"a": loss_fn(p)["bc"]}}
    for name in ("bc/a", "['bc']['a']"):
        method = oil.lr_annealing(reference=name, update_every=1)
        state = method.init(nested(P0))
        weights, _ = method.update(nested(P0), state, params=P0, loss_fn=nested)
        # As in test_another_reference_term, without ic: pde -> 1.05.
        np.testing.assert_allclose(float(weights["pde"]), 1.05, rtol=1e-12)
        assert float(weights["bc"]["a"]) == 1.0


def test_wrong_reference_lists_the_terms():
    method = oil.lr_annealing(reference="residual")
    with pytest.raises(ValueError, match=r"'residual'.*'bc', 'ic', 'pde'"):
        method.init(loss_fn(P0))


def test_zero_gradient_term_keeps_its_weight():
    # "data" depends on b only: its gradient on the weight matrices is zero, so
    # its ratio is undefined and it keeps its weight (1), finite.
    fn = lambda p: dict(loss_fn(p), data=1.0 + jnp.sum(p["b"] ** 2))
    method = oil.lr_annealing(update_every=1)
    state = method.init(fn(P0))
    weights, state = method.update(fn(P0), state, params=P0, loss_fn=fn)
    assert float(weights["data"]) == 1.0
    np.testing.assert_allclose(float(weights["bc"]), 1.1, rtol=1e-12)
    assert int(state.skipped_updates) == 0


def test_non_finite_gradient_skips_the_update():
    # d sqrt(x)/dx is infinite at x = 0 (W1[1, 1] = 0): the statistic is not
    # finite, so nothing changes except the skip counter.
    fn = lambda p: dict(loss_fn(p), bc=100.0 + jnp.sqrt(p["W1"][1, 1]))
    method = oil.lr_annealing(update_every=1)
    state = method.init(fn(P0))
    update = jax.jit(lambda ls, s, p: method.update(ls, s, params=p, loss_fn=fn))
    weights, new_state = update(fn(P0), state, P0)
    assert int(new_state.skipped_updates) == 1
    assert int(new_state.weighting_step) == 0
    assert {k: float(v) for k, v in weights.items()} == {
        "bc": 1.0,
        "ic": 1.0,
        "pde": 1.0,
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decay": 1.0}, "decay"),
        ({"update_every": 0}, "update_every"),
        ({"statistic": "median"}, "statistic"),
        ({"reference": 0}, "reference"),
        ({"mask": True}, "mask"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oil.lr_annealing(**kwargs)


def test_through_with_weighting_and_optax_tree_get():
    import optax

    tx = oil.with_weighting(
        optax.adam(1e-3), oil.lr_annealing(update_every=1), loss_fn(P0)
    )
    opt_state = tx.init(P0)
    grads = jax.grad(lambda p: sum(loss_fn(p).values()))(P0)
    _, opt_state = tx.update(grads, opt_state, P0, losses=loss_fn(P0), loss_fn=loss_fn)
    weights = optax.tree.get(opt_state, "loss_weights")
    np.testing.assert_allclose(float(weights["bc"]), 1.1, rtol=1e-12)
    assert int(optax.tree.get(opt_state, "count")) == 1
