"""What ``jopt train`` can build, as tables: optimizers, schedules, population axes.

Each optimizer recipe is written once against the names jopt shares with optax
(``adamw(..., weight_decay=)``, ``warmup_cosine_decay_schedule``, ...), so the same recipe
builds the jopt run and, for ``--compare optax``, its optax replay. Adding an optimizer to the
program is one row of :data:`OPTIMIZERS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

MOMENTS = ("float32", "bfloat16", "8bit")
SGD_MOMENTUM = 0.9
# "exponential" decays the peak learning rate to this fraction of it by the last planned step.
EXPONENTIAL_FINAL_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One ``--optimizer`` choice.

    Attributes:
      build: ``build(lib, schedule, cfg, storage) -> transformation``, ``lib`` the jopt or
        optax module, ``storage`` the keyword arguments that store its moments as
        ``--moments`` asks (from :attr:`storage`).
      learning_rate: the default peak learning rate.
      storage: ``--moments`` choice -> ``lib -> keyword arguments`` (``{"8bit": True}`` asks
        ``build`` for its 8-bit moments).
      weight_decay: the optimizer takes ``--weight-decay``.
      help: shown by ``--help``.
    """

    build: Callable[..., Any]
    learning_rate: float
    storage: dict[str, Callable[[Any], dict[str, Any]]]
    weight_decay: bool = False
    help: str = ""


def _bf16(option: str) -> Callable[[Any], dict[str, Any]]:
    def kwargs(lib: Any) -> dict[str, Any]:
        import jax.numpy as jnp

        del lib
        return {option: jnp.bfloat16}

    return kwargs


def _eight_bit(lib: Any) -> dict[str, Any]:
    del lib
    return {"8bit": True}


def _adamw(lib, schedule, cfg, storage):
    if storage.pop("8bit", False):
        return lib.adamw_8bit(schedule, weight_decay=cfg["weight_decay"])
    return lib.adamw(schedule, weight_decay=cfg["weight_decay"], **storage)


def _adam(lib, schedule, cfg, storage):
    del cfg
    if storage.pop("8bit", False):
        return lib.adam_8bit(schedule)
    return lib.adam(schedule, **storage)


def _sgd(lib, schedule, cfg, storage):
    del cfg
    if storage.pop("8bit", False):
        storage["accumulator_dtype"] = "8bit"
    return lib.sgd(schedule, momentum=SGD_MOMENTUM, **storage)


_FLOAT32: dict[str, Callable[[Any], dict[str, Any]]] = {"float32": lambda lib: {}}

OPTIMIZERS: dict[str, Recipe] = {
    "adamw": Recipe(_adamw, 3e-3, {**_FLOAT32, "bfloat16": _bf16("mu_dtype"), "8bit": _eight_bit},
                    weight_decay=True, help="Adam with decoupled weight decay"),
    "adam": Recipe(_adam, 3e-3, {**_FLOAT32, "bfloat16": _bf16("mu_dtype"), "8bit": _eight_bit},
                   help="Adam"),
    "sgd": Recipe(_sgd, 3e-3, {**_FLOAT32, "bfloat16": _bf16("accumulator_dtype"),
                               "8bit": _eight_bit},
                  help=f"SGD with momentum {SGD_MOMENTUM}"),
}


def _main_schedule(name: str) -> Callable[[Any, Any, int], Any]:
    def build(lib, lr, rest):
        return {"constant": lambda: lib.constant_schedule(lr),
                "linear": lambda: lib.linear_schedule(lr, 0.0, rest),
                "exponential": lambda: lib.exponential_decay(lr, rest,
                                                             EXPONENTIAL_FINAL_FRACTION)}[name]()

    return build


# --schedule NAME -> (help, builder); every schedule starts with a linear warm-up.
SCHEDULES: dict[str, tuple[str, Any]] = {
    "warmup_cosine": ("linear warm-up, cosine decay to 0 on the last planned step", None),
    "constant": ("linear warm-up, then constant", _main_schedule("constant")),
    "linear": ("linear warm-up, then linear decay to 0", _main_schedule("linear")),
    "exponential": (f"linear warm-up, then exponential decay to {EXPONENTIAL_FINAL_FRACTION} "
                    "of the peak", _main_schedule("exponential")),
}

# --population NAME=V1,V2,...: the hyperparameters a population may vary, their spellings,
# whether 0 is allowed, and whether the optimizer must take it.
POPULATION_NAMES = {"learning_rate": "learning_rate", "learning-rate": "learning_rate",
                    "weight_decay": "weight_decay", "weight-decay": "weight_decay"}
POPULATION_POSITIVE = {"learning_rate": True, "weight_decay": False}


def make_schedule(lib: Any, cfg: dict[str, Any], lr: Any):
    """The learning-rate schedule of a run with peak ``lr`` (a number, or a traced scalar when
    a population sets one schedule per member inside ``jax.vmap``)."""
    warm, total = cfg["warmup_steps"], cfg["total_steps"]
    name = cfg["schedule"]
    if SCHEDULES[name][1] is None:
        # decay_steps counts the warm-up too, so the cosine ends on the last planned step.
        return lib.warmup_cosine_decay_schedule(0.0, lr, warm, total, end_value=0.0)
    main = SCHEDULES[name][1](lib, lr, total - warm)
    return main if warm == 0 else lib.join_schedules(
        [lib.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(lib: Any, cfg: dict[str, Any]):
    """The optimizer of a run, ``chain(clip_by_global_norm, <optimizer>(schedule)[,
    reduce_on_plateau])``, built by the run's recipe with ``lib`` (jopt or optax).

    Args:
      lib: the ``jopt`` or ``optax`` module.
      cfg: the run configuration (see ``jopt.cli._args.config``).

    Returns:
      The gradient transformation.
    """
    recipe = OPTIMIZERS[cfg["optimizer"]]
    schedule = make_schedule(lib, cfg, cfg["learning_rate"])
    storage = recipe.storage[cfg.get("moments", "float32")](lib)
    links = [lib.clip_by_global_norm(cfg["clip_norm"]),
             recipe.build(lib, schedule, cfg, dict(storage))]
    plateau = cfg.get("reduce_on_plateau")
    if plateau is not None:
        # Last link: it scales the final updates (the learning rate included) and takes one
        # decision per epoch from the mean training loss of the epoch (value=loss per step).
        common = dict(factor=plateau["factor"], patience=plateau["patience"],
                      cooldown=plateau["cooldown"], accumulation_size=cfg["steps_per_epoch"])
        if hasattr(lib, "reduce_on_plateau"):
            links.append(lib.reduce_on_plateau(min_delta=plateau["min_delta"], **common))
        else:  # optax keeps it in contrib; its atol is jopt's absolute min_delta
            links.append(lib.contrib.reduce_on_plateau(rtol=0.0, atol=plateau["min_delta"],
                                                       **common))
    return lib.chain(*links)


def moments_note(cfg: dict[str, Any]) -> str:
    """`` (8bit moments)`` for the run header, empty for the default float32 moments."""
    moments = cfg.get("moments", "float32")
    return "" if moments == "float32" else f" ({moments} moments)"
