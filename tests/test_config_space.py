"""The typed, versioned Space and Config, the one config hash, and files written before them:
hashes, trainer logs, an Optuna study and a subnet file made by the previous code (in
tests/data/legacy) keep loading and resolving."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import supernet_kernels as sk
from supernet_kernels.supernet.space import (
    Config,
    Space,
    config_hash,
    hash_matches,
    legacy_config_hashes,
    resolve_hash,
)

timm = pytest.importorskip("timm")

from helpers.models import tiny_timm_vit  # noqa: E402

LEGACY = Path(__file__).parent / "data" / "legacy"
pytestmark = pytest.mark.usefixtures("one_thread")


def make_vit():
    return tiny_timm_vit(
        img_size=16, patch_size=4, depth=3, embed_dim=32, num_heads=2, num_classes=10
    )


@pytest.fixture(scope="module")
def sn():
    return sk.convert(make_vit())


@pytest.fixture(scope="module")
def recorded():
    return json.loads((LEGACY / "config_hashes_v1.json").read_text())


# --------------------------------------------------------------------------- typed forms
def test_config_round_trip_and_plain_dicts(sn):
    cfg = sn.sample_config(3)
    typed = Config.from_dict(cfg)  # a plain dict: the shape written before versions
    assert typed.as_plain() == cfg
    d = typed.to_dict()
    assert d["version"] == Config.VERSION and Config.from_dict(d) == typed
    assert Config.from_dict(json.loads(json.dumps(d))).as_plain() == cfg
    sn.set_active(typed)  # the supernet takes the typed form as well
    assert sn.active_config() == cfg
    extra = Config.from_dict({**cfg, "act_bits": {"blocks.0.attn.qkv": 8}})
    assert extra.extra == {"act_bits": {"blocks.0.attn.qkv": 8}}
    assert extra.as_plain()["act_bits"] == {"blocks.0.attn.qkv": 8}


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"version": 99}, "version 99 is not supported"),
        ({"version": "1"}, "version '1' is not supported"),
        ({"depth": [1]}, "depth: expected a dict"),
        ({"act_bits": 3}, "'act_bits': expected a dict section"),
    ],
)
def test_from_dict_rejects(bad, msg):
    for cls in (Config, Space):
        with pytest.raises(ValueError, match=msg):
            cls.from_dict(bad)
    with pytest.raises(ValueError, match="expected a dict"):
        Config.from_dict([1])


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"mlp": {"blocks.0.mlp": []}}, r"mlp\.blocks\.0\.mlp: expected a non-empty list"),
        ({"resolution": 224}, "resolution: expected a non-empty list"),
        ({"linear": {"fc": {"rank": [None]}}}, r"linear\.fc: expected a dict of"),
        ({"act_bits": {"fc": 8}}, r"act_bits\.fc: expected a non-empty list"),
    ],
)
def test_space_from_dict_checks_choice_lists(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Space.from_dict(bad)


def test_space_owns_min_max_sample_validation(sn):
    spec = sn.space_spec()
    assert spec.as_plain() == sn.space
    assert Space.from_dict(spec.to_dict()) == spec
    assert spec.max_config() == sn.max_config() and spec.min_config() == sn.min_config()
    assert spec.sample_config(random.Random(5)) == sn.sample_config(random.Random(5))
    q = next(n for n in sn.space["linear"] if n.endswith("qkv"))
    with pytest.raises(ValueError, match=rf"linear\.{q}\.rank: 999 is not one of"):
        spec.validate({"linear": {q: {"rank": 999}}}, sn.active_config())
    # The unbound space validates choices but limits no rank.
    free = Space.from_dict(sn.space)
    assert free.validate({}, sn.max_config()) == sn.max_config()


def test_repair_is_the_spaces(sn):
    spec = sn.space_spec()
    proj = next(n for n in sn.space["linear"] if n.endswith("proj"))
    cfg = sn.max_config()
    cfg["linear"][proj].update(w_bits=16, a_bits=8)
    assert spec.repair(cfg)["linear"][proj]["a_bits"] == 16
    fc1 = next(n for n in sn.space["linear"] if n.endswith("fc1"))
    mlp = next(iter(sn.space["mlp"]))
    cfg = sn.max_config()
    cfg["mlp"][mlp] = sn.space["mlp"][mlp][0]
    fixed = spec.repair(cfg)
    assert fixed["linear"][fc1]["rank"] <= sn.space["mlp"][mlp][0]
    sn.validate_config(fixed)


def test_genes_are_the_search_spaces(sn):
    from supernet_kernels.search import SearchSpace

    ss = SearchSpace(sn)
    assert ss.all_dims == sn.space_spec().genes()
    assert ss.decode(ss.encode(sn.max_config())) == sn.max_config()


# --------------------------------------------------------------------------- one hash
def test_config_hash_is_sha256_of_canonical_json(sn):
    cfg = sn.max_config()
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    assert config_hash(cfg) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert config_hash(Config.from_dict(cfg)) == config_hash(cfg)
    import supernet_kernels.search
    import supernet_kernels.train

    assert supernet_kernels.train.config_hash is config_hash
    assert supernet_kernels.search.config_hash is config_hash
    other = sn.min_config()
    assert config_hash(other) != config_hash(cfg)


def test_legacy_hashes_match_what_the_previous_code_wrote(recorded):
    for which in ("min", "max"):
        cfg = recorded[f"config_{which}"]
        old = legacy_config_hashes(cfg)
        assert old["sha1-16"] == recorded["search_config_hash"][which]
        assert old["sha256-12"] == recorded["train_config_hash"][which]
        assert hash_matches(recorded["search_config_hash"][which], cfg)
        assert hash_matches(recorded["train_config_hash"][which], cfg)
        assert hash_matches(config_hash(cfg), cfg)
    assert not hash_matches(recorded["train_config_hash"]["min"], recorded["config_max"])
    assert legacy_config_hashes(recorded["space"])["sha1-16"] == recorded["space_fingerprint"]


def test_the_current_space_is_the_recorded_one(sn, recorded):
    """The recorded values are of this test's supernet (so the study below is of it too)."""
    assert sn.space == recorded["space"]
    assert sn.max_config() == recorded["config_max"]


