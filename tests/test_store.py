"""Whole supernets saved and loaded through the library (``sk.save(supernet, folder)`` /
``sk.load(folder)``): exact round trips, folders written by earlier command lines, atomic
writes, clear refusals."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers.numerics import rel_norm as rel
from safetensors.torch import load_file

import supernet_kernels as sk
from supernet_kernels import cli
from supernet_kernels.supernet import store

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

from helpers.models import tiny_sam_encoder, tiny_timm_vit  # noqa: E402

DATA = __import__("pathlib").Path(__file__).parent / "data" / "cli_supernet_v1"


def _vit():
    return tiny_timm_vit(
        img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2, num_classes=5
    )


@pytest.fixture(scope="module")
def vit_sn():
    return sk.convert(_vit())


@pytest.mark.parametrize("family", ["timm_vit", "sam"])
def test_round_trip_is_exact(tmp_path, family, vit_sn):
    if family == "sam":
        pytest.importorskip("segment_anything")
        sn = sk.convert(tiny_sam_encoder(depth=3), {"depth": {"blocks.2": [False, True]}})
        make = lambda r: torch.randn(1, 3, 64, 64)  # noqa: E731
    else:
        sn = vit_sn
        make = lambda r: torch.randn(2, 3, r, r)  # noqa: E731
    with torch.no_grad():  # trained weights differ from the ones convert would derive
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    path = sk.save(sn, tmp_path / "sn")
    assert path == tmp_path / "sn" / "supernet.json"
    assert sorted(f.name for f in (tmp_path / "sn").iterdir()) == [
        "supernet.json",
        "supernet.safetensors",
    ]
    sn.set_active(sn.min_config())  # the file records the space, not the active config
    back = sk.load(tmp_path / "sn")
    assert isinstance(back, sk.Supernet) and back.active_config() == back.max_config()
    assert back.space == sn.space and back.family == sn.family
    rng = random.Random(0)
    for cfg in [sn.max_config(), sn.min_config(), sn.sample_config(rng)]:
        sn.set_active(cfg)
        back.set_active(cfg)
        torch.manual_seed(1)
        x = make(cfg["resolution"])
        with torch.no_grad():
            assert rel(back(x), sn(x)) == 0.0
    sn.set_active(sn.max_config())
    # loading the supernet.json itself works the same
    assert isinstance(sk.load(path), sk.Supernet)


def test_folders_written_by_the_earlier_cli_load():
    """tests/data/cli_supernet_v1 was written by `supernet-kernels convert` before the format
    moved into the library; its outputs at the max and min configs were recorded then."""
    want = load_file(str(DATA / "expected.safetensors"))
    for loader in (lambda: sk.load(DATA), lambda: cli.load_supernet(DATA)[0]):
        sn = loader()
        with torch.no_grad():
            assert torch.equal(sn(want["x"]), want["y"])
            sn.set_active(sn.min_config())
            assert torch.equal(sn(want["x_min"]), want["y_min"])


def test_cli_and_library_share_the_format(tmp_path, vit_sn):
    assert cli.SUPERNET_FORMAT == store.SUPERNET_FORMAT
    sk.save(vit_sn, tmp_path / "a")
    sn, doc, _ = cli.load_supernet(tmp_path / "a")
    assert doc["format"] == cli.SUPERNET_FORMAT and sn.space == vit_sn.space


def test_interrupted_save_leaves_the_old_folder(tmp_path, vit_sn, monkeypatch):
    sk.save(vit_sn, tmp_path / "sn")
    before = {f.name: f.read_bytes() for f in (tmp_path / "sn").iterdir()}
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        sk.save(vit_sn, tmp_path / "sn")
    after = {f.name: f.read_bytes() for f in (tmp_path / "sn").iterdir()}
    assert after == before  # no temporary files left, nothing replaced


def test_weights_from_another_save_are_refused(tmp_path, vit_sn):
    sk.save(vit_sn, tmp_path / "a")
    sk.save(vit_sn, tmp_path / "b")
    (tmp_path / "a" / "supernet.safetensors").write_bytes(
        (tmp_path / "b" / "supernet.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="interrupted save or files mixed"):
        sk.load(tmp_path / "a")


def _edit(folder, change):
    p = folder / "supernet.json"
    doc = json.loads(p.read_text())
    change(doc)
    p.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(format="other"), "not a supernet file"),
        (lambda d: d.update(build=None), "records no architecture"),
        (lambda d: d["build"]["kwargs"].update(depth=10**7), "out of bounds"),
        (lambda d: d["build"]["kwargs"].update(embed_dim=512), "far more than"),
        (lambda d: d["build"]["kwargs"].update(depth=4), "does not fit"),
        (lambda d: d.update(state="../x.safetensors"), "file name in the folder"),
        (lambda d: d["space"]["mlp"].update({"blocks.0.mlp": [8, 128]}), "differs|convert"),
    ],
)
def test_bad_documents_are_clear_errors(tmp_path, vit_sn, change, match):
    sk.save(vit_sn, tmp_path / "sn")
    _edit(tmp_path / "sn", change)
    with pytest.raises(ValueError, match=match) as info:
        sk.load(tmp_path / "sn")
    assert "supernet" in str(info.value)


def test_save_refuses_what_it_cannot_rebuild(tmp_path):
    gen = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    sn = sk.convert(gen)
    with pytest.raises(ValueError, match="records no architecture"):
        sk.save(sn, tmp_path / "g")
    assert not (tmp_path / "g").exists()
    with pytest.raises(FileNotFoundError):
        sk.load(tmp_path / "missing")


def test_the_store_knows_every_recipe_without_importing_recipes():
    """The store reads the recipe table that recipes fill when the package loads (the store,
    below recipes, imports none of them)."""
    from supernet_kernels.recipes import RECIPES

    assert set(store._RECIPES) == set(RECIPES)
    for name, recipe in RECIPES.items():
        assert store._RECIPES[name].supernet is recipe.supernet
        assert store._RECIPES[name].records == recipe.records
    with pytest.raises(ValueError, match="register_recipe: name must be a non-empty str"):
        store.register_recipe("")
