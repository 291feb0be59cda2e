"""Optuna-driven search: NSGA-II (multi-objective) and TPE (single-objective), resumable and
shareable between worker processes or machines through an Optuna storage.

* Parameters: one ``trial.suggest_categorical`` per gene of :class:`SearchSpace` (names such as
  ``"linear:blocks.0.attn.qkv:rank"``), always over the full choice list; the config is then
  decoded with the cross-constraints repaired.
* NSGA-II (``NSGAIISampler(population_size=population, seed=seed)``): directions (maximize
  metric, minimize ``objective``). TPE (``TPESampler(seed=seed, multivariate=True)``):
  maximize metric.
* Budget: each constraint is reported with ``trial.set_constraint(cost, (cost - limit) /
  limit)`` (Optuna 5's replacement of the deprecated ``constraints_func``; both samplers read
  the same values: feasible trials rank before infeasible ones, infeasible ones by violation).
  An over-budget trial is *not evaluated*: it is completed with metric -inf so that the sampler
  learns the constraint, and it never enters the front or ``best``.
* A trial whose evaluation raises is told ``FAIL`` (error in its user attrs) and the search
  goes on. An interrupt (KeyboardInterrupt, ...) tells the running trial ``FAIL`` and
  propagates.
* Storage: None = in memory; a path (``"runs/search.db"``) = SQLite file; any Optuna storage
  URL (``"sqlite:///..."``, ``"postgresql://..."``); or an Optuna storage object. The study is
  created with ``load_if_exists=True`` under ``study_name`` (default ``"supernet-search"``),
  so running the same search again resumes it. The study records the space fingerprint,
  algorithm, objective and budget limits; resuming with different ones is a ValueError.
* ``n_trials`` is the study-wide total (Optuna's ``MaxTrialsCallback`` idea, made exact):
  before asking, a worker stops when the study already holds ``n_trials`` trials; a trial
  created anyway by a race between workers (its number >= ``n_trials``, numbers are assigned
  by the storage) is told ``PRUNED`` at once, marked ``sk_excess``, never evaluated and left
  out of the results. So several workers on one study run trials 0 .. n_trials - 1 between
  them, each once. Every trial counts, including infeasible, failed, and those left
  ``RUNNING`` by a killed worker (those are not redone; raise ``n_trials`` to make up for
  them). Evaluations are cached by config hash, seeded from the study's completed trials.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from .objectives import Problem
from .results import make_row
from .space import SearchSpace, config_hash

DEFAULT_STUDY = "supernet-search"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _optuna():
    try:
        import optuna
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            'search(algorithm="nsga2" / "tpe") needs Optuna: pip install optuna'
        ) from exc
    return optuna


def storage_url(storage) -> str | None:
    """The storage URL for a path or URL (None: in memory)."""
    if storage is None:
        return None
    s = str(storage)
    if "://" in s:
        return s
    return f"sqlite:///{Path(s).expanduser().resolve()}"


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        p = url[len("sqlite:///") :].split("?", 1)[0]
        return Path(p) if p and p != ":memory:" else None
    return None


def open_storage(storage):
    """An Optuna storage for ``storage`` (module doc); a corrupt SQLite file is a ValueError
    naming it."""
    optuna = _optuna()
    if storage is None:
        return optuna.storages.InMemoryStorage(), "memory"
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage, type(storage).__name__
    url = storage_url(storage)
    path = _sqlite_path(url)
    kwargs = {}
    if path is not None:
        _check_sqlite_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with _quiet(optuna), _file_lock(path):
            return optuna.storages.RDBStorage(url, **kwargs), url
    except Exception as exc:
        where = f"file {path}" if path is not None else url
        raise ValueError(
            f"search: cannot open the study storage {where}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''} (a corrupt or foreign file? "
            "delete it or pass another storage)"
        ) from exc


@contextlib.contextmanager
def _file_lock(path: Path | None):
    """An exclusive lock on ``path`` + ".lock" (POSIX; a no-op elsewhere or for None): workers
    starting together on a new SQLite file would otherwise race to create its tables."""
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_sqlite_file(path: Path) -> None:
    if not path.exists():
        return
    if path.is_dir():
        raise ValueError(f"search: the study storage {path} is a directory, not an SQLite file")
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head != _SQLITE_MAGIC:
        raise ValueError(
            f"search: the study storage {path} is not an SQLite database (corrupt or another "
            "kind of file); delete it or pass another storage"
        )


@contextlib.contextmanager
def _quiet(optuna):
    """Optuna's INFO logs and experimental / future warnings off for the duration."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


