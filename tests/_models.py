"""Moved to :mod:`helpers.models`; re-exported for the tests that import it here."""

from helpers.models import *  # noqa: F403
from helpers.models import __all__  # noqa: F401
