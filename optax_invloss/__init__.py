"""optax_invloss: adaptive loss weighting for JAX and Optax.

Balance the terms of a loss (PDE residual, boundary and initial conditions, data)
with inverse loss magnitude normalization or the methods it is compared with, as
pure, jit-compatible ``(init, update)`` pairs that plug into Optax optimizers and
Flax NNX training loops.
"""

from optax_invloss._base import (
    WeightingMethod,
    loss_weights,
    weighted_sum,
)
from optax_invloss._inverse import InverseLossState, inverse_loss
from optax_invloss._lbfgs import (
    LBFGSInfo,
    log_objective,
    reset_lbfgs,
    reset_on_new_weights,
    run_lbfgs,
    weighted_objective,
)
from optax_invloss._optax import WeightedOptimizerState, with_weighting

__version__ = "0.1.0"

__all__ = (
    "InverseLossState",
    "LBFGSInfo",
    "WeightedOptimizerState",
    "WeightingMethod",
    "inverse_loss",
    "log_objective",
    "loss_weights",
    "reset_lbfgs",
    "reset_on_new_weights",
    "run_lbfgs",
    "weighted_objective",
    "weighted_sum",
    "with_weighting",
)
