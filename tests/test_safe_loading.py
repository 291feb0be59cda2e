"""Nothing the toolkit loads unpickles code, and damaged files are clear errors.

(a) A file that runs code when unpickled (``torch.save`` of an object whose ``__reduce__``
    creates a marker file) is given to every loader: each refuses with a clear error (naming
    the file) and the marker never appears. A positive control shows the payload does fire
    under a plain unpickling ``torch.load``.
(b) safetensors files with a corrupt header, a truncated body, wrong dtypes or shapes, or the
    metadata of another model: ValueError naming the problem.
(c) A static scan of the package source: no ``pickle.load(s)``, ``torch.load`` without
    ``weights_only=True``, ``eval`` / ``exec``, ``yaml.load`` without a safe loader,
    ``marshal`` / ``shelve`` / ``dill`` loads, ``numpy.load(allow_pickle=True)``.
"""

from __future__ import annotations

import ast
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import supernet_kernels as sk
from supernet_kernels.train.checkpoint import load_checkpoint, save_checkpoint

sys.path.insert(0, os.path.dirname(__file__))
from helpers.train import TinyNet, class_data, make_generic_supernet  # noqa: E402

PACKAGE = Path(sk.__file__).parent


# ----------------------------------------------------------------------------- the payload


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """(path of a code-running pickle, marker path). The file is a real torch.save zip."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(3), "x": _Payload(str(marker))}, path)
    return path, marker


def _copy_as(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def test_payload_fires_under_plain_unpickling(evil):
    """Positive control: the file does run code when unpickled (so the tests below mean it)."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_torch_weights_only_refuses_it(evil):
    path, marker = evil
    with pytest.raises(Exception, match="(?i)weights.only"):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def _refuses(call, marker: Path, name: str, exc=ValueError):
    """``call()`` raises ``exc`` whose message names ``name`` (the file), and no code ran."""
    with pytest.raises(exc) as info:
        call()
    assert not marker.exists(), "the payload ran: the loader unpickled the file"
    assert name in str(info.value), f"the error does not name the file: {info.value!r}"
    return info.value


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_subnet_refuses_pickle(evil, tmp_path, suffix):
    path, marker = evil
    p = _copy_as(path, tmp_path / f"subnet{suffix}")
    _refuses(lambda: sk.load(p, skeleton=TinyNet()), marker, p.name)
    _refuses(lambda: sk.load(p), marker, p.name)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_quantized_refuses_pickle(evil, tmp_path, suffix):
    path, marker = evil
    p = _copy_as(path, tmp_path / f"q{suffix}")
    model = TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _refuses(lambda: sk.load_quantized(model, p), marker, p.name)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_loader_refuses_pickle(evil, tmp_path):
    path, marker = evil
    p = _copy_as(path, tmp_path / "ck" / "checkpoint.safetensors")
    _refuses(lambda: load_checkpoint(p), marker, p.name)
    _refuses(lambda: load_checkpoint(p.parent), marker, p.name)  # the folder form
    _refuses(lambda: load_checkpoint(_copy_as(path, tmp_path / "x.pt")), marker, "x.pt")


def test_trainer_resume_refuses_pickle(evil, tmp_path):
    from supernet_kernels.train import ClassificationTask, TrainConfig, Trainer

    path, marker = evil
    ck = tmp_path / "ck"
    _copy_as(path, ck / "checkpoint.safetensors")
    cfg = TrainConfig(steps=2, batch_size=4, progress=False, checkpoint_dir=str(ck))
    tr = Trainer(make_generic_supernet(), ClassificationTask(), class_data(8), cfg, device="cpu")
    _refuses(lambda: tr.train(resume=True), marker, "checkpoint.safetensors")
    assert tr.step == 0


def test_search_storage_refuses_pickle(evil, tmp_path):
    pytest.importorskip("optuna")
    from supernet_kernels.search.optuna_search import open_storage

    path, marker = evil
    p = _copy_as(path, tmp_path / "study.db")
    _refuses(lambda: open_storage(p), marker, p.name)