def test_legacy_trainer_log_resolves():
    configs = [
        json.loads(x)
        for x in (LEGACY / "train_v1.configs.jsonl").read_text().splitlines()
        if x.strip()
    ]
    records = [json.loads(x) for x in (LEGACY / "train_v1.jsonl").read_text().splitlines()]
    full = [c["config"] for c in configs]
    for rec in records:
        for h in rec["configs"]:
            assert len(h) == 12
            got = resolve_hash(h, full)
            assert got is not None and legacy_config_hashes(got)["sha256-12"] == h
    assert resolve_hash("0" * 16, full) is None


def test_legacy_optuna_study_resumes(tmp_path, sn):
    """A study written by the previous code (space fingerprint and trial hashes in SHA-1):
    the same search resumes it, its trials' metrics reused (not run again)."""
    optuna = pytest.importorskip("optuna")
    from supernet_kernels.search import fidelity_evaluator, search

    db = tmp_path / "study.db"
    with gzip.open(LEGACY / "optuna_study_v1.db.gz", "rb") as src, open(db, "wb") as dst:
        shutil.copyfileobj(src, dst)
    old = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}").trials
    assert len(old) == 3
    legacy = {t.user_attrs["sk_config_hash"] for t in old}
    assert all(legacy_config_hashes(t.user_attrs["sk_config"])["sha1-16"] in legacy for t in old)

    g = torch.Generator().manual_seed(1)
    ev = fidelity_evaluator(sn, torch.randn(4, 3, 16, 16, generator=g), metric="neg_mse")
    calls = []
    res = search(
        sn,
        lambda m: calls.append(1) or ev(m),
        (1, 3, 16, 16),
        algorithm="tpe",
        n_trials=5,
        budget=None,
        progress=False,
        storage=db,
        seed=0,
    )
    assert [r["trial"] for r in res.history] == list(range(5))
    assert len(calls) <= 2  # the three old trials were not evaluated again
    for r, t in zip(res.history[:3], old, strict=True):
        assert r["metric"] == pytest.approx(t.user_attrs["sk_metric"])
        assert r["config_hash"] == config_hash(t.user_attrs["sk_config"])


def test_legacy_trainer_checkpoint_resumes(tmp_path):
    """A checkpoint and logs written by the previous code (12-digit hashes) after 2 of 4 steps:
    the run resumes exactly (the same losses as a run straight through), the old records stay,
    the new ones carry today's hashes, and every logged hash resolves to its config."""
    from helpers.train import class_data, make_mini_supernet

    from supernet_kernels.train import ClassificationTask, TrainConfig, Trainer

    run = tmp_path / "run"
    shutil.copytree(LEGACY / "trainer_v1", run)
    data = class_data(16, size=4)

    def config(**kw):
        return TrainConfig(steps=4, lr=1e-3, batch_size=8, progress=False, **kw)

    straight = Trainer(make_mini_supernet(), ClassificationTask(), data, config(), device="cpu")
    want = straight.train()
    c = config(
        checkpoint_dir=str(run / "ck"), checkpoint_every=2, log_file=str(run / "train.jsonl")
    )
    got = Trainer(make_mini_supernet(), ClassificationTask(), data, c, device="cpu").train(
        resume=True
    )
    assert [r["step"] for r in got] == [2, 3]
    assert [r["loss"] for r in got] == [r["loss"] for r in want[2:]]
    lines = [json.loads(x) for x in (run / "train.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3]
    assert [len(h) for x in lines for h in x["configs"]] == [12] * 6 + [16] * 6
    full = [
        json.loads(x)["config"]
        for x in (run / "train.configs.jsonl").read_text().splitlines()
        if x.strip()
    ]
    for x, rec in zip(lines, want, strict=True):
        assert [resolve_hash(h, full) for h in x["configs"]] == [
            resolve_hash(h, full) for h in rec["configs"]
        ]
        assert all(resolve_hash(h, full) is not None for h in x["configs"])


# --------------------------------------------------------------------------- subnet files
def test_legacy_subnet_file_loads(tmp_path):
    """An sk-subnet-v1 file (QuantLinear, LowRankLinear and Linear records) written by the
    previous code loads, computes what it computed then, and is written back with the same
    records."""
    from supernet_kernels._io import read_header

    sub = sk.load(LEGACY / "subnet_v1.safetensors")
    kinds = {type(m).__name__ for m in sub.modules()}
    assert {"QuantLinear", "LowRankLinear", "Linear"} <= kinds
    io = load_file(LEGACY / "subnet_v1_io.safetensors")
    with torch.no_grad():
        y = sub(io["x"])
    torch.testing.assert_close(y, io["y"], rtol=1e-5, atol=1e-6)
    again = sk.save(sub, tmp_path / "again.safetensors")
    old = json.loads(read_header(LEGACY / "subnet_v1.safetensors")[0]["supernet_kernels"])
    new = json.loads(read_header(again)[0]["supernet_kernels"])
    assert new == old
