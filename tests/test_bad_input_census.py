"""Bad-input census: every public entry point given bad input ends in a clear Python exception
(or, for the command line, a message and a non-zero exit) that names the problem.

The cases are listed in one table so their number is known; the README reports it. Each case
is (entry point, what is wrong, callable, expected exception, text the message must contain).
Module-specific suites test many more variants; this is the cross-section.
"""

from __future__ import annotations

import pytest
import torch
from helpers.models import tiny_timm_vit
from torch import nn

import supernet_kernels as sk
from supernet_kernels import cost
from supernet_kernels.nn import ElasticLinear, LowRankLinear, QuantLinear
from supernet_kernels.quant import quantize_weight


def _vit():
    return tiny_timm_vit(
        img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=10
    )


@pytest.fixture(scope="module")
def supernet():
    torch.set_num_threads(1)
    return sk.convert(_vit())


def _x(*shape):
    return torch.randn(*shape)


def _lowrank(**kw):
    a = {"x": _x(4, 10), "u": _x(8, 6), "v": _x(6, 10), "rank": 3}
    a.update(kw)
    return lambda: sk.ops.lowrank_linear(**a)


def _q():
    return quantize_weight(_x(8, 64), 4, 32)


NAN = float("nan")

CASES = [
    # ops
    ("lowrank_linear", "rank 0", _lowrank(rank=0), ValueError, "rank must be in"),
    ("lowrank_linear", "rank above R_max", _lowrank(rank=7), ValueError, "rank must be in"),
    ("lowrank_linear", "K mismatch", _lowrank(x=_x(4, 11)), ValueError, "x has 11 features"),
    (
        "lowrank_linear",
        "integer x",
        _lowrank(x=torch.ones(4, 10, dtype=torch.int32)),
        TypeError,
        "floating-point",
    ),
    ("lowrank_linear", "dtype mismatch", _lowrank(u=_x(8, 6).double()), TypeError, "dtype"),
    ("lowrank_linear", "device mismatch", _lowrank(v=_x(6, 10).to("meta")), ValueError, "meta"),
    (
        "lowrank_linear",
        "out_features too large",
        _lowrank(out_features=9),
        ValueError,
        "out_features",
    ),
    (
        "quant_linear",
        "K mismatch",
        lambda: sk.ops.quant_linear(_x(3, 60), _q()),
        ValueError,
        "in_features",
    ),
    (
        "quant_linear",
        "act_bits 4",
        lambda: sk.ops.quant_linear(_x(3, 64), _q(), act_bits=4),
        ValueError,
        "act_bits",
    ),
    (
        "quant_linear",
        "not a QuantizedWeight",
        lambda: sk.ops.quant_linear(_x(3, 64), _x(8, 64)),
        TypeError,
        "QuantizedWeight",
    ),
    (
        "quantize_weight",
        "bits 5",
        lambda: quantize_weight(_x(8, 64), 5, 32),
        ValueError,
        "bits must be one of",
    ),
    (
        "quantize_weight",
        "group does not divide K",
        lambda: quantize_weight(_x(8, 64), 4, 48),
        ValueError,
        "does not divide",
    ),
    (
        "quantize_weight",
        "NaN weight",
        lambda: quantize_weight(torch.full((8, 64), NAN), 4, 32),
        ValueError,
        "NaN",
    ),
    (
        "int8_linear",
        "float weight",
        lambda: sk.ops.int8_linear(_x(2, 16), _x(5, 16), torch.rand(5)),
        TypeError,
        "int8",
    ),
    (
        "fp8_linear",
        "wrong scale shape",
        lambda: sk.ops.fp8_linear(_x(2, 16), _x(5, 16).to(torch.float8_e4m3fn), torch.rand(4)),
        TypeError,
        "weight_scale",
    ),
    (
        "attention",
        "head dim mismatch",
        lambda: sk.ops.attention(_x(1, 2, 8, 16), _x(1, 2, 8, 8), _x(1, 2, 8, 16)),
        ValueError,
        "k has head dim 8",
    ),
    (
        "attention",
        "rel-pos without hw",
        lambda: sk.ops.attention(
            _x(1, 2, 16, 8),
            _x(1, 2, 16, 8),
            _x(1, 2, 16, 8),
            rel_pos_h=_x(7, 8),
            rel_pos_w=_x(7, 8),
        ),
        ValueError,
        "hw",
    ),
    (
        "attention",
        "bias of the wrong shape",
        lambda: sk.ops.attention(
            _x(2, 2, 8, 16), _x(2, 2, 8, 16), _x(2, 2, 8, 16), bias=_x(1, 2, 8, 7)
        ),
        ValueError,
        "bias",
    ),
    (
        "attention",
        "batch not a multiple of the bias groups",
        lambda: sk.ops.attention(
            _x(3, 2, 8, 16), _x(3, 2, 8, 16), _x(3, 2, 8, 16), bias=_x(2, 2, 8, 8)
        ),
        ValueError,
        "bias",
    ),
    # backends
    (
        "backend",
        "unknown name",
        lambda: sk.backend("fast").__enter__(),
        ValueError,
        "backend must be one of",
    ),
    # layers
    (
        "LowRankLinear",
        "rank too large",
        lambda: LowRankLinear(8, 10, 9),
        ValueError,
        "rank must be in",
    ),
    (
        "ElasticLinear",
        "rank too large",
        lambda: ElasticLinear.from_linear(nn.Linear(16, 12), rank_choices=[4, 12]).set_active(
            rank=13
        ),
        ValueError,
        "rank",
    ),
    (
        "ElasticLinear",
        "unsupported bits",
        lambda: ElasticLinear(16, 12, w_bits_choices=(16, 5)),
        ValueError,
        "w_bits",
    ),
    (
        "ElasticLinear",
        "wrong input width",
        lambda: ElasticLinear(16, 12)(_x(2, 15)),
        ValueError,
        "in_features",
    ),
    (
        "QuantLinear",
        "bits 7",
        lambda: QuantLinear.from_linear(nn.Linear(64, 8), bits=7),
        ValueError,
        "bits",
    ),
    (
        "quantize_model",
        "unknown layer pattern",
        lambda: sk.quantize_model(nn.Sequential(nn.Linear(64, 8)), bits={"nope.*": 4}),
        ValueError,
        "nope",
    ),
]