def _json_loaders(tmp_path: Path, payload: Path):
    """(name, call, file) for every JSON table reader, each pointed at the pickle."""
    from supernet_kernels import dispatch, tuning
    from supernet_kernels.cost.latency import LatencyTable

    out = []
    lat = _copy_as(payload, tmp_path / "latency.json")
    out.append(("LatencyTable.load", lambda: LatencyTable.load(lat), lat))

    def tuning_get():
        store = tuning._Store("lowrank_fused")  # a fresh store: nothing cached in memory
        return store.get("Evil GPU", "k")

    tun = _copy_as(payload, tmp_path / "cache" / "tuning" / "evil-gpu.json")
    out.append(("tuning table", tuning_get, tun))

    def dispatch_lookup():
        dispatch._load_table.cache_clear()
        try:
            return dispatch.lookup("lowrank_linear", "Evil GPU", "float16", 1, rank=1)
        finally:
            dispatch._load_table.cache_clear()

    dsp = _copy_as(payload, tmp_path / "configs" / "dispatch" / "evil-gpu.json")
    out.append(("dispatch table", dispatch_lookup, dsp))

    def verified():
        dispatch.verified_kernels.cache_clear()
        try:
            return dispatch.verified_kernels()
        finally:
            dispatch.verified_kernels.cache_clear()

    ver = _copy_as(payload, tmp_path / "configs" / "verified.json")
    out.append(("verified-kernels record", verified, ver))
    return out


JSON_READERS = ["LatencyTable.load", "tuning table", "dispatch table", "verified-kernels record"]


@pytest.mark.parametrize("name", JSON_READERS)
def test_json_readers_refuse_pickle_naming_the_file(evil, tmp_path, monkeypatch, name):
    path, marker = evil
    monkeypatch.setenv("SUPERNET_KERNELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path / "configs"))
    (n, call, file) = next(c for c in _json_loaders(tmp_path, path) if c[0] == name)
    _refuses(call, marker, file.name)


@pytest.mark.parametrize("name", JSON_READERS)
def test_json_readers_never_run_the_pickle(evil, tmp_path, monkeypatch, name):
    """Whatever the message, the JSON readers fail with a ValueError and run nothing."""
    path, marker = evil
    monkeypatch.setenv("SUPERNET_KERNELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SUPERNET_KERNELS_CONFIG_DIR", str(tmp_path / "configs"))
    (n, call, file) = next(c for c in _json_loaders(tmp_path, path) if c[0] == name)
    with pytest.raises(ValueError):
        call()
    assert not marker.exists()


def test_cli_readers_refuse_pickle(evil, tmp_path):
    """The CLI's weight readers (``.pt`` via torch.load(weights_only=True), safetensors)."""
    from supernet_kernels import cli

    path, marker = evil
    read_sd = getattr(cli, "_read_state_dict", None)
    load_sf = getattr(cli, "_load_state_file", None)
    if read_sd is None and load_sf is None:
        pytest.skip("the CLI has no weight readers of these names")
    for suffix in (".pt", ".pth", ".bin", ".safetensors"):
        p = _copy_as(path, tmp_path / f"w{suffix}")
        if read_sd is not None:
            _refuses(lambda p=p: read_sd(p), marker, p.name, exc=Exception)
        if load_sf is not None:
            _refuses(lambda p=p: load_sf(p), marker, p.name, exc=Exception)


def test_yaml_config_refuses_python_tags(tmp_path):
    """A YAML config with a python/object tag (pyyaml's code-running form) is refused."""
    pytest.importorskip("yaml")
    try:
        from supernet_kernels.config_files import load_config
    except ImportError:
        pytest.skip("no supernet_kernels.config_files.load_config")
    marker = tmp_path / "PWNED"
    p = tmp_path / "train.yaml"
    p.write_text(f"x: !!python/object/apply:builtins.open [{str(marker)!r}, 'w']\n")
    with pytest.raises(Exception):  # noqa: B017 - the config module's own error type
        load_config(p)
    assert not marker.exists()


# ----------------------------------------------------------------------------- (b) damaged files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good files of each kind: a subnet, a quantized model, a training checkpoint."""
    d = tmp_path_factory.mktemp("good")
    sn = make_generic_supernet()
    sub = sn.extract(sn.max_config())
    subnet = sk.save(sub, d / "subnet.safetensors")
    qmodel = TinyNet()
    sk.quantize_model(qmodel, bits=4, group_size=32, skip="head")  # head stays nn.Linear
    quant = sk.save_quantized(qmodel, d / "quant.safetensors")
    state = {"step": 3, "w": torch.randn(4, 5), "nested": {"a": [1, 2.5, (3, "x")]}}
    ck = save_checkpoint(d / "ck.safetensors", state)
    return {"subnet": subnet, "quant": quant, "checkpoint": ck}


def _load_kind(kind: str, path: Path):
    if kind == "subnet":
        return sk.load(path, skeleton=TinyNet())
    if kind == "quant":
        return sk.load_quantized(TinyNet(), path)
    return load_checkpoint(path)


KINDS = ["subnet", "quant", "checkpoint"]


@pytest.mark.parametrize("kind", KINDS)
def test_good_files_load(files, kind):
    _load_kind(kind, files[kind])


def _header(path: Path) -> tuple[int, dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, body: bytes) -> Path:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)
    return path


