"""The launch scenarios the kernel census and the sm_90 compile check share.

One table: (op, implementation, entry point, shapes). The Triton entry points are the real
launchers; they are called on meta tensors with ``JITFunction.run`` replaced by a recorder,
so every launch is the one the runtime would make on an H100 (same tile choice, same
constexprs, same grid), whatever the kernels are called. The CUDA entry points name the
extension's ops; their launch plans come from the plan headers (benchmarks/census_plan_probe.cpp).
The low-rank CUDA kernel was removed (the Triton kernels do better at every shape); the registry
lists no CUDA low-rank implementation, and the census expects none.

Shapes are those of the benchmarks (benchmarks/bench_quant.py, bench_lowrank.py,
bench_attention.py): M = 1, 16, 197, 4096, 16384; 4096x4096, 4096x11008, 11008x4096, 768x3072,
3072x768; every bit-width; ranks 32/64/128/384.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import types
from collections.abc import Callable, Iterator

import torch

GPU_NAME = "NVIDIA H100 80GB HBM3"  # what the runtime sees on the benchmark GPU
NUM_SMS = 132


@dataclasses.dataclass(frozen=True)
class Scenario:
    op: str
    implementation: str  # "triton" or "cuda"
    entry: tuple[str, ...]  # "module:function" (the first that imports), or a torch op name
    shapes: tuple[dict, ...]
    # dtypes the compile check covers (the census reads the benchmarks' dtype: a shape's own
    # "dtype", else float16)
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32")
    # the compile check's shapes in the dtypes other than float16, where the full table would
    # compile the same kernel many times over for little (None: see compile_subset)
    compile_shapes: tuple[dict, ...] | None = None


def _quant_shapes() -> tuple[dict, ...]:
    out = []
    for k, n in ((4096, 4096), (4096, 11008), (11008, 4096)):
        for m in (1, 16, 197, 4096):
            for bits in (2, 3, 4, 8):
                for act in (16, 8):
                    out.append(dict(m=m, k=k, n=n, bits=bits, act_bits=act, group=128))
                    if bits == 8:  # 8-bit weights are also measured per channel (G = K)
                        out.append(dict(m=m, k=k, n=n, bits=bits, act_bits=act, group=k))
    return tuple(out)


def _raw8_shapes() -> tuple[dict, ...]:
    return tuple(
        dict(m=m, k=k, n=n)
        for k, n in ((4096, 4096), (4096, 11008), (11008, 4096))
        for m in (1, 16, 197, 4096)
    )


def _lowrank_shapes() -> tuple[dict, ...]:
    # M >= 4096: the persistent kernel; below: the two-phase kernel; r = 384 (past
    # MAX_FUSED_RANK): two GEMMs
    return tuple(
        dict(m=m, k=k, n=n, rank=r)
        for k, n in ((768, 3072), (3072, 768))
        for m in (1, 16, 197, 4096, 16384)
        for r in (32, 64, 128, 384)
    )


def _mlp_shapes() -> tuple[dict, ...]:
    """The ViT-B MLP block (768 -> 3072 -> 768), both linears low-rank at one rank: the
    one-launch kernel at M <= 4096 and ranks <= 128, else two launches (fc1 with its
    activation epilogue, then fc2); plus the epilogues the converted models use (GELU and its
    tanh form, ReLU) and a block with a dense fc1 (the dense Triton GEMM with the epilogue)."""
    out = [
        dict(m=m, k=768, h=3072, n=768, rank=r, act="gelu")
        for m in (1, 16, 197, 4096, 16384)
        for r in (32, 64, 128, 384)
    ]
    out += [dict(m=197, k=768, h=3072, n=768, rank=64, act=a) for a in ("gelu_tanh", "relu")]
    out += [dict(m=16384, k=768, h=3072, n=768, rank=64, act=a) for a in ("gelu_tanh", "relu")]
    out += [dict(m=m, k=768, h=3072, n=768, rank=64, act="gelu", dense_fc1=True)
            for m in (197, 4096)]  # fmt: skip
    return tuple(out)


# SAM ViT-B: global attention on the 64 x 64 grid (T = 4096, rel pos), 14 x 14 windows;
# a grid wider than a tile (gathers); Swin's windowed bias (49 tokens, d = 80 in the compile
# check).
_ATTN_SHAPES = (
    dict(b=1, h=12, grid=(64, 64), d=64, dtype="bfloat16", rel=True),
    dict(b=25, h=12, grid=(14, 14), d=64, dtype="bfloat16", rel=True),
    dict(b=1, h=12, grid=(64, 64), d=64, dtype="bfloat16", rel=False),
    dict(b=25, h=12, grid=(14, 14), d=64, dtype="bfloat16", rel=False),
    dict(b=2, h=3, grid=(2, 100), d=64, rel=True),
    dict(b=6, h=3, grid=(7, 7), d=80, bias=3, rel=False),
)

_HALF = ("float16", "bfloat16")  # the quantized kernels take 16-bit activations

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("quant_linear", "triton", ("supernet_kernels.kernels.triton_quant:quant_linear",),
             _quant_shapes(), _HALF),
    Scenario("int8_linear", "triton", ("supernet_kernels.kernels.triton_quant:raw8_linear",),
             _raw8_shapes(), _HALF),
    Scenario("fp8_linear", "triton", ("supernet_kernels.kernels.triton_quant:raw8_linear",),
             tuple(s for s in _raw8_shapes() if s["m"] in (1, 4096)), _HALF),
    Scenario("lowrank_linear", "triton",
             ("supernet_kernels.kernels.triton_lowrank:lowrank_linear",), _lowrank_shapes(),
             compile_shapes=tuple(s for s in _lowrank_shapes()
                                  if (s["k"], s["m"]) == (768, 197) or s["m"] == 16384)),
    Scenario("lowrank_mlp", "triton", ("supernet_kernels.ops.lowrank_mlp:_triton_impl",),
             _mlp_shapes(),
             compile_shapes=tuple(s for s in _mlp_shapes() if s["m"] in (197, 16384)
                                  and s["act"] == "gelu")),
    Scenario("attention", "triton",
             ("supernet_kernels.kernels.triton_attention:attention_fwd",), _ATTN_SHAPES),
    Scenario("attention_backward", "triton",
             ("supernet_kernels.kernels.triton_attention:attention_bwd",), _ATTN_SHAPES),
    Scenario("quant_linear", "cuda", ("_quant_linear_cuda",),
             tuple(s for s in _quant_shapes() if s["act_bits"] == 16)),
)  # fmt: skip


def compile_subset(sc: Scenario, dtype: str = "float16") -> tuple[dict, ...]:
    """The shapes the compile check runs in ``dtype``: for the linear ops those of the first
    K x N (other K x N of the table specialise alike: all are multiples of 16); a scenario's
    own ``compile_shapes`` in the dtypes other than float16 (float16 compiles are shared with
    the census's cache)."""
    if sc.compile_shapes is not None and dtype != "float16":
        return sc.compile_shapes
    if sc.op.startswith("attention"):
        return sc.shapes
    kn = (sc.shapes[0]["k"], sc.shapes[0]["n"])
    return tuple(s for s in sc.shapes if (s["k"], s["n"]) == kn)


def shape_label(op: str, s: dict) -> str:
    if op.startswith("attention"):
        g = "x".join(map(str, s["grid"]))
        extra = " rel" if s.get("rel") else (" bias" if s.get("bias") else "")
        return f"B={s['b']} H={s['h']} grid={g} d={s['d']}{extra}"
    parts = [f"M={s['m']}", f"{s['k']}x{s['n']}"]
    if "bits" in s:
        parts.append(f"W{s['bits']}A{s['act_bits']} g{s['group']}")
    if "h" in s:  # the MLP block: K -> H -> N
        parts[1] = f"{s['k']}x{s['h']}x{s['n']}"
    if "rank" in s:
        parts.append(f"r={s['rank']}")
    if "act" in s:
        parts.append(s["act"] + (" dense-fc1" if s.get("dense_fc1") else ""))
    return " ".join(parts)


def resolve_entry(sc: Scenario) -> Callable:
    """The first entry point of ``sc`` that imports (kernels are being moved between modules)."""
    errors = []
    for e in sc.entry:
        mod, _, fn = e.partition(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{e}: {exc}")
    raise LookupError(f"{sc.op}/{sc.implementation}: no entry point imports ({'; '.join(errors)})")


def _meta(*shape, dtype=torch.float16):
    return torch.empty(*shape, device="meta", dtype=dtype)


def _dt(name: str) -> torch.dtype:
    return getattr(torch, name)


def _weight_operand(packed):
    """The tensor the quantized kernel streams: the tile layout the launcher made (and cached
    per weight) where it applies, else the packed words."""
    from supernet_kernels.kernels import triton_quant as tq

    hit = getattr(tq, "_TILES", {}).get(id(packed))
    return hit[2] if hit is not None and hit[0]() is packed else packed


def _root(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _is_weight(a, weight) -> bool:
    """``a`` is the weight or a view of it. The kernel takes the int16 tile layout viewed as
    int32, and a dtype-changing view of a meta tensor keeps no link to its base: such a view
    is known by its word type, rows and bytes."""
    if weight is None or not isinstance(a, torch.Tensor):
        return False
    if _root(a) is _root(weight):
        return True
    return (a.dtype in (torch.int16, torch.int32) and a.dim() == weight.dim() == 2
            and a.shape[0] == weight.shape[0]
            and a.numel() * a.element_size() == weight.numel() * weight.element_size())  # fmt: skip


def call(sc: Scenario, fn: Callable, s: dict, dtype: str, reset: Callable = lambda: None):
    """Call a Triton entry point on meta tensors for shape ``s``, twice on the same tensors
    with ``reset()`` between (what a launcher makes once and keeps, such as the tile layout of
    a quantized weight or the low-rank scratch, is not part of a call); returns the weight
    tensor (the operand a quantized kernel streams), None for other ops."""
    dt = _dt(dtype)

    def fn(*args, _fn=fn):
        _fn(*args)
        reset()
        return _fn(*args)

    if sc.op == "quant_linear":
        from supernet_kernels.quant.packing import codes_per_word

        m, k, n, bits, g = s["m"], s["k"], s["n"], s["bits"], s["group"]
        packed = _meta(n, -(-k // codes_per_word(bits)), dtype=torch.int32)
        sc_ = _meta(n, k // g, dtype=torch.float32)
        fn(_meta(m, k, dtype=dt), packed, sc_, sc_, bits, g, k, s["act_bits"], None)
        return _weight_operand(packed)
    elif sc.op in ("int8_linear", "fp8_linear"):
        wdt = torch.int8 if sc.op == "int8_linear" else torch.float8_e4m3fn
        w = _meta(s["n"], s["k"], dtype=wdt)
        fn(_meta(s["m"], s["k"], dtype=dt), w, _meta(s["n"], dtype=torch.float32),
           _meta(s["n"], dtype=dt))  # fmt: skip
        return w
    elif sc.op == "lowrank_linear":
        m, k, n, r = s["m"], s["k"], s["n"], s["rank"]
        x, u, v = _meta(m, k, dtype=dt), _meta(n, r, dtype=dt), _meta(r, k, dtype=dt)
        fn(x, u, v, r, n, _meta(n, dtype=dt))
        return None
    elif sc.op == "lowrank_mlp":
        m, k, h, n, r = s["m"], s["k"], s["h"], s["n"], s["rank"]
        x = _meta(m, k, dtype=dt)
        if s.get("dense_fc1"):
            u1 = v1 = None
            w1 = _meta(h, k, dtype=dt)
        else:
            u1, v1, w1 = _meta(h, r, dtype=dt), _meta(r, k, dtype=dt), None
        u2, v2 = _meta(n, r, dtype=dt), _meta(r, h, dtype=dt)
        fn(x, u1, v1, w1, r, _meta(h, dtype=dt), u2, v2, None, r, _meta(n, dtype=dt), h, n,
           s["act"])  # fmt: skip
        return None
    elif sc.op.startswith("attention"):
        gh, gw = s["grid"]
        t, b, h, d = gh * gw, s["b"], s["h"], s["d"]
        q = _meta(b, h, t, d, dtype=dt)
        rh = rw = bias = None
        if s.get("rel"):
            rh, rw = _meta(b, h, t, gh, dtype=dt), _meta(b, h, t, gw, dtype=dt)
        if s.get("bias"):
            bias = _meta(s["bias"], h, t, t, dtype=dt)
        scale = d**-0.5
        if sc.op == "attention":
            fn(q, q, q, rh, rw, scale, bias)
        else:
            lse = _meta(b, h, t, dtype=torch.float32)
            fn(q, q, q, rh, rw, scale, q, lse, lse, bool(s.get("rel")), bias, bool(s.get("bias")))
        return None
    else:
        raise ValueError(f"no meta-tensor call for op {sc.op!r}")


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch of one scenario call."""

    op: str
    implementation: str
    shape: dict
    label: str
    fn: object  # triton JITFunction
    args: tuple
    kwargs: dict
    grid: tuple
    reads_weight: bool = False  # takes the call's (quantized) weight tensor


@dataclasses.dataclass
class Call:
    """One scenario call: its Triton launches and the torch kernels it would also launch."""

    op: str
    implementation: str
    shape: dict
    label: str
    launches: list[Launch]
    torch_kernels: list[str]
    error: str | None = None


# aten ops that launch nothing on a GPU (allocation, views, metadata).
_NO_LAUNCH = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view",
              "_unsafe_view", "as_strided", "detach", "alias", "t", "transpose", "permute",
              "expand", "slice", "select", "unsqueeze", "squeeze", "reshape", "contiguous",
              "lift_fresh", "_to_copy_noop", "set_", "resize_"}  # fmt: skip


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Replace ``JITFunction.run`` by a recorder and present an H100 to the launchers."""
    import triton.runtime.jit as jit

    sink: list = []

    def _record(self, *args, grid, warmup, **kwargs):
        if callable(grid):
            grid = None  # resolved by the caller from the bound arguments (none of ours)
        sink.append((self, args, dict(kwargs), tuple(grid) if grid is not None else None))

    props = types.SimpleNamespace(
        name=GPU_NAME, multi_processor_count=NUM_SMS, major=9, minor=0,
        total_memory=80 * 2**30, L2_cache_size=50 * 2**20,
    )  # fmt: skip
    saved = (jit.JITFunction.run, torch.cuda.get_device_properties,
             torch.cuda.get_device_capability)  # fmt: skip
    jit.JITFunction.run = _record
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    try:
        yield sink
    finally:
        jit.JITFunction.run, torch.cuda.get_device_properties = saved[0], saved[1]
        torch.cuda.get_device_capability = saved[2]


class _CountKernels(torch.utils._python_dispatch.TorchDispatchMode):
    """Names of the aten ops that would launch a GPU kernel (fills, casts, copies)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        aliases = any(r.alias_info is not None for r in func._schema.returns)
        if name not in _NO_LAUNCH and not aliases:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def record_calls(scenarios=SCENARIOS, compile_check: bool = False) -> list[Call]:
    """Call every Triton scenario; return what each call launched. The census: every shape in
    the benchmarks' dtype. The compile check: :func:`compile_subset` in every dtype of the
    scenario."""
    out: list[Call] = []
    with recording() as sink:
        for sc in scenarios:
            if sc.implementation != "triton":
                continue
            try:
                fn = resolve_entry(sc)
            except LookupError as e:
                out.append(Call(sc.op, sc.implementation, {}, "-", [], [], str(e)))
                continue
            todo = (
                [(s, dt) for dt in sc.dtypes for s in compile_subset(sc, dt)]
                if (compile_check)
                else [(s, s.get("dtype", "float16")) for s in sc.shapes]
            )
            for s, dt in todo:
                s = dict(s, dtype=dt)
                label = shape_label(sc.op, s) + ("" if dt == "float16" else f" {dt}")
                sink.clear()
                counter = _CountKernels()
                err, weight = None, None

                def reset(counter=counter):
                    sink.clear()
                    counter.ops.clear()

                try:
                    with counter:
                        weight = call(sc, fn, s, dt, reset)
                except Exception as e:  # noqa: BLE001 - reported per scenario
                    err = f"{type(e).__name__}: {e}"
                launches = [
                    Launch(
                        sc.op,
                        sc.implementation,
                        dict(s, dtype=dt),
                        label,
                        f,
                        a,
                        k,
                        g,
                        any(_is_weight(x, weight) for x in a),
                    )
                    for f, a, k, g in sink
                ]
                out.append(Call(sc.op, sc.implementation, dict(s, dtype=dt), label,
                                launches, counter.ops, err))  # fmt: skip
    return out
