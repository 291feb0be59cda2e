"""The transform module's handler table and the deprecated homes of its names."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import supernet_kernels as sk
from supernet_kernels import transform
from supernet_kernels.nn import FakeQuantLinear, QuantLinear


class _Scaled(nn.Linear):
    """A linear layer with its own forward: no handler of its own, so nn.Linear's refuses it."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_the_most_derived_handler_wins():
    assert transform.handler_for(nn.Linear(4, 4)) is transform.HANDLERS[nn.Linear]
    fake = FakeQuantLinear(64, 8, bits=4, group_size=32)
    assert transform.handler_for(fake) is transform.HANDLERS[FakeQuantLinear]
    assert transform.handler_for(_Scaled(4, 4)) is transform.HANDLERS[nn.Linear]
    assert transform.handler_for(nn.ReLU()) is None


def test_a_registered_handler_decides_for_its_type(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(_Scaled(64, 64), nn.Linear(64, 64))
    report = sk.quantize_model(model, bits=4, group_size=32)
    assert report.skipped == [("0", "_Scaled overrides nn.Linear.forward")]

    monkeypatch.setitem(transform.HANDLERS, _Scaled, lambda name, mod, ctx: "kept by a handler")
    model = nn.Sequential(_Scaled(64, 64), nn.Linear(64, 64))
    report = sk.quantize_model(model, bits=4, group_size=32)
    assert report.skipped == [("0", "kept by a handler")]
    assert isinstance(model[1], QuantLinear) and type(model[0]) is _Scaled


def test_register_handler_takes_linear_types_only():
    with pytest.raises(TypeError, match="module_type must be nn.Linear"):
        transform.register_handler(nn.Conv2d)
    with pytest.raises(TypeError, match="module_type must be nn.Linear"):
        transform.register_handler("Linear")


@pytest.mark.parametrize(
    "module, name",
    [
        ("supernet_kernels.quant.fake", "FakeQuantLinear"),
        ("supernet_kernels.quant", "quantize_model"),
        ("supernet_kernels.quant", "save_quantized"),
        ("supernet_kernels.quant", "load_quantized"),
        ("supernet_kernels.quant", "QuantizeReport"),
        ("supernet_kernels.quant.model", "quantize_model"),
        ("supernet_kernels.quant.model", "MODEL_FORMAT"),
    ],
)
def test_old_homes_warn_and_resolve(module, name):
    mod = importlib.import_module(module)
    new = sk.nn if name == "FakeQuantLinear" else transform
    with pytest.warns(DeprecationWarning, match=f"use {new.__name__}.{name}"):
        value = getattr(mod, name)
    assert value is getattr(new, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        mod.no_such_name  # noqa: B018


def test_quant_numerics_load_without_the_layers():
    """quant's own modules import no layer while loading (the deprecated names resolve late).
    Loaded from their files, outside the package, so the package's __init__ does not run."""
    code = (
        "import importlib.util, json, sys, types\n"
        "pkg = types.ModuleType('supernet_kernels'); pkg.__path__ = []\n"
        "sys.modules['supernet_kernels'] = pkg\n"
        "spec = importlib.util.spec_from_file_location('supernet_kernels.quant', "
        f"{str(sk.quant.__file__)!r}, submodule_search_locations=[])\n"
        "spec.submodule_search_locations.append(__import__('os').path.dirname(spec.origin))\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m\n"
        "spec.loader.exec_module(m)\n"
        "import supernet_kernels.quant.fake, supernet_kernels.quant.model\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith('supernet_kernels'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert "supernet_kernels.quant.fake" in loaded and "supernet_kernels.quant.model" in loaded
    others = [
        n for n in loaded if n != "supernet_kernels" and not n.startswith("supernet_kernels.quant")
    ]
    assert not others, others
