"""The three paper scripts run their whole pipeline in smoke mode (tiny models, digits or
synthetic shapes, 1 CPU thread): convert, train, search, extract, evaluate, save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["flora_deit.py", "supersam_sam.py", "mplora_sam.py"])
def test_script_smoke(script, tmp_path):
    if script == "flora_deit.py":
        pytest.importorskip("sklearn")
    else:
        pytest.importorskip("segment_anything")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python")])}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "python" / script), "--smoke", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    search = json.loads((out / "search.json").read_text())
    assert search["history"], "the search evaluated no subnet"
    saved = [p for p in out.iterdir() if p.suffix == ".safetensors"]
    assert saved and saved[0].stat().st_size > 0
    if script != "mplora_sam.py":  # subnets without fake quantizers load back
        from supernet_kernels.supernet import load

        assert load(saved[0]) is not None
    else:  # fake activation quantizers: a state dict plus its config
        assert json.loads(Path(str(saved[0]) + ".json").read_text())["act_bits"]
    if script == "flora_deit.py":
        assert 0.2 < res["kept_fraction"] < 0.4  # the filter filters
        assert res["searched_top1"] > 0.2  # a 10-class task: above chance
    elif script == "mplora_sam.py":
        assert res["searched_bitops"] <= res["budget"]
    else:
        assert 0 <= res["searched_miou"] <= 1
