"""Dispatch-level probes for the tests: count an op's calls, find the largest tensor created."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ATTENTION_OP = "supernet_kernels.attention.default"


class OpCounter(TorchDispatchMode):
    """Counts the calls of one op (by its dispatcher name) made inside the block."""

    def __init__(self, op: str = ATTENTION_OP):
        super().__init__()
        self.op, self.calls = op, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) == self.op:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def count_op_calls(model, x, op: str = ATTENTION_OP):
    """(model(x) without grad, the number of calls of ``op`` dispatched during it)."""
    with torch.no_grad(), OpCounter(op) as c:
        y = model(x)
    return y, c.calls


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op creates inside the block (the
    interpreter's host views of kernel arguments, set_ / copy_, are not allocations)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (
            torch.ops.aten.set_.source_Storage,
            torch.ops.aten.set_.source_Storage_storage_offset,
            torch.ops.aten.copy_.default,
        ):
            return out
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out
