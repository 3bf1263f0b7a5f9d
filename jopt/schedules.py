"""Learning-rate (and other hyperparameter) schedules as pytrees.

See :mod:`jopt._schedules` for the shared rules: the argument is the number of updates
applied so far (an int32 step counter, never epochs), values are float32, numbers are pytree
leaves so schedules can live in optimizer state, be vmapped and be changed without
recompiling.

optax's names (``linear_schedule``, ``cosine_decay_schedule``, ``warmup_cosine_decay_schedule``,
``constant_schedule``, ``join_schedules``, ``piecewise_constant_schedule``) are provided too,
with optax's arguments.
"""

from jopt._schedules import CallableSchedule as CallableSchedule
from jopt._schedules import OneMinus as OneMinus
from jopt._schedules import Schedule as Schedule
from jopt._schedules import constant as constant
from jopt._schedules import constant_schedule as constant_schedule
from jopt._schedules import cosine_decay as cosine_decay
from jopt._schedules import cosine_decay_schedule as cosine_decay_schedule
from jopt._schedules import exponential_decay as exponential_decay
from jopt._schedules import join as join
from jopt._schedules import join_schedules as join_schedules
from jopt._schedules import linear as linear
from jopt._schedules import linear_schedule as linear_schedule
from jopt._schedules import make_schedule as make_schedule
from jopt._schedules import piecewise_constant as piecewise_constant
from jopt._schedules import piecewise_constant_schedule as piecewise_constant_schedule
from jopt._schedules import warmup_cosine_decay as warmup_cosine_decay
from jopt._schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule

__all__ = [
    "CallableSchedule",
    "OneMinus",
    "Schedule",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "join",
    "linear",
    "make_schedule",
    "piecewise_constant",
    "warmup_cosine_decay",
    "constant_schedule",
    "linear_schedule",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "join_schedules",
    "piecewise_constant_schedule",
]
