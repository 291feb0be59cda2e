"""Supernet training: sandwich rule, exact resume, 2 processes (gloo), bf16 autocast, gradient
accumulation, clipping, dataset checks, checkpoint refusal, LoRA, SAM segmentation. Tiny models
and synthetic data only."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

import supernet_kernels as sk
from supernet_kernels.train import (
    ClassificationTask,
    ImageFolderDataset,
    SandwichSampler,
    SegmentationTask,
    TrainConfig,
    Trainer,
    add_lora,
    data_format,
    load_checkpoint,
    lora_only,
    save_checkpoint,
)
from supernet_kernels.train.checkpoint import checkpoint_path

pytest.importorskip("timm")
sys.path.insert(0, os.path.dirname(__file__))
from helpers.models import tiny_sam  # noqa: E402
from helpers.train import class_data, make_generic_supernet, make_vit_supernet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def T(*args, **kw) -> Trainer:
    """A Trainer on the CPU (the exactness checks are CPU checks)."""
    return Trainer(*args, device="cpu", **kw)


def cfg(**kw) -> TrainConfig:
    base = {"steps": 3, "lr": 1e-3, "batch_size": 8, "progress": False}
    return TrainConfig(**{**base, **kw})


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def task_loss(sn, data, config) -> float:
    task = ClassificationTask()
    batch = task.collate(data)
    sn.set_active(config)
    sn.eval()
    return task.loss(task.forward(sn, batch), batch).item()


# --------------------------------------------------------------------------- training
def test_sandwich_lowers_largest_and_smallest_loss(tmp_path):
    sn, _ = make_vit_supernet()
    data = class_data(64)
    mx, mn = sn.max_config(), sn.min_config()
    before = task_loss(sn, data, mx), task_loss(sn, data, mn)
    log = tmp_path / "log" / "train.jsonl"
    tr = T(sn, ClassificationTask(), data, cfg(steps=25, lr=3e-3, log_file=str(log)))
    pre = sn.active_config()
    recs = tr.train()
    assert sn.active_config() == pre  # the active config is restored
    after = task_loss(sn, data, mx), task_loss(sn, data, mn)
    assert after[0] < 0.7 * before[0] and after[1] < 0.7 * before[1], (before, after)
    assert len(recs) == 25 and [r["step"] for r in recs] == list(range(25))
    r = recs[0]
    assert len(r["loss"]) == 3 and r["distill_loss"][0] == 0.0 and r["distill_loss"][1] > 0
    assert r["configs"][:2] == [sk.train.config_hash(mx), sk.train.config_hash(mn)]
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(25))
    full = [
        json.loads(x)
        for x in (tmp_path / "log" / "train.configs.jsonl").read_text().split("\n")
        if x
    ]
    assert {x["hash"] for x in full} == {h for x in lines for h in x["configs"]}
    assert recs[0]["lr"] == pytest.approx(3e-3) and recs[-1]["lr"] < 1e-4  # cosine
    # evaluate reports the metric per config
    ev = tr.evaluate(data, [mx, mn])
    assert [e["config_hash"] for e in ev] == r["configs"][:2]
    assert all(0.5 < e["metric"] <= 1 and e["metric_name"] == "top1" for e in ev)


def test_resume_is_exact(tmp_path):
    data = class_data(32)
    sn, _ = make_vit_supernet()
    straight = T(sn, ClassificationTask(), data, cfg(steps=6, num_random=2)).train()
    final = weights(sn)

    ck = tmp_path / "ck"
    log = tmp_path / "train.jsonl"
    sn1, _ = make_vit_supernet()
    c6 = cfg(steps=6, num_random=2, checkpoint_dir=str(ck), checkpoint_every=3, log_file=str(log))
    t1 = T(sn1, ClassificationTask(), data, c6)
    first = t1.train(until=3)  # interrupted after 3 steps (checkpoint written at step 3)
    assert checkpoint_path(ck).is_file()
    with open(log, "a") as f:  # a record the interrupted run wrote after its checkpoint
        f.write(json.dumps({"step": 3, "junk": True}) + "\n")

    sn2, _ = make_vit_supernet()
    with torch.no_grad():
        for p in sn2.parameters():  # different weights: the checkpoint must restore them all
            p.add_(1.0)
    t2 = T(sn2, ClassificationTask(), data, c6)
    second = t2.train(resume=True)
    assert [r["step"] for r in second] == [3, 4, 5]
    got = first + second
    assert [r["configs"] for r in got] == [r["configs"] for r in straight]
    assert [r["loss"] for r in got] == [r["loss"] for r in straight]
    assert [r["lr"] for r in got] == [r["lr"] for r in straight]
    w2 = weights(sn2)
    assert all(torch.equal(final[k], w2[k]) for k in final)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(6)) and not any("junk" in x for x in lines)
    assert t2.train(resume=True) == []  # finished: nothing to do


@pytest.mark.slow
def test_two_processes_gloo(tmp_path):
    import _ddp_worker
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker.run, args=(2, port, str(tmp_path), 3, 4), nprocs=2, join=True)
    w0 = load_file(str(tmp_path / "rank0.safetensors"))
    w1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert [r["configs"] for r in r0] == [r["configs"] for r in r1]
    # one process on the whole batch (2 x 4 = 8) gives the same run
    sn = make_generic_supernet()
    single = T(sn, ClassificationTask(), class_data(32), cfg(steps=3, batch_size=8)).train()
    assert [r["configs"] for r in single] == [r["configs"] for r in r0]
    for a, b in zip(single, r0, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    ws = weights(sn)
    for k in ws:
        torch.testing.assert_close(w0[k], ws[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_autocast_smoke():
    sn, _ = make_vit_supernet()
    recs = T(sn, ClassificationTask(), class_data(16), cfg(steps=2, amp="bf16")).train()
    assert all(torch.isfinite(torch.tensor(r["loss"])).all() for r in recs)
    assert all(p.dtype == torch.float32 for p in sn.parameters())


def test_grad_accum_equals_bigger_batch():
    data = class_data(32)
    out = []
    for bs, acc in ((8, 1), (4, 2)):
        sn, _ = make_vit_supernet()
        opt = torch.optim.SGD(sn.parameters(), lr=0.1)
        c = cfg(steps=3, batch_size=bs, grad_accum=acc, clip_grad=None)
        recs = T(sn, ClassificationTask(), data, c, optimizer=opt).train()
        out.append((recs, weights(sn)))
    (ra, wa), (rb, wb) = out
    assert [r["configs"] for r in ra] == [r["configs"] for r in rb]
    for a, b in zip(ra, rb, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def test_clip_grad():
    sn, _ = make_vit_supernet()
    before = weights(sn)
    opt = torch.optim.SGD(sn.parameters(), lr=1.0)
    c = cfg(steps=1, clip_grad=1e-3)
    rec = T(sn, ClassificationTask(), class_data(16), c, optimizer=opt).train()[0]
    assert rec["grad_norm"] > 1e-3
    after = weights(sn)
    step = torch.cat([(after[k] - before[k]).flatten() for k in before])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_teacher_distillation():
    sn, model = make_vit_supernet()
    c = cfg(steps=2, distill="teacher", temperature=2.0)
    recs = T(sn, ClassificationTask(), class_data(16), c, teacher=model).train()
    # the max subnet starts equal to the teacher, then moves away and is distilled too
    assert recs[0]["distill_loss"][0] == pytest.approx(0, abs=1e-5)
    assert recs[1]["distill_loss"][0] > 1e-6 and recs[0]["distill_loss"][1] > 1e-6
    with pytest.raises(ValueError, match="teacher"):
        T(sn, ClassificationTask(), class_data(16), c)


def test_distill_loss_is_scaled_kl():
    task = ClassificationTask(num_classes=3)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    want = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1)
    assert task.distill_loss(s, t, 2.0).item() == pytest.approx(4 * want.mean().item(), rel=1e-5)


def test_lora_only_leaves_base_unchanged():
    sn, _ = make_vit_supernet()
    names = add_lora(sn, rank=4)
    assert names and all(sn.elastic_linears()[n].lora_rank == 4 for n in names)
    before = weights(sn)
    tr = T(sn, ClassificationTask(), class_data(16), cfg(steps=2), trainable=lora_only)
    assert tr.params and all(n.endswith(("lora_a", "lora_b")) for n, _ in tr.trained)
    tr.train()
    after = weights(sn)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("lora_a", "lora_b")) for k in changed)
    assert any(k.endswith("lora_b") for k in changed)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_refuses_other_model_and_config(tmp_path):
    data = class_data(16)
    sn, _ = make_vit_supernet()
    T(sn, ClassificationTask(), data, cfg(steps=1, checkpoint_dir=str(tmp_path))).train()
    other, _ = make_vit_supernet(depth=2)
    t = T(other, ClassificationTask(), data, cfg(steps=2, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="another model"):
        t.train(resume=True)
    assert t.step == 0
    sn2, _ = make_vit_supernet()
    t = T(sn2, ClassificationTask(), data, cfg(steps=1, lr=5e-4, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"lr=0.001 \(this run: 0.0005\)"):
        t.train(resume=True)
    with pytest.raises(FileNotFoundError):
        t.train(resume=str(tmp_path / "nothing"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_checkpoint_round_trip_types(tmp_path):
    import numpy as np

    state = {
        "t": torch.arange(5.0),
        "tuple": (1, 2.5, None, "x"),
        "ints": {0: torch.ones(2), 3: {"a": [1, (2, 3)]}},
        "nan": float("nan"),
        "np": np.arange(4, dtype=np.uint32),
        "dunder": {"__tensor__": "not really"},
    }
    back = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", state))
    assert torch.equal(back["t"], state["t"]) and back["tuple"] == state["tuple"]
    assert torch.equal(back["ints"][0], torch.ones(2)) and back["ints"][3] == {"a": [1, (2, 3)]}
    assert back["nan"] != back["nan"] and back["np"].dtype == np.uint32
    assert back["dunder"] == state["dunder"]
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path / "d.safetensors", {"obj": object()})
    assert not list(tmp_path.glob(".d.safetensors.*"))  # no temp file left behind


# --------------------------------------------------------------------------- data
def _bad(i, item, n=6):
    data = class_data(n)
    data[i] = item
    return data


@pytest.mark.parametrize(
    "data, msg",
    [
        (_bad(2, (torch.randn(3, 16, 16), 7)), r"train_data\[2\]\.label: 7 is out of range 0\.\.3"),
        (_bad(4, (torch.randn(3, 16, 16), 1.0)), r"train_data\[4\]\.label: expected an int"),
        (_bad(1, (torch.randn(3, 12, 16), 1)), r"train_data\[1\]\.image: shape \(3, 12, 16\)"),
        (_bad(3, (torch.randn(1, 16, 16), 1)), r"train_data\[3\]\.image: expected shape \(3,"),
        (
            _bad(0, (torch.zeros(3, 16, 16, dtype=torch.uint8), 1)),
            r"\[0\]\.image: expected a float",
        ),
        (_bad(5, (torch.full((3, 16, 16), float("nan")), 1)), r"\[5\]\.image: holds NaN"),
        (_bad(2, torch.randn(3, 16, 16)), r"train_data\[2\]: expected \(image, label\)"),
    ],
)
def test_dataset_validation(data, msg):
    sn, _ = make_vit_supernet()
    with pytest.raises(ValueError, match=msg):
        T(sn, ClassificationTask(), data, cfg())


def test_too_small_dataset_and_bad_config():
    sn, _ = make_vit_supernet()
    with pytest.raises(ValueError, match="fewer than one step"):
        T(sn, ClassificationTask(), class_data(6), cfg(batch_size=8))
    with pytest.raises(ValueError, match="TrainConfig.amp"):
        TrainConfig(steps=1, amp="fp8")


def test_image_folder_and_format(tmp_path):
    from PIL import Image

    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 24), color).save(tmp_path / c / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, image_size=16)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    img, label = ds[3]
    assert img.shape == (3, 16, 16) and label == 1 and img.dtype == torch.float32
    ClassificationTask(num_classes=2).validate_dataset(ds)
    assert "ImageFolder" in data_format("classification")
    assert "masks" in data_format("segmentation") and "Checks" not in data_format()


def test_tensorboard_optional(tmp_path):
    sn, _ = make_vit_supernet()
    c = cfg(steps=1, tensorboard_dir=str(tmp_path / "tb"))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard is not installed"):
            T(sn, ClassificationTask(), class_data(8), c).train()
    else:
        T(sn, ClassificationTask(), class_data(8), c).train()
        assert any((tmp_path / "tb").iterdir())


# --------------------------------------------------------------------------- SAM
def make_sam():
    return tiny_sam(depth=2, global_attn_indexes=(1,))


def seg_data(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        img = torch.rand(3, 64, 64, generator=g)
        k = int(torch.randint(1, 4, (), generator=g))
        masks = torch.zeros(k, 64, 64, dtype=torch.bool)
        for j in range(k):
            y0, x0 = torch.randint(0, 40, (2,), generator=g).tolist()
            masks[j, y0 : y0 + 16, x0 : x0 + 20] = True
        out.append((img, masks))
    return out


def test_segmentation_sam_one_step():
    sam = make_sam()
    sn = sk.convert(sam.image_encoder)
    task = SegmentationTask(sam, train_decoder=True)
    data = seg_data(4)
    dec_before = weights(sam.mask_decoder)
    tr = T(sn, task, data, cfg(steps=1, batch_size=2, num_random=1))
    rec = tr.train()[0]
    assert all(torch.isfinite(torch.tensor(rec["loss"])).all() for _ in [0])
    assert rec["distill_loss"][1] > 0
    dec_after = weights(sam.mask_decoder)
    assert any(not torch.equal(dec_before[k], dec_after[k]) for k in dec_before)
    ev = tr.evaluate(data, [sn.max_config()])
    assert 0 <= ev[0]["metric"] <= 1 and ev[0]["metric_name"] == "miou"
    # the same prompts for every config: evaluating twice gives the same number
    assert tr.evaluate(data, [sn.max_config()])[0]["metric"] == ev[0]["metric"]


def test_segmentation_dataset_validation():
    sam = make_sam()
    task = SegmentationTask(sam)
    good = seg_data(3)
    task.validate_dataset(good)
    cases = [
        ((torch.rand(3, 32, 32), good[0][1]), r"\[1\]\.image: expected shape \(3, 64, 64\)"),
        ((good[0][0], torch.ones(2, 32, 64, dtype=torch.bool)), r"\[1\]\.masks: expected shape"),
        ((good[0][0], torch.ones(1, 64, 64)), r"\[1\]\.masks: expected bool or uint8"),
        ((good[0][0], torch.full((1, 64, 64), 255, dtype=torch.uint8)), "values must be 0 or 1"),
        ((good[0][0], torch.zeros(1, 64, 64, dtype=torch.bool)), r"mask 0 is empty"),
    ]
    for item, msg in cases:
        data = list(good)
        data[1] = item
        with pytest.raises(ValueError, match=msg):
            task.validate_dataset(data)


def test_custom_sampler():
    sn, _ = make_vit_supernet()
    calls = []

    def sampler(step, rng, supernet):
        calls.append(step)
        return [supernet.max_config(), supernet.sample_config(rng)]

    c = cfg(steps=2, eval_every=1)
    recs = T(
        sn, ClassificationTask(), class_data(16), c, sampler=sampler, eval_data=class_data(8)
    ).train()
    assert calls == [0, 1] and all(len(r["loss"]) == 2 for r in recs)
    assert [len(r["eval"]) for r in recs] == [2, 2] and recs[0]["eval"][0]["metric_name"] == "top1"
    assert SandwichSampler(0)(0, None, sn) == [sn.max_config(), sn.min_config()]


def test_segmentation_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from supernet_kernels.train import SegmentationFolder

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "images" / "b.jpg")
    m = np.zeros((2, 32, 32), dtype=np.uint8)
    m[0, :8, :8] = 1
    m[1, 16:, 16:] = 1
    np.savez(tmp_path / "masks" / "a.npz", masks=m)
    ids = np.zeros((32, 32), dtype=np.uint8)
    ids[4:12, 4:12] = 3
    Image.fromarray(ids).save(tmp_path / "masks" / "b.png")
    ds = SegmentationFolder(tmp_path, image_size=64)
    (ia, ma), (_, mb) = ds[0], ds[1]
    assert ia.shape == (3, 64, 64) and ma.shape == (2, 64, 64) and mb.shape == (1, 64, 64)
    assert ma.dtype == torch.bool and int(ma[0].sum()) == 16 * 16
    SegmentationTask(make_sam()).validate_dataset(ds)
