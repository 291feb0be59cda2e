"""The names this module used to hold, re-exported from their homes so old imports keep
working: the search space and config checks (:mod:`.space`), module surgery (:mod:`.surgery`),
the :class:`Supernet` class (:mod:`.supernet`) and :func:`convert` (:mod:`.convert`)."""

from .convert import NEARLY_EMPTY, convert, extract
from .space import (
    CONFIG_KEYS,
    LINEAR_FIELDS,
    MLP_FRACTIONS,
    RANK_EIGHTHS,
    SUBNET_FORMAT,
    pick_config,
    validate_config,
)
from .supernet import Supernet
from .surgery import drop_placeholders, remove_blocks

__all__ = [
    "CONFIG_KEYS",
    "LINEAR_FIELDS",
    "MLP_FRACTIONS",
    "NEARLY_EMPTY",
    "RANK_EIGHTHS",
    "SUBNET_FORMAT",
    "Supernet",
    "convert",
    "drop_placeholders",
    "extract",
    "pick_config",
    "remove_blocks",
    "validate_config",
]
