"""The trainer's logs on rank 0: step records as JSON lines, each config in full once (by its
hash) beside them, and TensorBoard scalars (the formats are described in :mod:`.trainer`)."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

from .config import TrainConfig


class TrainLogs:
    """The log files of a run starting at step ``start`` (a resume keeps the records of the
    steps before it and the configs already written)."""

    def __init__(self, config: TrainConfig, start: int):
        c = self.config = config
        self._log = self._cfg_log = self._tb = None
        self._logged_hashes: set[str] = set()
        if c.log_file:
            path = Path(c.log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            keep = []
            if start > 0 and path.exists():  # resume: keep the records before the checkpoint
                for line in path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        if json.loads(line).get("step", -1) < start:
                            keep.append(line)
            path.write_text("".join(line + "\n" for line in keep))
            self._log = open(path, "a")  # noqa: SIM115
            cfg_path = path.with_name(path.name.removesuffix(".jsonl") + ".configs.jsonl")
            if start > 0 and cfg_path.exists():
                # Hashes written by earlier versions differ from today's: those configs are
                # written once more under today's hash (the old lines stay for the old records).
                for line in cfg_path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError, AttributeError, KeyError):
                        self._logged_hashes.add(json.loads(line)["hash"])
            elif cfg_path.exists():
                cfg_path.unlink()
            self._cfg_log = open(cfg_path, "a")  # noqa: SIM115
        if c.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "TrainConfig.tensorboard_dir: tensorboard is not installed "
                    "(pip install tensorboard); TensorBoard logging skipped",
                    stacklevel=3,
                )
            else:
                self._tb = SummaryWriter(c.tensorboard_dir)

    def write(self, rec: dict, configs: list[dict]) -> None:
        if self._cfg_log is not None:
            for h, cfg in zip(rec["configs"], configs, strict=True):
                if h not in self._logged_hashes:
                    self._logged_hashes.add(h)
                    self._cfg_log.write(json.dumps({"hash": h, "config": cfg}) + "\n")
            self._cfg_log.flush()
        if self._log is not None and rec["step"] % self.config.log_every == 0:
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()
        if self._tb is not None and rec["step"] % self.config.log_every == 0:
            s = rec["step"]
            self._tb.add_scalar("lr", rec["lr"], s)
            for i, v in enumerate(rec["loss"]):
                self._tb.add_scalar(f"loss/{i}", v, s)
            if rec["grad_norm"] is not None:
                self._tb.add_scalar("grad_norm", rec["grad_norm"], s)

    def close(self) -> None:
        for f in (self._log, self._cfg_log, self._tb):
            if f is not None:
                f.close()
        self._log = self._cfg_log = self._tb = None
