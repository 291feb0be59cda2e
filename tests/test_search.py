"""Subnet search: budgets respected (checked with profile independently), determinism per seed,
Optuna studies shared by two worker processes and resumed after a kill, failures, outputs and
export. Tiny timm ViT supernet (img 16, patch 4, embed 32, depth 3), cheap fidelity metric."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
optuna = pytest.importorskip("optuna")

from helpers.models import tiny_timm_vit  # noqa: E402

import supernet_kernels as sk  # noqa: E402
from supernet_kernels.cost import profile  # noqa: E402
from supernet_kernels.search import (  # noqa: E402
    SearchSpace,
    config_hash,
    export_front_member,
    fidelity_evaluator,
    search,
)
from supernet_kernels.search.objectives import CostModel, parse_budget, resolve  # noqa: E402

BUDGET = "bitops <= 0.35 * dense"
SHAPE = (1, 3, 16, 16)


# --------------------------------------------------------------------------- fixtures
def make_vit():
    return tiny_timm_vit(
        img_size=16, patch_size=4, depth=3, embed_dim=32, num_heads=2, num_classes=10
    )


def make_supernet(space=None):
    return sk.convert(make_vit(), space)


def make_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sn():
    return make_supernet()


@pytest.fixture(scope="module")
def ev(sn):
    return fidelity_evaluator(sn, make_data(), metric="neg_mse")


@pytest.fixture(scope="module")
def evo(sn, ev):
    return run(sn, ev, "evolution", seed=0)


def run(sn, ev, algorithm, **kw):
    kw.setdefault("budget", BUDGET)
    kw.setdefault("progress", False)
    if algorithm == "evolution":
        kw.setdefault("population", 6)
        kw.setdefault("generations", 2)
    else:
        kw.setdefault("n_trials", 12)
        kw.setdefault("population", 4)
    return search(sn, ev, SHAPE, algorithm=algorithm, **kw)


def bitops_of(sn, cfg):
    r = cfg["resolution"]
    return profile(sn, (1, 3, r, r), config=cfg).total_bitops


def dense_bitops():
    return profile(make_vit(), SHAPE).total_bitops


def front_key(result):
    return [(m["config_hash"], m["metric"], m["bitops"]) for m in result.front]


# --------------------------------------------------------------------------- space
def test_space_encode_decode_and_operators(sn):
    import random

    space = SearchSpace(sn)
    assert "linear:blocks.0.attn.qkv:rank" in space.genes and "depth:blocks.1" in space.genes
    assert "depth:blocks.0" not in space.genes  # fixed (one choice)
    rng = random.Random(0)
    for i in range(5):
        cfg = sn.sample_config(i)
        assert space.decode(space.encode(cfg)) == cfg
        g = space.sample(rng)
        m = space.mutate(g, rng, 0.2)
        assert m != g and set(m) == set(space.genes)
        c = space.crossover(g, m, rng)
        assert all(c[k] in (g[k], m[k]) for k in space.genes)
        sn.validate_config(space.decode(c))
    g = space.encode(sn.max_config())
    s = space.shrink(g, rng)
    (k,) = [k for k in g if g[k] != s[k]]
    assert space.genes[k].index(s[k]) == space.genes[k].index(g[k]) - 1
    assert space.shrink(space.encode(sn.min_config()), rng) is None


def test_decode_repairs_cross_constraints():
    sn = make_supernet(
        {
            "mlp": {"blocks.*.mlp": [8, 128]},
            "linear": {"blocks.*.attn.proj": {"w_bits": [4, 16], "a_bits": [8, 16]}},
        }
    )
    space = SearchSpace(sn)
    g = space.encode(sn.max_config())
    g["mlp:blocks.0.mlp"] = 8
    g["linear:blocks.0.attn.proj:w_bits"] = 16
    g["linear:blocks.0.attn.proj:a_bits"] = 8
    cfg = space.decode(g)  # rank 32 > min(32, 8) and a_bits 8 with w_bits 16: repaired
    assert cfg["linear"]["blocks.0.mlp.fc1"]["rank"] == 8
    assert cfg["linear"]["blocks.0.mlp.fc2"]["rank"] == 8
    assert cfg["linear"]["blocks.0.attn.proj"]["a_bits"] == 16
    sn.validate_config(cfg)


# --------------------------------------------------------------------------- costs / budgets
def test_dense_reference_is_the_original_model(sn):
    cm = CostModel(sn, SHAPE)
    orig = profile(make_vit(), SHAPE)
    assert cm.reference("dense", "macs") == orig.total_macs
    assert cm.reference("dense", "bitops") == orig.total_bitops
    assert cm.reference("dense", "params") == orig.total_params
    assert cm.reference("dense", "weight_bytes") == 2 * orig.total_params  # at 16 bits
    assert cm.reference("max", "bitops") == profile(sn, SHAPE, sn.max_config()).total_bitops
    cfg = sn.sample_config(3)
    n = cm.n_profiles
    assert cm.costs(cfg) == cm.costs(cfg) and cm.n_profiles == n + 1  # cached by config hash


@pytest.mark.parametrize(
    "budget, want",
    [
        (None, []),
        (1e8, [("bitops", None, None, 1e8)]),
        ("bitops <= 0.05 * dense", [("bitops", 0.05, "dense", None)]),
        ("0.5*max", [("bitops", 0.5, "max", None)]),
        (
            "macs <= 2e6 and params <= 30% dense",
            [("macs", None, None, 2e6), ("params", 0.3, "dense", None)],
        ),
        (
            {"weight_bytes": 5e4, "macs": "dense * 0.5"},
            [("weight_bytes", None, None, 5e4), ("macs", 0.5, "dense", None)],
        ),
    ],
)
def test_parse_budget(budget, want):
    got = [(c.cost, c.factor, c.ref, c.value) for c in parse_budget(budget, "bitops")]
    assert got == want


@pytest.mark.parametrize(
    "budget, msg",
    [
        ("flops <= 3", "unknown cost 'flops'"),
        ("bitops <= lots", "cannot read the limit"),
        (True, "expected"),
    ],
)
def test_bad_budgets(budget, msg):
    with pytest.raises(ValueError, match=msg):
        parse_budget(budget, "bitops")


def test_infeasible_budget_names_the_smallest_cost(sn, ev):
    cm = CostModel(sn, SHAPE)
    smallest = bitops_of(sn, sn.min_config())
    ratio = smallest / cm.reference("dense", "bitops")
    assert ratio > 0.05
    with pytest.raises(ValueError, match="min_config") as e:
        run(sn, ev, "evolution", budget="bitops <= 0.05 * dense")
    assert f"{smallest:.6g}" in str(e.value) and f"{ratio:.4g} * dense" in str(e.value)
    with pytest.raises(ValueError, match="min_config"):
        run(sn, ev, "tpe", budget={"params": 10})


# --------------------------------------------------------------------------- the searches
@pytest.mark.parametrize("algorithm", ["evolution", "nsga2", "tpe"])
def test_budget_respected_and_seed_deterministic(sn, ev, algorithm):
    a = run(sn, ev, algorithm, seed=3)
    b = run(sn, ev, algorithm, seed=3)
    assert front_key(a) == front_key(b) and a.front
    limit = 0.35 * dense_bitops()
    assert a.budget[0]["limit"] == pytest.approx(limit)
    ok = [r for r in a.history if r["status"] == "ok"]
    assert len(ok) >= (6 if algorithm == "evolution" else 3)
    for r in ok:  # every evaluated (hence returnable) config fits, checked independently
        assert r["feasible"] and bitops_of(sn, r["config"]) <= limit
        assert r["bitops"] == bitops_of(sn, r["config"])
        sn.validate_config(r["config"])
    if algorithm == "evolution":
        assert all(r["status"] == "ok" for r in a.history)  # never an over-budget candidate
        assert len({r["config_hash"] for r in a.history}) == len(a.history)
    else:
        assert len(a.history) == 12
    # the front: non-dominated, cheapest first; best = highest metric within budget
    costs = [m["bitops"] for m in a.front]
    metrics = [m["metric"] for m in a.front]
    assert costs == sorted(costs) and metrics == sorted(metrics)
    assert a.best["metric"] == max(r["metric"] for r in ok) == metrics[-1]
    assert sn.active_config() == sn.max_config()  # restored after the search


def test_different_seeds_differ(sn, ev, evo):
    a = evo
    b = run(sn, ev, "evolution", seed=1)
    assert [r["config_hash"] for r in a.history] != [r["config_hash"] for r in b.history]


@pytest.mark.parametrize("algorithm", ["evolution", "tpe"])
def test_failing_evaluator_skips_and_goes_on(sn, ev, algorithm):
    calls = []

    def flaky(model):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise RuntimeError("boom")
        return ev(model)

    res = run(sn, flaky, algorithm, seed=0)
    fails = [r for r in res.history if r["status"] == "fail"]
    assert fails and all("boom" in r["error"] for r in fails)
    assert res.best is not None and all(m["status"] == "ok" for m in res.front)

    def broken(model):
        raise KeyError("first failure")

    with pytest.raises(RuntimeError, match="every evaluation failed.*first failure") as e:
        run(sn, broken, algorithm, seed=0)
    assert isinstance(e.value.__cause__, KeyError)


def test_failed_trials_are_optuna_fail_state(tmp_path, sn, ev):
    calls = []

    def flaky(model):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return ev(model)

    db = tmp_path / "s.db"
    run(sn, flaky, "tpe", storage=db, n_trials=6, budget=None)
    study = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.get_trials()]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 5


def test_evaluate_gets_config_resolution_and_extract(sn):
    seen = []

    def f(model):
        assert not torch.is_grad_enabled()
        cfg = model.sk_subnet["config"]
        seen.append(cfg["resolution"])
        r = cfg["resolution"]
        return float(model(torch.zeros(1, 3, r, r)).sum())

    run(sn, f, "evolution", extract=True, budget=None, population=4, generations=1)
    assert set(seen) <= {12, 16} and len(seen) >= 4


def test_fidelity_evaluator(sn):
    data = make_data()
    for metric in ("top1", "neg_mse", "neg_kl"):
        f = fidelity_evaluator(sn, data, metric=metric)
        assert f(sn) == pytest.approx(1.0 if metric == "top1" else 0.0, abs=1e-6)
        sub = sn.extract(sn.min_config())
        assert f(sub) <= (1.0 if metric == "top1" else 0.0)
    teacher = make_vit()
    f = fidelity_evaluator(sn, data, teacher=teacher)
    assert f.metric == "top1" and f(teacher) == 1.0


# --------------------------------------------------------------------------- storage
def test_evolution_refuses_storage(sn, ev, tmp_path):
    with pytest.raises(ValueError, match="nsga2"):
        run(sn, ev, "evolution", storage=tmp_path / "x.db")


@pytest.mark.parametrize(
    "content", [b"\x00garbage\xff" * 100, b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 500]
)
def test_corrupt_study_file(tmp_path, sn, ev, content):
    db = tmp_path / "study.db"
    db.write_bytes(content)
    with pytest.raises(ValueError, match=str(db)):
        run(sn, ev, "tpe", storage=db)
    with pytest.raises(ValueError, match=str(db)):
        run(sn, ev, "nsga2", storage=f"sqlite:///{db}")


def test_resume_refuses_another_search(tmp_path, sn, ev):
    db = tmp_path / "s.db"
    run(sn, ev, "tpe", storage=db, n_trials=3)
    with pytest.raises(ValueError, match="budget"):
        run(sn, ev, "tpe", storage=db, n_trials=4, budget="bitops <= 0.5 * dense")
    other = run(sn, ev, "tpe", storage=db, n_trials=3, study_name="other", budget=None)
    assert len(other.history) == 3


def test_interrupted_search_resumes(tmp_path, sn, ev):
    calls = []

    def stop_at_4(model):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return ev(model)

    db = tmp_path / "s.db"
    with pytest.raises(KeyboardInterrupt):
        run(sn, stop_at_4, "nsga2", storage=db, n_trials=10, budget=None)
    study = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}")
    done = study.get_trials()
    assert len(done) == 4 and done[-1].state.name == "FAIL"  # the interrupted one

    again = []
    res = run(sn, lambda m: again.append(1) or ev(m), "nsga2", storage=db, n_trials=10, budget=None)
    assert [r["trial"] for r in res.history] == list(range(10))
    assert len(again) <= 6  # only the remaining trials ran (fewer on a cache hit)
    assert sum(r["status"] == "ok" for r in res.history) == 9


# --------------------------------------------------------------------------- worker processes
def _worker(db: str, n_trials: int, ready_dir: str, idx: int, mode: str) -> None:
    """A search process: ``mode`` "share" waits for its peer, then searches slowly; "kill"
    SIGKILLs itself in the middle of its 5th evaluation."""
    torch.set_num_threads(1)
    sn = make_supernet()
    ev = fidelity_evaluator(sn, make_data(), metric="neg_mse")
    calls = []

    def evaluate(model):
        calls.append(1)
        if mode == "kill" and len(calls) == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "share":
            time.sleep(0.1)
        return ev(model)

    Path(ready_dir, f"ready{idx}").touch()
    deadline = time.time() + 60
    while mode == "share" and len(list(Path(ready_dir).glob("ready*"))) < 2:
        assert time.time() < deadline, "the other worker never started"
        time.sleep(0.05)
    search(
        sn,
        evaluate,
        SHAPE,
        algorithm="tpe",
        n_trials=n_trials,
        budget=BUDGET,
        storage=db,
        seed=idx,
        progress=False,
    )


def _spawn(db, n_trials, ready_dir, idx, mode):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    args = [sys.executable, __file__, "worker", str(db), str(n_trials), str(ready_dir)]
    return subprocess.Popen(
        [*args, str(idx), mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, sn, ev):
    db, n = tmp_path / "shared.db", 10
    procs = [_spawn(db, n, tmp_path, i, "share") for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    study = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}")
    trials = [t for t in study.get_trials() if not t.user_attrs.get("sk_excess")]
    assert sorted(t.number for t in trials) == list(range(n))  # the planned total, each once
    assert all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["sk_worker"] for t in trials}
    assert len(workers) == 2  # both took part
    extra = [t for t in study.get_trials() if t.user_attrs.get("sk_excess")]
    assert all(t.state.name == "PRUNED" and "sk_config" not in t.user_attrs for t in extra)
    # a third run of the same search finds the study complete: nothing more runs
    calls = []
    res = run(sn, lambda m: calls.append(1) or ev(m), "tpe", storage=db, n_trials=n, seed=0)
    assert not calls and [r["trial"] for r in res.history] == list(range(n))
    limit = 0.35 * dense_bitops()
    assert all(bitops_of(sn, m["config"]) <= limit for m in res.front)


@pytest.mark.slow
def test_killed_worker_resumes(tmp_path, sn, ev):
    db, n = tmp_path / "killed.db", 9
    p = _spawn(db, n, tmp_path, 0, "kill")
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, out.decode()[-3000:]
    study = optuna.load_study(study_name="supernet-search", storage=f"sqlite:///{db}")
    before = study.get_trials()
    assert 5 <= len(before) < n and before[-1].state.name == "RUNNING"  # killed mid-trial
    calls = []
    res = run(sn, lambda m: calls.append(1) or ev(m), "tpe", storage=db, n_trials=n, seed=0)
    assert [r["trial"] for r in res.history] == list(range(n))
    assert len(calls) <= n - len(before)
    assert res.history[len(before) - 1]["status"] == "running"  # left as it was, counted
    assert all(r["status"] in ("ok", "infeasible") for r in res.history[len(before) :])


# --------------------------------------------------------------------------- outputs
def test_outputs_json_csv_plot(tmp_path, evo):
    res = evo
    res.to_json(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["format"] == "sk-search-v1" and doc["objective"] == "bitops"
    assert doc["front"] == res.front and doc["best"] == res.best
    assert len(doc["history"]) == len(res.history)
    for key in ("config", "metric", "bitops", "macs", "params", "weight_bytes"):
        assert all(m[key] is not None for m in doc["front"])
    assert all(m["latency_pred"] is None and m["latency"] is None for m in doc["front"])
    res.to_csv(tmp_path / "front.csv")
    res.to_csv(tmp_path / "hist.csv", which="history")
    with open(tmp_path / "front.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res.front)
    assert [float(r["metric"]) for r in rows] == [m["metric"] for m in res.front]
    assert json.loads(rows[0]["config"]) == res.front[0]["config"]
    with open(tmp_path / "hist.csv") as f:
        assert len(list(csv.DictReader(f))) == len(res.history)
    res.plot(tmp_path / "front.png")
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    res.plot(tmp_path / "front.svg", x="macs")
    assert b"<svg" in (tmp_path / "front.svg").read_bytes()[:500]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temporary files


def test_export_front_member_loads_back(tmp_path, sn, evo):
    res = evo
    for i, member in enumerate([res.front[0], res.best]):
        path = export_front_member(sn, member, tmp_path / f"m{i}.safetensors")
        loaded = sk.load(path)
        cfg = member["config"]
        ref = sn.extract(cfg).eval()
        r = cfg["resolution"]
        x = torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), ref(x), rtol=1e-5, atol=1e-5)
        assert config_hash(loaded.sk_subnet["config"]) == member["config_hash"]


# --------------------------------------------------------------------------- misc
def test_resolve_absolute_and_max_budgets(sn):
    cm = CostModel(sn, SHAPE)
    (c,) = resolve(parse_budget("macs <= 0.5 * max", "bitops"), cm)
    assert c.limit == pytest.approx(0.5 * profile(sn, SHAPE, sn.max_config()).total_macs)
    (c,) = resolve(parse_budget(123.0, "params"), cm)
    assert c.cost == "params" and c.limit == 123.0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
