"""Cost model: MACs, BitOPs, weight bytes (:func:`profile`) and measured latency
(:class:`LatencyTable`) of a model or of a supernet's active subnet.

Importing this package registers FLOP formulas for ``torch.ops.supernet_kernels.*`` with
``torch.utils.flop_counter`` (see :mod:`.formulas`), so a plain ``FlopCounterMode`` counts them
too. ``import supernet_kernels`` alone does not import it.
"""

from . import formulas  # noqa: F401  (registers the flop formulas)
from .latency import LatencyTable, compare
from .profile import LayerCost, Profile, profile

__all__ = ["LatencyTable", "LayerCost", "Profile", "compare", "profile"]
