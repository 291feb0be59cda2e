"""2-process gloo worker for tests/test_train.py::test_two_processes_gloo."""

from __future__ import annotations

import json
import os
import sys


def run(rank: int, world: int, port: int, out_dir: str, steps: int, batch_size: int) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    import torch
    import torch.distributed as dist
    from helpers.train import class_data, make_generic_supernet
    from safetensors.torch import save_file

    from supernet_kernels.train import ClassificationTask, TrainConfig, Trainer

    torch.set_num_threads(1)
    sn = make_generic_supernet()
    cfg = TrainConfig(steps=steps, lr=1e-3, batch_size=batch_size, progress=False)
    tr = Trainer(sn, ClassificationTask(), class_data(32), cfg, device="cpu")
    recs = tr.train()
    state = {k: v.detach().contiguous().clone() for k, v in sn.state_dict().items()}
    save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(recs, f)
    dist.destroy_process_group()
