"""jopt: functional optimizers for JAX.

Pure ``(init, update)`` gradient transformations composed with :func:`chain`, whose numeric
hyperparameters live in the optimizer state as arrays (the design contract is
``docs/design.md`` in the repository; ``CONTRIBUTING.md`` explains how a transformation is
declared). Every public name is re-exported here; namespaces: :mod:`jopt.schedules`,
:mod:`jopt.errors`, :mod:`jopt.contrib`, :mod:`jopt.tune`, :mod:`jopt.parallel`,
:mod:`jopt.experimental` and :mod:`jopt.cli` (the console program).
"""

from jopt import contrib as contrib
from jopt import errors as errors
from jopt import experimental as experimental
from jopt import parallel as parallel
from jopt import schedules as schedules
from jopt import tune as tune
from jopt._aliases import adam as adam
from jopt._aliases import adam_8bit as adam_8bit
from jopt._aliases import adamw as adamw
from jopt._aliases import adamw_8bit as adamw_8bit
from jopt._aliases import sgd as sgd
from jopt._base import EmptyState as EmptyState
from jopt._base import GradientTransformation as GradientTransformation
from jopt._base import apply_updates as apply_updates
from jopt._chain import chain as chain
from jopt._chain import declare_kind as declare_kind
from jopt._chain import named_chain as named_chain
from jopt._chain import to_optax as to_optax
from jopt._clip import ClipByGlobalNormState as ClipByGlobalNormState
from jopt._clip import ClipState as ClipState
from jopt._clip import clip as clip
from jopt._clip import clip_by_global_norm as clip_by_global_norm
from jopt._codecs import Blockwise8bit as Blockwise8bit
from jopt._codecs import StochasticRounding as StochasticRounding
from jopt._early_stopping import EarlyStopping as EarlyStopping
from jopt._early_stopping import EarlyStoppingState as EarlyStoppingState
from jopt._early_stopping import Status as Status
from jopt._early_stopping import best_params as best_params
from jopt._early_stopping import early_stopping as early_stopping
from jopt._early_stopping import should_stop as should_stop
from jopt._early_stopping import stop_reason as stop_reason
from jopt._flatten import FlattenState as FlattenState
from jopt._flatten import flatten as flatten
from jopt._hyperparams import Hyperparams as Hyperparams
from jopt._hyperparams import get_hyperparams as get_hyperparams
from jopt._hyperparams import set_hyperparams as set_hyperparams
from jopt._inject import InjectHyperparamsState as InjectHyperparamsState
from jopt._inject import inject_hyperparams as inject_hyperparams
from jopt._layout import Layout as Layout
from jopt._layout import Packed as Packed
from jopt._layout import pack as pack
from jopt._layout import unpack as unpack
from jopt._quantize import QuantizedArray as QuantizedArray
from jopt._quantize import dequantize_blockwise as dequantize_blockwise
from jopt._quantize import dynamic_map as dynamic_map
from jopt._quantize import quantize_blockwise as quantize_blockwise
from jopt._reduce_on_plateau import ReduceOnPlateauState as ReduceOnPlateauState
from jopt._reduce_on_plateau import gate_stopped as gate_stopped
from jopt._reduce_on_plateau import population_status as population_status
from jopt._reduce_on_plateau import reduce_on_plateau as reduce_on_plateau
from jopt._rounding import stochastic_round as stochastic_round
from jopt._scale import ScaleByAdam8bitState as ScaleByAdam8bitState
from jopt._scale import ScaleByAdamState as ScaleByAdamState
from jopt._scale import ScaleByLearningRateState as ScaleByLearningRateState
from jopt._scale import ScaleState as ScaleState
from jopt._scale import TraceState as TraceState
from jopt._scale import identity as identity
from jopt._scale import scale as scale
from jopt._scale import scale_by_adam as scale_by_adam
from jopt._scale import scale_by_adam_8bit as scale_by_adam_8bit
from jopt._scale import scale_by_learning_rate as scale_by_learning_rate
from jopt._scale import trace as trace
from jopt._tree import safe_increment as safe_increment
from jopt._weight_decay import AddDecayedWeightsState as AddDecayedWeightsState
from jopt._weight_decay import add_decayed_weights as add_decayed_weights
from jopt.schedules import Schedule as Schedule
from jopt.schedules import constant as constant
from jopt.schedules import constant_schedule as constant_schedule
from jopt.schedules import cosine_decay as cosine_decay
from jopt.schedules import cosine_decay_schedule as cosine_decay_schedule
from jopt.schedules import exponential_decay as exponential_decay
from jopt.schedules import join as join
from jopt.schedules import join_schedules as join_schedules
from jopt.schedules import linear as linear
from jopt.schedules import linear_schedule as linear_schedule
from jopt.schedules import make_schedule as make_schedule
from jopt.schedules import piecewise_constant as piecewise_constant
from jopt.schedules import piecewise_constant_schedule as piecewise_constant_schedule
from jopt.schedules import warmup_cosine_decay as warmup_cosine_decay
from jopt.schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule

__version__ = "0.1.0"

__all__ = [
    "AddDecayedWeightsState",
    "Blockwise8bit",
    "ClipByGlobalNormState",
    "ClipState",
    "EarlyStopping",
    "EarlyStoppingState",
    "EmptyState",
    "FlattenState",
    "GradientTransformation",
    "Hyperparams",
    "InjectHyperparamsState",
    "Layout",
    "Packed",
    "QuantizedArray",
    "ReduceOnPlateauState",
    "ScaleByAdam8bitState",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "ScaleState",
    "Schedule",
    "Status",
    "StochasticRounding",
    "TraceState",
    "adam",
    "adam_8bit",
    "adamw",
    "adamw_8bit",
    "add_decayed_weights",
    "apply_updates",
    "best_params",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant",
    "constant_schedule",
    "contrib",
    "cosine_decay",
    "cosine_decay_schedule",
    "declare_kind",
    "dequantize_blockwise",
    "dynamic_map",
    "early_stopping",
    "errors",
    "experimental",
    "exponential_decay",
    "flatten",
    "gate_stopped",
    "get_hyperparams",
    "identity",
    "inject_hyperparams",
    "join",
    "join_schedules",
    "linear",
    "linear_schedule",
    "make_schedule",
    "named_chain",
    "pack",
    "parallel",
    "piecewise_constant",
    "piecewise_constant_schedule",
    "population_status",
    "quantize_blockwise",
    "reduce_on_plateau",
    "safe_increment",
    "scale",
    "scale_by_adam",
    "scale_by_adam_8bit",
    "scale_by_learning_rate",
    "schedules",
    "set_hyperparams",
    "sgd",
    "should_stop",
    "stochastic_round",
    "stop_reason",
    "to_optax",
    "trace",
    "tune",
    "unpack",
    "warmup_cosine_decay",
    "warmup_cosine_decay_schedule",
]
