"""Moved to :mod:`helpers.train`; re-exported for the tests and workers that import it here."""

from helpers.train import *  # noqa: F403
from helpers.train import __all__  # noqa: F401
