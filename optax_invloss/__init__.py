"""optax_invloss: adaptive loss weighting for JAX and Optax.

Balance the terms of a loss (PDE residual, boundary and initial conditions, data)
with inverse loss magnitude normalization or the methods it is compared with, as
pure, jit-compatible ``(init, update)`` pairs that plug into Optax optimizers and
Flax NNX training loops.
"""

from importlib import metadata as _metadata

from optax_invloss._aggregation import (
    AggregatorState,
    aggregation_weights,
    term_gradients,
)
from optax_invloss._base import (
    WeightingMethod,
    loss_weights,
    weighted_sum,
)
from optax_invloss._config import config, imtl_g
from optax_invloss._dwa import DWAState, dwa
from optax_invloss._grad_norm_balance import GradNormBalanceState, grad_norm_balance
from optax_invloss._gradients import last_layer_mask, weight_matrix_mask
from optax_invloss._gradnorm import GradNormState, gradnorm
from optax_invloss._inverse_loss import InverseLossState, inverse_loss
from optax_invloss._lbfgs import LBFGSInfo, run_lbfgs
from optax_invloss._line_search import reset_lbfgs, reset_on_new_weights
from optax_invloss._lr_annealing import LRAnnealingState, lr_annealing
from optax_invloss._m_config import MConFIGState, m_config, m_config_term
from optax_invloss._mgda import cagrad, mgda
from optax_invloss._nash_mtl import nash_mtl
from optax_invloss._nnx import nnx_params_fn
from optax_invloss._ntk_weights import NTKWeightsState, ntk_weights
from optax_invloss._objectives import log_objective, weighted_objective
from optax_invloss._optax import WeightedOptimizerState, with_weighting
from optax_invloss._pcgrad import pcgrad
from optax_invloss._pointwise import PointWeightingMethod, pointwise_loss
from optax_invloss._rba import RBAState, rba
from optax_invloss._relobralo import ReLoBRaLoState, relobralo
from optax_invloss._resnorm import ResNormState, resnorm
from optax_invloss._self_adaptive import SelfAdaptiveState, self_adaptive
from optax_invloss._sharding import global_mean, sharded
from optax_invloss._softadapt import SoftAdaptState, softadapt
from optax_invloss._static_weights import StaticWeightsState, static_weights
from optax_invloss._uncertainty_weighting import (
    UncertaintyWeightingState,
    uncertainty_weighting,
)
from optax_invloss._upgrad import dualproj, upgrad

try:  # the installed distribution's version (pyproject.toml holds the one number)
    __version__ = _metadata.version("optax_invloss")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = (
    "AggregatorState",
    "DWAState",
    "GradNormBalanceState",
    "GradNormState",
    "InverseLossState",
    "LBFGSInfo",
    "LRAnnealingState",
    "MConFIGState",
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
    "aggregation_weights",
    "cagrad",
    "config",
    "dualproj",
    "dwa",
    "global_mean",
    "grad_norm_balance",
    "gradnorm",
    "imtl_g",
    "inverse_loss",
    "last_layer_mask",
    "log_objective",
    "loss_weights",
    "lr_annealing",
    "m_config",
    "m_config_term",
    "mgda",
    "nash_mtl",
    "nnx_params_fn",
    "ntk_weights",
    "pcgrad",
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
    "term_gradients",
    "uncertainty_weighting",
    "upgrad",
    "weight_matrix_mask",
    "weighted_objective",
    "weighted_sum",
    "with_weighting",
)
