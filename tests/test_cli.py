"""The ``supernet-kernels`` command line: help, exit codes, config files, and an end-to-end
convert -> train -> search -> export -> load round trip on a tiny timm ViT (CPU, synthetic
data in tmp_path)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import supernet_kernels as sk
from supernet_kernels import cli
from supernet_kernels.config_files import (
    ConfigError,
    apply_overrides,
    deep_merge,
    load_config,
    load_with_overrides,
    parse_override,
)

COMMANDS = ["info", "convert", "train", "search", "export", "bench", "quickstart"]
TINY = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 3,
    "num_heads": 2,
    "num_classes": 4,
}


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- help
def _options(name: str) -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    opts = []
    for a in sub.choices[name]._actions:
        opts += [o for o in a.option_strings if o.startswith("--")]
    return opts


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_of_every_subcommand(capsys, cmd):
    code, out, _ = run(capsys, cmd, "--help")
    assert code == 0
    for opt in _options(cmd):
        assert opt in out, f"{cmd} --help does not mention {opt}"
    if cmd != "info":
        for c in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
            assert c in out.split("exit codes:")[1]


def test_top_level_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for cmd in COMMANDS:
        assert cmd in out
    assert "exit codes" in out and "infeasible budget" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and sk.__version__ in out
    code, out, err = run(capsys)
    assert code == 2


def test_info_unchanged(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert out.strip() == cli.info_text().strip()


# --------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    "argv",
    [
        ["nosuchcommand"],
        ["convert"],  # missing MODEL
        ["train", "sn.json"],  # missing --data
        ["train", "sn.json", "--data", "d", "--steps", "abc"],
        ["train", "sn.json", "--data", "d", "--steps", "0"],
        ["train", "sn.json", "--data", "d", "--bogus"],
        ["search", "sn.json", "--data", "d", "--algorithm", "annealing"],
        ["search", "sn.json", "--data", "d", "--objective", "watts"],
        ["export", "sn.json", "--preset", "medium"],
        ["bench", "--batch-sizes", "1,x"],
        ["quickstart", "--threads", "-1"],
        ["train", "sn.json", "--data", "d", "--set", "nosuchoption=1"],
        ["train", "sn.json", "--data", "d", "--set", "novalue"],
        ["train", "sn.json", "--data", "d", "--set", "steps=many"],
        ["convert", "not_a_timm_model_name_xyz"],
    ],
)
def test_bad_arguments_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "error" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- missing files
def test_missing_files_exit_3(capsys, tmp_path):
    missing = tmp_path / "nope" / "supernet.json"
    for argv in (
        ["train", missing, "--data", tmp_path],
        ["search", missing, "--data", tmp_path],
        ["export", missing, "--preset", "max"],
        ["convert", tmp_path / "model.pth", "--arch", "vit_tiny_patch16_224"],
        ["convert", tmp_path / "sam.pth", "--sam", "vit_b"],
        ["bench", tmp_path / "subnet.safetensors"],
        ["quickstart", "--config", tmp_path / "qs.yaml"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 3, (argv, err)
        assert str(argv[1] if argv[0] != "quickstart" else argv[2]) in err, err
        assert "Traceback" not in err


def test_invalid_input_files_exit_3(capsys, tmp_path):
    bad = tmp_path / "sn.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "export", bad, "--preset", "max")
    assert code == 3 and str(bad) in err
    bad.write_text(json.dumps({"format": "something-else"}))
    code, _, err = run(capsys, "export", bad, "--preset", "max")
    assert code == 3 and "not a supernet file" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: [1, 2\n")
    code, _, err = run(capsys, "quickstart", "--config", cfg)
    assert code == 3 and str(cfg) in err
    cfg.write_text("unknown_option: 3\n")
    code, _, err = run(capsys, "quickstart", "--config", cfg)
    assert code == 3 and "unknown_option" in err
    cfg.write_text("seed: not-a-number\n")
    code, _, err = run(capsys, "quickstart", "--config", cfg)
    assert code == 3 and "seed" in err


def test_debug_shows_traceback(capsys, tmp_path):
    code, _, err = run(capsys, "export", tmp_path / "x.json", "--preset", "max", "--debug")
    assert code == 3 and "Traceback" in err


# --------------------------------------------------------------------------- config files
def test_config_files_yaml_json_and_overrides(tmp_path):
    y = tmp_path / "a.yaml"
    y.write_text("steps: 10\nlr: 5.0e-4\ntrainer:\n  warmup_steps: 2\nnames: [a, b]\n")
    j = tmp_path / "a.json"
    j.write_text(
        json.dumps({"steps": 10, "lr": 5e-4, "trainer": {"warmup_steps": 2}, "names": ["a", "b"]})
    )
    assert load_config(y) == load_config(j)
    cfg = load_with_overrides(
        y,
        [
            "steps=3",
            "trainer.weight_decay=0.1",
            "trainer.warmup_steps=null",
            "names.1=c",
            "new.deep.key=true",
            "text='123'",
            "lst=[1, 2]",
        ],
    )
    assert cfg["steps"] == 3 and cfg["lr"] == 5e-4
    assert cfg["trainer"] == {"warmup_steps": None, "weight_decay": 0.1}
    assert cfg["names"] == ["a", "c"]
    assert cfg["new"] == {"deep": {"key": True}}
    assert cfg["text"] == "123" and cfg["lst"] == [1, 2]
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("x=hello world") == (["x"], "hello world")
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    for bad in ("novalue", "=3", "a..b=1", "names.5=x"):
        with pytest.raises(ConfigError):
            apply_overrides({"names": ["a"]}, [bad])
    with pytest.raises(ConfigError):
        apply_overrides({"steps": 3}, ["steps.x=1"])
    e = tmp_path / "e.yml"
    e.write_text("")
    assert load_config(e) == {}
    e.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(e)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_config_precedence(tmp_path, monkeypatch):
    """default < --config file < command-line option < --set."""
    seen = {}

    def fake(args):
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(cli.train, "run", fake)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        "steps: 7\nlr: 0.01\nbatch-size: 8\ndata: somewhere\ntrainer: {warmup_steps: 3}\n"
    )
    assert (
        cli.main(
            [
                "train",
                "sn.json",
                "--config",
                str(cfg),
                "--lr",
                "0.5",
                "--set",
                "batch_size=4",
                "--set",
                "trainer.min_lr=1e-5",
            ]
        )
        == 0
    )
    assert seen["steps"] == 7 and seen["lr"] == 0.5 and seen["batch_size"] == 4
    assert seen["data"] == "somewhere"
    assert seen["trainer"] == {"warmup_steps": 3, "min_lr": 1e-5}
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"steps": 9, "data": "d", "resume": True}))
    seen.clear()
    assert cli.main(["train", "sn.json", "--config", str(j), "--set", "steps=2"]) == 0
    assert seen["steps"] == 2 and seen["resume"] is True and seen["lr"] == 1e-4


# --------------------------------------------------------------------------- end to end
def _write_image_folder(root, n=48, classes=4, seed=0):
    from PIL import Image

    g = np.random.default_rng(seed)
    protos = g.uniform(0, 255, size=(classes, 16, 16, 3))
    for i in range(n):
        c = i % classes
        img = np.clip(protos[c] + g.normal(0, 30, size=(16, 16, 3)), 0, 255).astype("uint8")
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def _write_npz(path, n=32, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 3, 16, 16, generator=torch.Generator().manual_seed(99))
    labels = torch.arange(n) % classes
    images = protos[labels] + 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    np.savez(path, images=images.numpy(), labels=labels.numpy())
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    code = cli.main(
        [
            "convert",
            "vit_tiny_patch16_224",
            "--model-kwargs",
            json.dumps(TINY),
            "--out",
            str(root / "sn"),
            "--no-progress",
        ]
    )
    assert code == 0
    return root


@pytest.mark.slow
def test_end_to_end_round_trip(converted, capsys):
    root = converted
    sn_json = root / "sn" / "supernet.json"
    doc = json.loads(sn_json.read_text())
    assert doc["format"] == cli.SUPERNET_FORMAT and doc["family"] == "timm_vit"
    assert (root / "sn" / "supernet.safetensors").is_file()
    folder = _write_image_folder(root / "images")
    val = _write_npz(root / "val.npz")

    # train: a YAML config, a --set override of its steps
    cfg = root / "train.yaml"
    cfg.write_text(
        f"steps: 50\nbatch_size: 8\nlr: 1.0e-3\ndata: {folder}\n"
        f"eval_data: {val}\ntrainer:\n  warmup_steps: 1\n"
    )
    code, out, err = run(
        capsys,
        "train",
        sn_json,
        "--config",
        cfg,
        "--set",
        "steps=2",
        "--out",
        root / "trained",
        "--no-progress",
    )
    assert code == 0, err
    log = (root / "trained" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2  # --set beat the file's 50 steps
    assert "eval top1" in out
    trained = root / "trained" / "supernet.json"
    assert json.loads(trained.read_text())["trained"]["steps"] == 2
    # resume at the end: nothing left to do
    code, out, err = run(
        capsys,
        "train",
        sn_json,
        "--config",
        cfg,
        "--set",
        "steps=2",
        "--out",
        root / "trained",
        "--resume",
        "--no-progress",
    )
    assert code == 0, err
    assert "nothing to do" in out

    # search: few trials; then an infeasible budget exits 4
    code, out, err = run(
        capsys,
        "search",
        trained,
        "--data",
        val,
        "--budget",
        "bitops <= 0.6 * dense",
        "--population",
        "4",
        "--generations",
        "2",
        "--out",
        root / "search",
        "--no-progress",
    )
    assert code == 0, err
    for f in ("front.json", "front.csv", "history.csv", "front.png", "best_config.json"):
        assert (root / "search" / f).is_file(), f
    front = json.loads((root / "search" / "front.json").read_text())
    assert (
        front["best"]["bitops"] <= 0.6 * front["info"].get("dense_bitops", float("inf"))
        or (front["best"]["feasible"])
    )
    code, _, err = run(
        capsys,
        "search",
        trained,
        "--data",
        val,
        "--budget",
        "bitops <= 0.0001 * dense",
        "--out",
        root / "s2",
        "--no-progress",
    )
    assert code == 4, err
    assert "budget" in err

    # export the best front member and the best config file; load both back
    code, out, err = run(
        capsys,
        "export",
        trained,
        "--front",
        root / "search" / "front.json",
        "--out",
        root / "best.safetensors",
        "--json",
        root / "best.json",
    )
    assert code == 0, err
    assert "verified" in out
    code, _, err = run(
        capsys,
        "export",
        trained,
        "--subnet-config",
        root / "search" / "best_config.json",
        "--out",
        root / "best2.safetensors",
    )
    assert code == 0, err
    code, _, err = run(
        capsys,
        "export",
        trained,
        "--front",
        root / "search" / "front.json",
        "--member",
        "99",
        "--out",
        root / "x.safetensors",
    )
    assert code == 2 and "--member" in err
    a, b = sk.load(root / "best.safetensors"), sk.load(root / "best2.safetensors")
    res = a.sk_subnet["resolution"]  # the search may pick 12 or 16
    assert res in (12, 16)
    x = torch.randn(3, 3, res, res)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    assert a.sk_subnet["config"] == front["best"]["config"]
    from supernet_kernels.cost import profile

    costs = json.loads((root / "best.json").read_text())
    prof = profile(a, (1, 3, res, res))
    assert costs["bitops"] == prof.total_bitops and costs["params"] == prof.total_params
    assert costs["bitops"] == pytest.approx(front["best"]["bitops"])

    # the same subnet again from the supernet's Python side
    sn, _, _ = cli.load_supernet(trained)
    ref = sn.extract(front["best"]["config"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(x), a(x), rtol=1e-5, atol=1e-5)

    # bench: the built-in timing of the exported subnet
    code, out, err = run(
        capsys,
        "bench",
        root / "best.safetensors",
        "--batch-sizes",
        "1,2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--json",
        root / "bench.json",
        "--no-progress",
    )
    assert code == 0, err
    rows = json.loads((root / "bench.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2] and all(r["median_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_convert_recipes_and_checkpoint(converted, capsys, tmp_path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    ckpt = tmp_path / "model.pth"
    torch.save(model.state_dict(), ckpt)
    code, _, err = run(
        capsys,
        "convert",
        ckpt,
        "--arch",
        "vit_tiny_patch16_224",
        "--model-kwargs",
        json.dumps(TINY),
        "--recipe",
        "flora",
        "--out",
        tmp_path / "f",
    )
    assert code == 0, err
    sn, doc, _ = cli.load_supernet(tmp_path / "f")
    assert doc["recipe"] == "flora"
    assert all(v == [True] for v in sn.space["depth"].values())
    # the converted weights are the checkpoint's: full rank reproduces the model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(sn(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    # a checkpoint without --arch is a usage error; a wrong architecture an input error
    code, _, err = run(capsys, "convert", ckpt, "--out", tmp_path / "g")
    assert code == 2 and "--arch" in err
    code, _, err = run(
        capsys, "convert", ckpt, "--arch", "vit_tiny_patch16_224", "--out", tmp_path / "g"
    )
    assert code == 3 and str(ckpt) in err
    # space overrides through --set
    code, _, err = run(
        capsys,
        "convert",
        "vit_tiny_patch16_224",
        "--model-kwargs",
        json.dumps(TINY),
        "--set",
        "space.resolution=null",
        "--set",
        "model_kwargs.depth=2",
        "--out",
        tmp_path / "h",
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "h" / "supernet.json").read_text())
    assert doc["space"]["resolution"] == [16]
    assert len(doc["space"]["depth"]) == 2


def test_bench_repo_suites(capsys):
    code, out, err = run(capsys, "bench", "--list")
    if cli._repo_benchmarks() is None:
        assert code == 2
    else:
        assert code == 0 and "lowrank" in out
        code, _, err = run(capsys, "bench", "--suite", "nosuch")
        assert code == 2 and "nosuch" in err


def test_runtime_failure_and_interrupt_codes(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("something broke")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.quickstart, "run", boom)
    code, _, err = run(capsys, "quickstart")
    assert code == 1 and "something broke" in err and "Traceback" not in err
    monkeypatch.setattr(cli.quickstart, "run", interrupted)
    code, _, err = run(capsys, "quickstart")
    assert code == 130 and "interrupted" in err


def test_train_mplora_with_fewer_steps_than_stages(converted, capsys):
    """mplora's three bit-width stages over two steps: stages that would start on the same step
    are skipped (the recipe's documented rule), so the run completes instead of crashing."""
    root = converted
    data = _write_npz(root / "train.npz")
    code, _, err = run(
        capsys,
        "train",
        root / "sn",
        "--data",
        data,
        "--recipe",
        "mplora",
        "--steps",
        "2",
        "--out",
        root / "t2",
    )
    assert code == 0, err
    assert (root / "t2" / "train_log.jsonl").exists()