def _corruptions(src: Path, d: Path):
    raw = src.read_bytes()
    n, header, body = _header(src)
    out = {}
    out["empty"] = d / "empty.safetensors"
    out["empty"].write_bytes(b"")
    out["short"] = d / "short.safetensors"
    out["short"].write_bytes(raw[:5])
    out["huge_header_len"] = d / "huge.safetensors"
    out["huge_header_len"].write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    out["garbage_header"] = d / "garbage.safetensors"
    out["garbage_header"].write_bytes(raw[:8] + b"{" + b"\xff" * (n - 1) + body)
    out["truncated_body"] = d / "trunc.safetensors"
    out["truncated_body"].write_bytes(raw[: 8 + n + len(body) // 2])
    out["truncated_last_byte"] = d / "trunc1.safetensors"
    out["truncated_last_byte"].write_bytes(raw[:-1])
    out["truncated_in_header"] = d / "trunch.safetensors"
    out["truncated_in_header"].write_bytes(raw[: 8 + n // 2])
    bad = dict(header)
    key = next(k for k in bad if k != "__metadata__")
    bad[key] = {**bad[key], "data_offsets": [0, 10**9]}
    out["offsets_past_end"] = _write(d / "offsets.safetensors", bad, body)
    meta = dict(header)
    meta["__metadata__"] = {
        k: (v[: len(v) // 2] if isinstance(v, str) else v)
        for k, v in header.get("__metadata__", {}).items()
    }
    out["metadata_json_cut"] = _write(d / "metacut.safetensors", meta, body)
    nometa = {k: v for k, v in header.items() if k != "__metadata__"}
    out["no_metadata"] = _write(d / "nometa.safetensors", nometa, body)
    return out


CORRUPTIONS = [
    "empty",
    "short",
    "huge_header_len",
    "garbage_header",
    "truncated_body",
    "truncated_last_byte",
    "truncated_in_header",
    "offsets_past_end",
    "metadata_json_cut",
    "no_metadata",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_files_are_value_errors(files, tmp_path, kind, corruption):
    path = _corruptions(files[kind], tmp_path)[corruption]
    with pytest.raises(ValueError) as info:
        _load_kind(kind, path)
    assert path.name in str(info.value), f"the error does not name the file: {info.value!r}"


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a safetensors file with ``change(tensors)`` applied, metadata kept."""
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    change(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _first(tensors, pred):
    return next(k for k in sorted(tensors) if pred(k, tensors[k]))


def _float_weight(k, t):
    return t.is_floating_point() and t.dim() == 2 and k.endswith(".weight")


WRONG = {
    # a float weight stored as integers / half: not what save wrote for this model
    "weight_as_int32": lambda ts: ts.__setitem__(
        k := _first(ts, _float_weight), ts[k].to(torch.int32)
    ),
    "weight_as_float16": lambda ts: ts.__setitem__(
        k := _first(ts, _float_weight), ts[k].to(torch.float16)
    ),
    "weight_transposed": lambda ts: ts.__setitem__(
        k := _first(ts, lambda k, t: t.dim() == 2 and t.shape[0] != t.shape[1]),
        ts[k].T.contiguous(),
    ),
    "weight_one_row_short": lambda ts: ts.__setitem__(
        k := _first(ts, lambda k, t: t.dim() == 2), ts[k][:-1].contiguous()
    ),
    "tensor_missing": lambda ts: ts.pop(_first(ts, lambda k, t: True)),
    "tensor_extra": lambda ts: ts.__setitem__("surprise.weight", torch.zeros(2)),
}


def _quant_packed_as_float(ts):
    k = _first(ts, lambda k, t: k.endswith(".packed"))
    ts[k] = ts[k].float()


def _quant_scales_as_half(ts):
    k = _first(ts, lambda k, t: k.endswith(".scales"))
    ts[k] = ts[k].half()


def _quant_qmeta_bits(ts):
    k = _first(ts, lambda k, t: k.endswith(".qmeta"))
    ts[k] = ts[k].clone()
    ts[k][1] = 3  # bits 4 -> 3 while the header says 4


QUANT_WRONG = {
    "packed_as_float32": _quant_packed_as_float,
    "scales_as_float16": _quant_scales_as_half,
    "qmeta_disagrees": _quant_qmeta_bits,
}


def _wrong_params(kind):
    out = []
    for name in WRONG:
        out.append(pytest.param(kind, name, id=f"{kind}-{name}"))
    return out


@pytest.mark.parametrize("kind,change", _wrong_params("subnet") + _wrong_params("quant"))
def test_wrong_tensors_are_value_errors(files, tmp_path, kind, change):
    path = _rewrite(files[kind], tmp_path / f"{change}.safetensors", WRONG[change])
    with pytest.raises(ValueError) as info:
        _load_kind(kind, path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("change", list(QUANT_WRONG))
def test_wrong_quant_buffers_are_value_errors(files, tmp_path, change):
    path = _rewrite(files["quant"], tmp_path / f"{change}.safetensors", QUANT_WRONG[change])
    with pytest.raises(ValueError) as info:
        _load_kind("quant", path)
    assert path.name in str(info.value)


class _Wider(TinyNet):
    """Another model: same module names, another hidden width."""

    width = 48

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(3 * 16 * 16, self.width)


class _Narrower(_Wider):
    # A subnet may be narrower than its skeleton (the original full model), never wider.
    width = 16


def test_subnet_from_another_model(files, tmp_path):
    # the skeleton is another architecture (narrower than the subnet's layers)
    with pytest.raises(ValueError, match="subnet.safetensors"):
        sk.load(files["subnet"], skeleton=_Narrower())
    with pytest.raises(ValueError, match="another model|does not match"):
        sk.load(files["subnet"], skeleton=torch.nn.Sequential(torch.nn.Linear(4, 4)))
    # the metadata of another subnet (other layer records) over these tensors
    with safe_open(str(files["subnet"]), framework="pt") as f:
        meta = f.metadata()
    doc = json.loads(meta["supernet_kernels"])
    name = next(iter(doc["layers"]))
    doc["layers"][name] = {**doc["layers"][name], "out_features": 10**6}
    p = tmp_path / "foreign_meta.safetensors"
    save_file(
        load_file(str(files["subnet"])), str(p), metadata={"supernet_kernels": json.dumps(doc)}
    )
    with pytest.raises(ValueError, match="foreign_meta.safetensors"):
        sk.load(p, skeleton=TinyNet())
    # another file kind's metadata: a quantized model or a checkpoint given to sk.load
    for other in ("quant", "checkpoint"):
        with pytest.raises(ValueError, match=files[other].name):
            sk.load(files[other], skeleton=TinyNet())


def test_quantized_from_another_model(files, tmp_path):
    with pytest.raises(ValueError, match="quant.safetensors"):
        sk.load_quantized(_Wider(), files["quant"])
    for other in ("subnet", "checkpoint"):
        with pytest.raises(ValueError, match=files[other].name):
            sk.load_quantized(TinyNet(), files[other])
    # header claims another bit width than the packed tensors hold
    with safe_open(str(files["quant"]), framework="pt") as f:
        meta = f.metadata()
    key = next(iter(meta))
    doc = json.loads(meta[key])
    name = next(iter(doc["layers"]))
    doc["layers"][name]["bits"] = 2
    p = tmp_path / "foreign_bits.safetensors"
    save_file(load_file(str(files["quant"])), str(p), metadata={key: json.dumps(doc)})
    with pytest.raises(ValueError, match="foreign_bits.safetensors"):
        sk.load_quantized(TinyNet(), p)


def test_checkpoint_from_another_kind_or_format(files, tmp_path):
    for other in ("subnet", "quant"):
        with pytest.raises(ValueError, match=files[other].name):
            load_checkpoint(files[other])
    with safe_open(str(files["checkpoint"]), framework="pt") as f:
        meta = f.metadata()
    doc = json.loads(meta["sk_train"])
    doc["format"] = "sk-train-checkpoint-v999"
    p = tmp_path / "future.safetensors"
    save_file(load_file(str(files["checkpoint"])), str(p), metadata={"sk_train": json.dumps(doc)})
    with pytest.raises(ValueError, match="future.safetensors"):
        load_checkpoint(p)


def test_checkpoint_header_naming_a_missing_tensor(files, tmp_path):
    p = tmp_path / "tensor_gone.safetensors"
    _rewrite(files["checkpoint"], p, lambda ts: ts.pop("/w"))
    with pytest.raises(ValueError, match="tensor_gone.safetensors"):
        load_checkpoint(p)


# ----------------------------------------------------------------------------- (c) static scan


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "<expr>"  # a call, subscript...: `f().eval()` is a method call, not builtins.eval


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


UNSAFE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "_pickle.load",
    "_pickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "joblib.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "pandas.read_pickle",
    "pd.read_pickle",
}


def unsafe_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every place in ``source`` that can run code while loading data."""
    found = []
    tree = ast.parse(source, filename)
    imported_from = {}  # local name -> "module.name" for `from pickle import load`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                imported_from[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        full = imported_from.get(name, name)
        where = f"{filename}:{node.lineno}: {ast.unparse(node)[:80]}"
        if full in ("eval", "exec", "builtins.eval", "builtins.exec") or full in UNSAFE_CALLS:
            found.append(where)
        elif full in ("torch.load",) or (name.endswith(".load") and name.split(".")[0] == "torch"):
            if not _is_true(_kw(node, "weights_only")):
                found.append(where)
        elif full in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "Safe" not in _dotted(loader):
                found.append(where)
        elif full in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
            found.append(where)
    return found


def test_scanner_finds_the_unsafe_forms():
    bad = """
import pickle, torch, yaml, numpy as np
from pickle import loads
pickle.load(f); loads(b); torch.load(p); torch.load(p, weights_only=False)
eval("1"); exec("x = 1"); yaml.load(s); yaml.load(s, Loader=yaml.Loader)
np.load(p, allow_pickle=True)
"""
    assert len(unsafe_uses(bad)) == 9
    good = """
import torch, yaml, numpy as np
torch.load(p, map_location="cpu", weights_only=True); model.eval(); m.eval()
yaml.safe_load(s); yaml.load(s, Loader=yaml.SafeLoader); np.load(p); json.loads(s)
"""
    assert unsafe_uses(good) == []


def test_package_source_never_unpickles_or_evals():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = []
    for f in files:
        found += unsafe_uses(f.read_text(), str(f.relative_to(PACKAGE.parent)))
    assert not found, "code-running loads in the package:\n" + "\n".join(found)


def test_no_pickle_imports_in_the_package():
    """grep: no module of the package imports pickle-like serializers at all."""
    banned = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib")
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            found += [f"{f.name}:{node.lineno}: {n}" for n in names if n in banned]
    assert not found, found


# ----------------------------------------------------------------------------- (d) metadata
# The header's document says what to build. Each field is checked against bounds and against
# the tensors in the file before anything is built: a 2 KB edit (a depth of 10**7) made load
# allocate until the machine ran out of memory.


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
        depth=3, num_heads=2, num_classes=5,
    ).eval()  # fmt: skip
    sn = sk.convert(model)
    sub = sn.extract(sn.min_config())
    return sk.save(sub, tmp_path_factory.mktemp("vit") / "vit.safetensors")


def _edit_doc(src: Path, dst: Path, change) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    doc = json.loads(meta["supernet_kernels"])
    change(doc)
    save_file(load_file(str(src)), str(dst), metadata={"supernet_kernels": json.dumps(doc)})
    return dst


def _set_kwarg(field, value):
    return lambda doc: doc["build"]["kwargs"].__setitem__(field, value)


def _first_layer(doc, t):
    return next(v for v in doc["layers"].values() if v["type"] == t)


METADATA_EDITS = {
    "depth_1e7": (_set_kwarg("depth", 10**7), "depth"),
    "depth_60": (_set_kwarg("depth", 60), "blocks"),
    "depth_plus_2": (_set_kwarg("depth", 5), "does not match"),
    "embed_dim_1e6": (_set_kwarg("embed_dim", 10**6), "embed_dim"),
    "img_size_inf": (_set_kwarg("img_size", float("inf")), "img_size"),
    "num_classes_negative": (_set_kwarg("num_classes", -(10**9)), "num_classes"),
    "kwargs_not_numbers": (_set_kwarg("depth", {"a": object.__name__}), "not a block count"),
    "rank_vs_tensors": (
        lambda doc: _first_layer(doc, "LowRankLinear").__setitem__("rank", 1),
        "recorded as LowRankLinear",
    ),
    "rank_huge": (
        lambda doc: _first_layer(doc, "LowRankLinear").__setitem__("rank", 10**9),
        "out of bounds",
    ),
    "layer_records_beyond_tensors": (
        lambda doc: doc["layers"].update(
            {
                f"x{i}": {"type": "Linear", "in_features": 1, "out_features": 1, "bias": False}
                for i in range(1000)
            }  # fmt: skip
        ),
        "layers records",
    ),
    "removed_repeated": (lambda doc: doc["removed"].extend(["blocks.1", "blocks.1"]), "repeated"),
}


@pytest.mark.parametrize("edit", list(METADATA_EDITS))
def test_bad_metadata_refused_before_building(vit_file, tmp_path, monkeypatch, edit):
    """Nothing is built for real before the checks pass (only the meta-device dry run), the
    error names the file and the field, and no build is ever asked for an absurd size."""
    from supernet_kernels.supernet import families

    real = families.rebuild
    calls = []

    def guarded(build, device=None):
        calls.append(device)
        if device != "meta":
            raise AssertionError("load built the model before checking the metadata")
        n = build["kwargs"].get("depth", 0)
        if not isinstance(n, int) or n > 1000 or build["kwargs"].get("embed_dim", 0) > 10**4:
            raise AssertionError(f"load asked for an absurd build: {build['kwargs']}")
        return real(build, device=device)

    monkeypatch.setattr(families, "rebuild", guarded)
    change, pattern = METADATA_EDITS[edit]
    p = _edit_doc(vit_file, tmp_path / f"{edit}.safetensors", change)
    with pytest.raises(ValueError, match=pattern) as info:
        sk.load(p)
    assert p.name in str(info.value)


def test_good_vit_file_loads_after_the_dry_run(vit_file, monkeypatch):
    from supernet_kernels.supernet import families

    real = families.rebuild
    calls = []
    monkeypatch.setattr(
        families, "rebuild", lambda b, device=None: calls.append(device) or real(b, device=device)
    )
    model = sk.load(vit_file)
    assert calls == ["meta", None]
    assert not any(t.is_meta for t in model.state_dict().values())
