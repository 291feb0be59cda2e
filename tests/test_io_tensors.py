"""The one safetensors writer and reader (``_io.save_tensors`` / ``read_header`` /
``load_tensors``): round trip, shared storage, atomic replacement, clear errors."""

from __future__ import annotations

import pytest
import torch

from supernet_kernels._io import load_tensors, read_header, save_tensors, unshared


def test_round_trip_with_shared_storage_and_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g)
    tensors = {"w": w, "tied": w, "view": w[1:3], "t": w.t(), "empty": torch.empty(0, 3)}
    path = save_tensors(tmp_path / "a" / "x.safetensors", tensors, {"k": "v"})
    meta, shapes = read_header(path)
    assert meta == {"k": "v"}
    assert shapes == {k: tuple(t.shape) for k, t in tensors.items()}
    back = load_tensors(path)
    for k, t in tensors.items():
        assert torch.equal(back[k], t), k
    assert back["w"].data_ptr() != back["tied"].data_ptr()
    assert list(tmp_path.joinpath("a").iterdir()) == [path]  # no temporary file left


def test_unshared_keeps_the_first_and_copies_the_rest():
    w = torch.randn(4, 4)
    out = unshared({"a": w, "b": w})
    assert out["a"].untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    assert out["b"].untyped_storage().data_ptr() != w.untyped_storage().data_ptr()


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = save_tensors(tmp_path / "x.safetensors", {"w": torch.randn(3)})
    before = path.read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"w": torch.randn(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="where: no file"):
        load_tensors(tmp_path / "none.safetensors", "where")
    path = save_tensors(tmp_path / "x.safetensors", {"w": torch.randn(64)})
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-9])
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00" * 3 + b"not a header")
    for fn, bad in ((load_tensors, truncated), (load_tensors, garbage), (read_header, garbage)):
        with pytest.raises(
            ValueError, match=r"where: .*\.safetensors is not a readable .*truncated or corrupt"
        ):
            fn(bad, "where")
