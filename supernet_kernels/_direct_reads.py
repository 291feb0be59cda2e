"""Find linear layers whose parameters a model reads directly instead of calling the layer.

Some models compute with a child linear's tensors, e.g. timm's BEiT, EVA and Swin V2 attention
``F.linear(x, weight=self.qkv.weight, bias=qkv_bias)`` (q / v biases kept apart), or
``nn.MultiheadAttention`` with ``self.out_proj.weight``. Replacing such a layer by one that
stores its weight differently (a factorized ElasticLinear has ``u`` / ``v``; a QuantLinear
packed codes) breaks that forward, or worse, silently runs the stale float weight.

How they are found: by reading the source of the parent modules' methods (an AST walk for
``self.<child>.weight`` / ``.bias`` loads), not by tracing a forward. Reading the source needs
no example input (``convert`` and ``quantize_model`` have none), and it sees every branch: a
trace only sees the branch its input takes (timm's attention reads ``qkv.weight`` only when
``q_bias`` is set, and fused / unfused paths differ). The alternative, a ``weight`` property
on our layers that materializes the active dense weight, was rejected: a model reading the
weight would then run a dense float product, silently bypassing the rank and bit width the
supernet says it runs, and the reported cost would be wrong. Such layers are therefore left as
they are (listed with the reason). Methods that only prepare weights (``__init__``,
``init_weights``, ``fuse``, ...) are not read: they do not run in the forward.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap

from torch import nn

# Parents whose forward reads their nn.Linear children's weights directly (C++ / fused paths
# that a source scan cannot see).
KNOWN_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)

_NOT_FORWARD = ("__init__", "init_weights", "_init_weights", "reset_parameters", "fuse")


@functools.cache
def _read_paths(cls: type) -> frozenset[tuple[str, str]]:
    """{(child path, "weight" | "bias")} read as ``self.<path>.weight`` in ``cls``'s methods
    (its own and its bases', up to nn.Module)."""
    found: set[tuple[str, str]] = set()
    for klass in cls.__mro__:
        if klass is nn.Module or klass is object or klass.__module__.startswith("torch."):
            continue
        for name, fn in vars(klass).items():
            if not inspect.isfunction(fn) or name.startswith(_NOT_FORWARD) or "init" in name:
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
            except (OSError, TypeError, SyntaxError):
                continue
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Attribute) and node.attr in ("weight", "bias")):
                    continue
                parts = []
                cur = node.value
                while isinstance(cur, ast.Attribute):
                    parts.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id == "self" and parts:
                    found.add((".".join(reversed(parts)), node.attr))
    return frozenset(found)


def direct_reads(model: nn.Module) -> dict[str, str]:
    """{linear name: reason} for every ``nn.Linear`` of ``model`` whose parameters some module
    reads directly (see the module doc)."""
    out: dict[str, str] = {}
    ids = {id(m): n for n, m in model.named_modules()}
    for pname, parent in model.named_modules():
        if isinstance(parent, KNOWN_READERS):
            for attr, child in parent._modules.items():
                if isinstance(child, nn.Linear):
                    name = f"{pname}.{attr}" if pname else attr
                    out[name] = (
                        f"{attr} of nn.MultiheadAttention (its forward reads .weight directly)"
                        if isinstance(parent, nn.MultiheadAttention)
                        else f"inside {type(parent).__name__} (its forward reads .weight)"
                    )
            continue
        for path, what in _read_paths(type(parent)):
            try:
                child = parent.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(child, nn.Linear) and id(child) in ids:
                out.setdefault(
                    ids[id(child)],
                    f"{type(parent).__name__} reads self.{path}.{what} directly instead of "
                    "calling the layer",
                )
    return out
