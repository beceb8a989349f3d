"""weighted_sum and loss_weights."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import factories

import optax_invloss as oil
from optax_invloss import _base


def test_weighted_sum_by_hand():
    losses = {"pde": jnp.asarray(2.0), "bc": jnp.asarray(0.5)}
    # 0.25 * 2 + 0.75 * 0.5 = 0.875
    np.testing.assert_allclose(
        oil.weighted_sum(losses, {"pde": 0.25, "bc": 0.75}), 0.875
    )


def test_weighted_sum_holds_the_weights_constant():
    # Weights computed from the losses themselves get no gradient: d/dx of
    # w(x) * x^2 with w = stop_gradient(1 / x^2) is w * 2x = 2 / x.
    def total(x):
        losses = {"a": x**2}
        weights = {"a": 1.0 / x**2}
        return oil.weighted_sum(losses, weights)

    np.testing.assert_allclose(jax.grad(total)(2.0), 1.0)


def test_weighted_sum_keeps_the_loss_dtype():
    losses = {"a": jnp.asarray(1.0, jnp.float32), "b": jnp.asarray(2.0, jnp.float32)}
    total = oil.weighted_sum(losses, {"a": jnp.asarray(0.5, jnp.float64), "b": 0.5})
    assert total.dtype == jnp.float32


def test_weighted_sum_structure_mismatch_shows_both():
    with pytest.raises(ValueError, match=r"losses:.*\n.*weights:"):
        oil.weighted_sum({"a": 1.0, "b": 2.0}, {"a": 1.0})


def test_weighted_sum_rejects_non_scalar_terms():
    with pytest.raises(ValueError, match=r"\['a'\] in losses has shape \(4,\)"):
        oil.weighted_sum({"a": jnp.ones(4)}, {"a": 1.0})


def test_loss_weights_from_method_and_optax_states():
    losses = {"pde": 1.0, "bc": 3.0}
    method = oil.inverse_loss(min_weight=0.0)
    state = method.init(losses)
    _, state = method.update(losses, state)
    # 1/L = (1, 1/3), sum 4/3: w = (0.75, 0.25).
    wrapped = oil.with_weighting(optax.sgd(0.1), method, losses)
    opt_state = wrapped.init(jnp.zeros(2))._replace(weighting_state=state)
    for holder in (state, (optax.adam(1e-3).init(jnp.zeros(2)), state), opt_state):
        got = oil.loss_weights(holder)
        np.testing.assert_allclose([got["pde"], got["bc"]], [0.75, 0.25])


def test_loss_weights_of_a_state_without_weighting_is_a_clear_error():
    with pytest.raises(ValueError, match="Expected a weighting state"):
        oil.loss_weights(optax.adam(1e-3).init(jnp.zeros(2)))


def test_loss_weights_with_two_weighting_states_asks_which():
    state = oil.inverse_loss().init({"a": 0.0})
    with pytest.raises(ValueError, match="Found 2 weighting states"):
        oil.loss_weights((state, state))


def test_term_names_and_index():
    losses = {"pde": 1.0, "bc": {"left": 1.0, "right": 1.0}}
    assert _base.term_names(losses, short=True) == ["bc/left", "bc/right", "pde"]
    assert _base.term_names(losses) == ["['bc']['left']", "['bc']['right']", "['pde']"]
    assert _base.term_names(2.0) == ["<root>"]
    kw = dict(argname="reference", method="m")
    assert _base.term_index(losses, "pde", **kw) == 2
    assert _base.term_index(losses, "bc/right", **kw) == 1
    assert _base.term_index(losses, "['bc']['left']", **kw) == 0
    with pytest.raises(ValueError, match="'bc/left', 'bc/right', 'pde'"):
        _base.term_index(losses, "bc", **kw)


def _hyperparameters():
    """``(factory, argument, default)`` for every public factory's hyperparameter."""
    for name, factory in sorted(factories().items()):
        for arg in inspect.signature(factory).parameters.values():
            if arg.default is inspect.Parameter.empty or callable(arg.default):
                continue  # required (static_weights' weights) or a mask
            yield pytest.param(factory, arg.name, arg.default, id=f"{name}-{arg.name}")


# The arguments without a default that a factory needs, to reach the others.
_REQUIRED = {"static_weights": {"weights": 1.0}}


@pytest.mark.parametrize("factory, name, default", list(_hyperparameters()))
def test_hyperparameters_of_the_wrong_type_name_the_argument(factory, name, default):
    # A number given as a string, a flag or a choice given as a number: the
    # message names the argument and the value, in the one shared form.
    if name == "reference":
        bad = 0  # a term name must be a str
    elif isinstance(default, str):
        bad = 1.5
    elif isinstance(default, bool):
        bad = "yes"
    else:
        bad = "0.9"
    with pytest.raises(ValueError, match=rf"^{name} must be .*, got {name} = {bad!r}"):
        factory(**_REQUIRED.get(factory.__name__, {}), **{name: bad})
