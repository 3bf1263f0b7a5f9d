"""Learning-rate (and other hyperparameter) schedules as pytrees.

The argument of a schedule is the number of updates applied so far (an int32 step counter,
never epochs); values are float32 (float64 if given float64 with x64 on); numbers are pytree
leaves, so schedules can live in optimizer states, be vmapped (a population of peak learning
rates) and be changed without recompiling. Any numeric hyperparameter of a jopt transformation
may be a schedule. Step-count fields (``transition_steps``, ``warmup_steps``, ...) are stored
as int32 and offsets from them are taken in integers, so schedules stay exact past ``2**24``
steps.

optax's names (``linear_schedule``, ``cosine_decay_schedule``, ``warmup_cosine_decay_schedule``,
``constant_schedule``, ``join_schedules``, ``piecewise_constant_schedule``) are provided too,
with optax's arguments.
"""

from jopt.schedules._core import CallableSchedule as CallableSchedule
from jopt.schedules._core import OneMinus as OneMinus
from jopt.schedules._core import Schedule as Schedule
from jopt.schedules._piecewise import join as join
from jopt.schedules._piecewise import join_schedules as join_schedules
from jopt.schedules._piecewise import piecewise_constant as piecewise_constant
from jopt.schedules._piecewise import piecewise_constant_schedule as piecewise_constant_schedule
from jopt.schedules._standard import constant as constant
from jopt.schedules._standard import constant_schedule as constant_schedule
from jopt.schedules._standard import cosine_decay as cosine_decay
from jopt.schedules._standard import cosine_decay_schedule as cosine_decay_schedule
from jopt.schedules._standard import exponential_decay as exponential_decay
from jopt.schedules._standard import linear as linear
from jopt.schedules._standard import linear_schedule as linear_schedule
from jopt.schedules._standard import make_schedule as make_schedule
from jopt.schedules._standard import warmup_cosine_decay as warmup_cosine_decay
from jopt.schedules._standard import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule

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
