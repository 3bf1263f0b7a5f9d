"""Learning-rate (and other hyperparameter) schedules as pytrees.

See :mod:`jopt._schedules` for the shared rules: the argument is the number of updates
applied so far (an int32 step counter, never epochs), values are float32, numbers are pytree
leaves so schedules can live in optimizer state, be vmapped and be changed without
recompiling.
"""

from jopt._schedules import CallableSchedule as CallableSchedule
from jopt._schedules import OneMinus as OneMinus
from jopt._schedules import Schedule as Schedule
from jopt._schedules import constant as constant
from jopt._schedules import cosine_decay as cosine_decay
from jopt._schedules import exponential_decay as exponential_decay
from jopt._schedules import join as join
from jopt._schedules import linear as linear
from jopt._schedules import make_schedule as make_schedule
from jopt._schedules import piecewise_constant as piecewise_constant
from jopt._schedules import warmup_cosine_decay as warmup_cosine_decay

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
]
