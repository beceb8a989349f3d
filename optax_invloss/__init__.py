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
from optax_invloss._dwa import DWAState, dwa
from optax_invloss._grad_norm import GradNormBalanceState, grad_norm_balance
from optax_invloss._gradients import last_layer_mask, weight_matrix_mask
from optax_invloss._gradnorm import GradNormState, gradnorm
from optax_invloss._inverse import InverseLossState, inverse_loss
from optax_invloss._lbfgs import (
    LBFGSInfo,
    log_objective,
    reset_lbfgs,
    reset_on_new_weights,
    run_lbfgs,
    weighted_objective,
)
from optax_invloss._lr_annealing import LRAnnealingState, lr_annealing
from optax_invloss._ntk import NTKWeightsState, ntk_weights
from optax_invloss._optax import WeightedOptimizerState, with_weighting
from optax_invloss._pointwise import PointWeightingMethod, pointwise_loss
from optax_invloss._rba import RBAState, rba
from optax_invloss._relobralo import ReLoBRaLoState, relobralo
from optax_invloss._resnorm import ResNormState, resnorm
from optax_invloss._self_adaptive import SelfAdaptiveState, self_adaptive
from optax_invloss._sharding import global_mean, sharded
from optax_invloss._softadapt import SoftAdaptState, softadapt
from optax_invloss._static import StaticWeightsState, static_weights
from optax_invloss._uncertainty import (
    UncertaintyWeightingState,
    uncertainty_weighting,
)

__version__ = "0.1.0"

__all__ = (
    "DWAState",
    "GradNormBalanceState",
    "GradNormState",
    "InverseLossState",
    "LBFGSInfo",
    "LRAnnealingState",
    "NTKWeightsState",
    "PointWeightingMethod",
    "RBAState",
    "ReLoBRaLoState",
    "ResNormState",
    "SelfAdaptiveState",
    "SoftAdaptState",
    "StaticWeightsState",
    "UncertaintyWeightingState",
    "WeightedOptimizerState",
    "WeightingMethod",
    "dwa",
    "global_mean",
    "grad_norm_balance",
    "gradnorm",
    "inverse_loss",
    "last_layer_mask",
    "log_objective",
    "loss_weights",
    "lr_annealing",
    "ntk_weights",
    "pointwise_loss",
    "rba",
    "relobralo",
    "reset_lbfgs",
    "reset_on_new_weights",
    "resnorm",
    "run_lbfgs",
    "self_adaptive",
    "sharded",
    "softadapt",
    "static_weights",
    "uncertainty_weighting",
    "weight_matrix_mask",
    "weighted_objective",
    "weighted_sum",
    "with_weighting",
)