def optuna_search(
    problem: Problem,
    space: SearchSpace,
    *,
    algorithm: str = "nsga2",
    n_trials: int = 64,
    population: int = 16,
    seed: int = 0,
    storage=None,
    study_name: str | None = None,
    progress: bool = True,
    sampler_kwargs: dict | None = None,
) -> tuple[list[dict], dict]:
    """Run (or resume, or join) the study; return (history rows of the whole study, info)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    if algorithm not in ("nsga2", "tpe"):
        raise ValueError(f'optuna_search: algorithm must be "nsga2" or "tpe", got {algorithm!r}')
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"search: n_trials must be a positive int, got {n_trials!r}")
    name = study_name or DEFAULT_STUDY
    with _quiet(optuna):
        st, where = open_storage(storage)
        kw = dict(sampler_kwargs or {})
        if algorithm == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(
                population_size=max(2, population), seed=seed, **kw
            )
            directions = ["maximize", "minimize"]
        else:
            kw.setdefault("multivariate", True)
            kw.setdefault("n_startup_trials", max(2, min(10, n_trials // 4)))
            sampler = optuna.samplers.TPESampler(seed=seed, **kw)
            directions = ["maximize"]
        try:
            with _file_lock(_sqlite_path(where) if isinstance(where, str) else None):
                study = optuna.create_study(
                    storage=st,
                    study_name=name,
                    directions=directions,
                    sampler=sampler,
                    load_if_exists=True,
                )
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(
                f"search: cannot open study {name!r} in {where}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} (a corrupt or foreign file?)"
            ) from exc
    _check_study(study, name, where, space, problem, algorithm, directions)
    _seed_caches(study, problem)

    t0 = time.time()
    obj = problem.objective
    with _quiet(optuna):
        while len(study.get_trials(deepcopy=False)) < n_trials:
            trial = study.ask()
            if trial.number >= n_trials:  # created by a race with another worker
                trial.set_user_attr("sk_excess", True)
                study.tell(trial, state=TrialState.PRUNED)
                break
            trial.set_user_attr("sk_worker", f"{socket.gethostname()}:{os.getpid()}")
            try:
                genes = {k: trial.suggest_categorical(k, c) for k, c in space.genes.items()}
                cfg = space.decode(genes)
                costs = problem.costs(cfg)
                viol = problem.violations(costs)
                for cname, v in viol.items():
                    trial.set_constraint(cname, v)
                feasible = all(v <= 0 for v in viol.values())
                trial.set_user_attr("sk_config", cfg)
                trial.set_user_attr("sk_config_hash", config_hash(cfg))
                trial.set_user_attr("sk_costs", costs)
                if not feasible:
                    trial.set_user_attr("sk_status", "infeasible")
                    values = [-math.inf, costs[obj]][: len(directions)]
                    study.tell(trial, values)
                    metric, status = None, "infeasible"
                else:
                    try:
                        metric = problem.evaluate(cfg)
                    except Exception as exc:
                        trial.set_user_attr("sk_status", "fail")
                        trial.set_user_attr("sk_error", repr(exc)[:2000])
                        study.tell(trial, state=TrialState.FAIL)
                        metric, status = None, "fail"
                    else:
                        trial.set_user_attr("sk_status", "ok")
                        trial.set_user_attr("sk_metric", metric)
                        study.tell(trial, [metric, costs[obj]][: len(directions)])
                        status = "ok"
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    trial.set_user_attr("sk_status", "fail")
                    trial.set_user_attr("sk_error", f"interrupted: {exc!r}"[:2000])
                    study.tell(trial, state=TrialState.FAIL)
                raise
            if progress:
                m = f"{metric:.4g}" if metric is not None else status
                print(
                    f"[search {algorithm}] trial {trial.number + 1}/{n_trials}: metric {m}, "
                    f"{obj} {costs[obj]:.4g} ({time.time() - t0:.0f}s)",
                    file=sys.stderr,
                )
    rows = study_rows(study)
    info = {"storage": where, "study_name": name, "n_trials": n_trials}
    return rows, info


def _check_study(study, name, where, space, problem, algorithm, directions) -> None:
    want = {
        "space": space.fingerprint,
        "algorithm": algorithm,
        "objective": problem.objective,
        "budget": [[c.cost, c.limit] for c in problem.constraints],
    }
    have = study.user_attrs.get("sk_search")
    if have is None:
        study.set_user_attr("sk_search", want)
        return
    # A study written before the one config hash holds the space's fingerprint as it was hashed
    # then (legacy SHA-1); the same space under either hash is the same search.
    diff = [
        k
        for k in want
        if _norm(have.get(k)) != _norm(want[k])
        and not (
            k == "space" and isinstance(have.get(k), str) and space.matches_fingerprint(have[k])
        )
    ]
    if diff:
        raise ValueError(
            f"search: study {name!r} in {where} was made by another search ({', '.join(diff)} "
            f"differ: {[have.get(k) for k in diff]} vs {[want[k] for k in diff]}); use another "
            "study_name or storage to start a new one"
        )


def _norm(v):
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, list | tuple):
        return [_norm(x) for x in v]
    return v


def _seed_caches(study, problem: Problem) -> None:
    """Metric and cost caches from the study's earlier trials (resume: nothing re-run)."""
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        h = ua.get("sk_config_hash")
        if h is None:
            continue
        if isinstance(ua.get("sk_config"), dict):  # rehashed: older studies hold legacy hashes
            h = config_hash(ua["sk_config"])
        if problem.cost_model.cache_enabled and isinstance(ua.get("sk_costs"), dict):
            problem.cost_model._cache.setdefault(h, {}).update(ua["sk_costs"])
        if problem.cache and ua.get("sk_status") == "ok" and "sk_metric" in ua:
            problem.metrics[h] = float(ua["sk_metric"])


def study_rows(study) -> list[dict]:
    """History rows of every trial of the study (excess trials left out), by trial number."""
    from optuna.trial import TrialState

    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        ua = t.user_attrs
        if ua.get("sk_excess"):
            continue
        cfg = ua.get("sk_config")
        status = ua.get("sk_status")
        if t.state == TrialState.RUNNING:
            status = "running"
        elif status is None:
            status = "fail"
        feasible = all(v <= 0 for v in t.constraints.values()) if cfg is not None else None
        row = make_row(
            t.number,
            cfg,
            ua.get("sk_costs"),
            ua.get("sk_metric") if status == "ok" else None,
            feasible=feasible,
            status=status,
            error=ua.get("sk_error"),
        )
        row["trial"] = t.number
        rows.append(row)
    return rows