def _cfg_cases(supernet):
    def setter(mutate):
        def run():
            cfg = supernet.max_config()
            mutate(cfg)
            supernet.set_active(cfg)

        return run

    qkv = "blocks.0.attn.qkv"
    return [
        (
            "set_active",
            "more heads than the block has",
            setter(lambda c: c["heads"].update({k: 99 for k in c["heads"]})),
            ValueError,
            "heads",
        ),
        (
            "set_active",
            "rank above the maximum",
            setter(lambda c: c["linear"][qkv].update(rank=999)),
            ValueError,
            "rank",
        ),
        (
            "set_active",
            "unknown layer",
            setter(lambda c: c["linear"].update({"blocks.9.x": {"rank": 1}})),
            ValueError,
            "blocks.9.x",
        ),
        (
            "set_active",
            "unsupported bits",
            setter(lambda c: c["linear"]["blocks.0.attn.proj"].update(w_bits=5)),
            ValueError,
            "w_bits",
        ),
        (
            "set_active",
            "unknown top-level key",
            setter(lambda c: c.update(embed={})),
            ValueError,
            "embed",
        ),
        (
            "set_active",
            "wrong type",
            setter(lambda c: c["linear"][qkv].update(rank="64")),
            ValueError,
            "rank",
        ),
        (
            "extract",
            "invalid config",
            lambda: supernet.extract({"depth": {"blocks.0": "no"}}),
            ValueError,
            "depth",
        ),
        (
            "profile",
            "config for a model without set_active",
            lambda: cost.profile(nn.Linear(4, 4), (1, 4), config={}),
            TypeError,
            "set_active",
        ),
    ]


def test_census(supernet, tmp_path):
    cases = CASES + _cfg_cases(supernet)
    # files: truncated, corrupt, another model, missing
    vit = _vit()
    sub = supernet.extract(supernet.min_config())
    good = sk.save(sub, tmp_path / "sub.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    cases += [
        ("load", "truncated file", lambda: sk.load(trunc), ValueError, "trunc.safetensors"),
        ("load", "corrupt file", lambda: sk.load(garbage), ValueError, "garbage.safetensors"),
        (
            "load",
            "missing file",
            lambda: sk.load(tmp_path / "none.safetensors"),
            FileNotFoundError,
            "none.safetensors",
        ),
        (
            "load",
            "file from another model",
            lambda: sk.load(good, skeleton=nn.Sequential(nn.Linear(3, 3))),
            ValueError,
            "model",
        ),
        (
            "load_quantized",
            "not a quantized-model file",
            lambda: sk.load_quantized(vit, good),
            ValueError,
            "sub.safetensors",
        ),
        ("convert", "not a module", lambda: sk.convert("vit"), TypeError, "Module"),
        ("convert", "model on the meta device", lambda: sk.convert(_vit().to("meta")),
         ValueError, "meta device"),
        ("save", "a supernet to a file name", lambda: sk.save(supernet, tmp_path / "s.safetensors"),
         ValueError, "folder"),
        ("load", "a folder without a supernet", lambda: sk.load(tmp_path), FileNotFoundError,
         "supernet.json"),
    ]  # fmt: skip
    failures = []
    for entry, what, fn, exc, text in cases:
        try:
            fn()
        except exc as e:  # the expected kind of error
            if text.lower() not in str(e).lower():
                failures.append(f"{entry} / {what}: message {str(e)[:160]!r} lacks {text!r}")
        except Exception as e:  # noqa: BLE001 - a different exception type is a finding
            failures.append(
                f"{entry} / {what}: {type(e).__name__} instead of {exc.__name__}: {str(e)[:160]}"
            )
        else:
            failures.append(f"{entry} / {what}: no error")
    print(f"bad-input census: {len(cases)} cases tried, {len(cases) - len(failures)} pass")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "argv,code,text",
    [
        (["train"], 2, "usage"),
        (["search", "/no/such/supernet"], 2, ""),
        (["export", "/no/such/dir", "--preset", "max"], 3, "/no/such/dir"),
        (["convert", "no_such_timm_model_xyz"], 2, "no_such_timm_model_xyz"),
        (["frobnicate"], 2, ""),
    ],
)
def test_cli_census(argv, code, text, capsys):
    from supernet_kernels import cli

    try:
        got = cli.main(argv)
    except SystemExit as e:  # argparse usage errors
        got = e.code
    err = capsys.readouterr().err
    assert got == code, (got, err[-400:])
    assert text.lower() in err.lower()
    assert "Traceback" not in err
