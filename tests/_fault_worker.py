"""Subprocess workers for tests/test_faults.py: a tiny training run and a tiny Optuna search
that can be SIGKILLed at a chosen point.

    python tests/_fault_worker.py train <out_dir> <steps> <checkpoint_every> <resume 0|1>
    python tests/_fault_worker.py search <db> <n_trials> <eval_log>

Kill hooks (environment variables read by this script, not by the library):

* ``SK_FAULT_KILL_AT_STEP=s``: SIGKILL the process as training step ``s`` begins (after the
  steps before it, and any checkpoint they wrote, are done);
* ``SK_FAULT_KILL_IN_SAVE=n``: SIGKILL inside the n-th checkpoint write (1-based), after the
  temporary file is half written and before it is renamed;
* ``SK_FAULT_KILL_AT_TRIAL=n``: SIGKILL in the middle of the n-th evaluation (1-based).

The train worker writes ``records.jsonl`` (one step record per line, appended as each step
ends, flushed) and, when it finishes, ``final.safetensors`` (the supernet's state_dict).
The search worker appends ``start <hash>`` / ``done <hash>`` lines to ``eval_log``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def train(out_dir: str, steps: int, every: int, resume: bool) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    import torch
    from helpers.train import class_data, make_generic_supernet
    from safetensors.torch import save_file

    import supernet_kernels.train.trainer as trmod
    from supernet_kernels.train import ClassificationTask, TrainConfig, Trainer

    torch.set_num_threads(1)
    out = Path(out_dir)
    kill_step = int(os.environ.get("SK_FAULT_KILL_AT_STEP", "-1"))
    kill_save = int(os.environ.get("SK_FAULT_KILL_IN_SAVE", "0"))
    saves = [0]

    if kill_save:  # save_checkpoint imports safetensors.torch.save_file when it runs
        import safetensors.torch as st

        real = st.save_file

        def dying_save_file(tensors, filename, metadata=None):
            saves[0] += 1
            if saves[0] == kill_save:
                real(tensors, filename, metadata=metadata)
                size = os.path.getsize(filename)
                with open(filename, "r+b") as f:  # a half-written temporary file
                    f.truncate(size // 2)
                    f.flush()
                    os.fsync(f.fileno())
                _die()
            return real(tensors, filename, metadata=metadata)

        st.save_file = dying_save_file

    real_step = trmod.Trainer._train_step

    def step_hook(self, s, it):
        if s == kill_step:
            _die()
        rec, configs = real_step(self, s, it)
        with open(out / "records.jsonl", "a") as f:
            f.write(json.dumps({"step": s, "loss": rec["loss"], "lr": rec["lr"]}) + "\n")
            f.flush()
        return rec, configs

    trmod.Trainer._train_step = step_hook

    sn = make_generic_supernet()
    cfg = TrainConfig(
        steps=steps,
        lr=1e-3,
        batch_size=8,
        num_random=1,
        progress=False,
        checkpoint_dir=str(out / "ck"),
        checkpoint_every=every,
        seed=0,
    )
    tr = Trainer(sn, ClassificationTask(), class_data(32), cfg, device="cpu")
    tr.train(resume=resume)
    state = {k: v.detach().contiguous().clone() for k, v in sn.state_dict().items()}
    save_file(state, str(out / "final.safetensors"))


def search(db: str, n_trials: int, eval_log: str) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(__file__))
    from helpers.train import make_generic_supernet

    from supernet_kernels.search import config_hash, search

    kill_at = int(os.environ.get("SK_FAULT_KILL_AT_TRIAL", "0"))
    sn = make_generic_supernet()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    calls = [0]

    def evaluate(model):
        calls[0] += 1
        h = config_hash(model.active_config())
        with open(eval_log, "a") as f:
            f.write(f"start {h}\n")
        if calls[0] == kill_at:
            _die()
        y = model(x)
        with open(eval_log, "a") as f:
            f.write(f"done {h}\n")
        return float(-y.float().square().mean())

    search(
        sn,
        evaluate,
        (1, 3, 16, 16),
        algorithm="tpe",
        objective="params",
        n_trials=n_trials,
        storage=db,
        seed=0,
        progress=False,
    )


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "train":
        train(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    elif kind == "search":
        search(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit(f"unknown worker {kind!r}")
