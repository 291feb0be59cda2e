"""Fault injection: training and search processes SIGKILLed at chosen or random points, then
resumed in a new process.

Training (tiny generic supernet, CPU, ``tests/_fault_worker.py train``): nothing is lost
beyond the last checkpoint; the resumed run's final weights and every step's losses and lr are
bit-identical to an uninterrupted run with the same seed; a half-written temporary file left
by a kill inside a checkpoint write is ignored, and a truncated checkpoint is refused.

Search (``tests/_fault_worker.py search``, Optuna TPE on SQLite): a worker killed in the middle
of an evaluation, resumed by a new process, completes the study with the planned number of
trials, each trial number once, and no config evaluated to completion twice.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from supernet_kernels.train.checkpoint import checkpoint_path, load_checkpoint

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines: minutes on 2 cores

sys.path.insert(0, os.path.dirname(__file__))

WORKER = Path(__file__).with_name("_fault_worker.py")
ROOT = WORKER.parent.parent
STEPS = 6
TIMEOUT = 120


def _env(**extra) -> dict:
    # ROOT first, then whatever PYTHONPATH already held (packages installed beside the tree).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    for k in ("SK_FAULT_KILL_AT_STEP", "SK_FAULT_KILL_IN_SAVE", "SK_FAULT_KILL_AT_TRIAL"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _spawn(args, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        env=_env(**env),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _run(args, expect_rc=0, **env) -> str:
    p = _spawn(args, **env)
    out, _ = p.communicate(timeout=TIMEOUT)
    text = out.decode(errors="replace")
    assert p.returncode == expect_rc, f"rc {p.returncode} (want {expect_rc}):\n{text[-3000:]}"
    return text


def _train(out: Path, every: int, resume: bool, expect_rc=0, **env) -> str:
    out.mkdir(parents=True, exist_ok=True)
    return _run(["train", out, STEPS, every, int(resume)], expect_rc, **env)


def _records(out: Path) -> list[dict]:
    path = out / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _by_step(recs: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in recs:
        out.setdefault(r["step"], []).append(r)
    return out


def _ck_step(out: Path) -> int:
    """The step of the checkpoint on disk (0 where there is none)."""
    p = checkpoint_path(out / "ck")
    return load_checkpoint(p)["step"] if p.is_file() else 0


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """An uninterrupted run: final weights and per-step records."""
    out = tmp_path_factory.mktemp("baseline")
    _train(out, every=1, resume=False)
    recs = _records(out)
    assert [r["step"] for r in recs] == list(range(STEPS))
    return {"weights": load_file(str(out / "final.safetensors")), "records": recs}


def _assert_same_as_baseline(out: Path, baseline: dict, ck_step: int) -> None:
    recs = _by_step(_records(out))
    assert sorted(recs) == list(range(STEPS)), sorted(recs)
    for s, base in enumerate(baseline["records"]):
        for r in recs[s]:  # steps re-run after the kill give the same numbers again
            assert r["loss"] == base["loss"] and r["lr"] == base["lr"], (s, r, base)
    # only the steps after the checkpoint were run twice: nothing before it was lost
    assert all(len(recs[s]) == 1 for s in range(ck_step)), recs
    final = load_file(str(out / "final.safetensors"))
    assert final.keys() == baseline["weights"].keys()
    for k, v in baseline["weights"].items():
        assert torch.equal(final[k], v), f"{k} differs from the uninterrupted run"


def _tmp_files(out: Path) -> list[Path]:
    return sorted((out / "ck").glob(".*.tmp"))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("every,kill_step", [(1, 3), (2, 3)])
def test_killed_at_a_step_resumes_bit_identically(tmp_path, baseline, every, kill_step):
    _train(tmp_path, every, False, expect_rc=-signal.SIGKILL, SK_FAULT_KILL_AT_STEP=kill_step)
    ck = _ck_step(tmp_path)
    assert ck == (kill_step // every) * every, "the last checkpoint before the kill is on disk"
    assert [r["step"] for r in _records(tmp_path)] == list(range(kill_step))
    _train(tmp_path, every, True)
    _assert_same_as_baseline(tmp_path, baseline, ck)


def test_killed_after_a_random_delay_resumes_bit_identically(tmp_path, baseline):
    rng = random.Random(1234)  # fixed: the same delays in every run of the suite
    p = _spawn(["train", tmp_path, STEPS, 1, 0])
    # the worker spends ~1-3 s importing, then trains; kill somewhere in between or during
    time.sleep(rng.uniform(2.0, 4.0))
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=TIMEOUT)
    ck = _ck_step(tmp_path)
    done = len(_records(tmp_path))
    assert ck <= done  # a checkpoint is written after its step's record
    assert not (tmp_path / "ck").exists() or all(
        not f.name.endswith(".safetensors") or f.name == "checkpoint.safetensors"
        for f in (tmp_path / "ck").iterdir()
    )
    _train(tmp_path, 1, True)
    _assert_same_as_baseline(tmp_path, baseline, ck)


def test_kill_inside_a_checkpoint_write_leaves_the_previous_one(tmp_path, baseline):
    # every=1: saves after steps 0 and 1 complete; the 3rd (after step 2) dies half-written
    _train(tmp_path, 1, False, expect_rc=-signal.SIGKILL, SK_FAULT_KILL_IN_SAVE=3)
    tmps = _tmp_files(tmp_path)
    assert len(tmps) == 1, "the half-written temporary file is left next to the checkpoint"
    assert load_checkpoint(tmp_path / "ck")["step"] == 2  # the previous one, whole
    with pytest.raises(ValueError, match=tmps[0].name):
        load_checkpoint(tmps[0])  # and the half-written file itself is refused
    _train(tmp_path, 1, True)
    _assert_same_as_baseline(tmp_path, baseline, 2)


def test_truncated_checkpoint_is_refused(tmp_path, baseline):
    from helpers.train import class_data, make_generic_supernet

    from supernet_kernels.train import ClassificationTask, TrainConfig, Trainer

    _train(tmp_path, 1, False, expect_rc=-signal.SIGKILL, SK_FAULT_KILL_AT_STEP=2)
    ck = checkpoint_path(tmp_path / "ck")
    raw = ck.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 1, 100, 7):
        ck.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="checkpoint.safetensors"):
            load_checkpoint(ck)
        cfg = TrainConfig(
            steps=STEPS, lr=1e-3, batch_size=8, progress=False, checkpoint_dir=str(ck.parent)
        )
        tr = Trainer(make_generic_supernet(), ClassificationTask(), class_data(32), cfg)
        with pytest.raises(ValueError, match="checkpoint.safetensors"):
            tr.train(resume=True)
        assert tr.step == 0
    # a resume in a new process refuses it too (and writes no final weights)
    ck.write_bytes(raw[: len(raw) // 2])
    text = _train(tmp_path, 1, True, expect_rc=1)
    assert "ValueError" in text and not (tmp_path / "final.safetensors").exists()


# ----------------------------------------------------------------------------- search


def _search(db: Path, n: int, log: Path, expect_rc=0, **env) -> str:
    return _run(["search", db, n, log], expect_rc, **env)


def test_killed_search_resumes_to_the_planned_trials(tmp_path):
    optuna = pytest.importorskip("optuna")
    db, log, n = tmp_path / "study.db", tmp_path / "evals.log", 8
    _search(db, n, log, expect_rc=-signal.SIGKILL, SK_FAULT_KILL_AT_TRIAL=4)
    study = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}")
    before = study.get_trials()
    assert 4 <= len(before) < n and before[-1].state.name == "RUNNING"  # killed mid-trial
    _search(db, n, log)
    study = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}")
    trials = [t for t in study.get_trials() if not t.user_attrs.get("sk_excess")]
    assert sorted(t.number for t in trials) == list(range(n))  # the planned total, each once
    assert all(t.state.name == "COMPLETE" for t in trials if t.number >= len(before))
    lines = [x.split() for x in log.read_text().splitlines()]
    done = [h for kind, h in lines if kind == "done"]
    assert len(done) == len(set(done)), f"a config was evaluated twice: {done}"
    ok = [t for t in trials if t.user_attrs.get("sk_status") == "ok"]
    assert {t.user_attrs["sk_config_hash"] for t in ok} <= set(done)
    # a third run finds the study complete: nothing is evaluated
    n_lines = len(lines)
    _search(db, n, log)
    assert len(log.read_text().splitlines()) == n_lines
