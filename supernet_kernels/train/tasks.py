"""Tasks: what a batch is, how a model runs on it, its loss, distillation loss and metric.

Task protocol (what :class:`~supernet_kernels.train.Trainer` calls):

* ``setup(supernet)``: once, before training (infers e.g. the number of classes);
* ``validate_dataset(ds, limit=None, name="train_data")``: ValueError naming the sample index
  and field of the first bad sample (``limit``: how many samples to look at, None = all);
* ``collate(samples) -> batch`` and ``prepare(batch, generator) -> batch``: make a batch (on
  the CPU); ``prepare`` draws the batch's random parts (SAM prompts) from ``generator`` once,
  so every subnet and the teacher of a step see the same prompts;
* ``to_device(batch, device)``;
* ``forward(model, batch) -> out``: ``model`` is the supernet (at its active config), an
  extracted subnet, or a teacher;
* ``loss(out, batch) -> scalar``; ``distill_loss(out, teacher_out, temperature=1.0) -> scalar``;
* ``metric_sums(model, batches) -> (numerator, denominator)`` and ``metric(model, data) ->
  float`` (= numerator / denominator; ``data`` a Dataset or an iterable of collated batches);
* ``modules() -> {name: nn.Module}``: task-owned modules trained and checkpointed with the
  supernet (SAM's mask decoder with ``train_decoder=True``), ``to(device)``;
* ``fingerprint() -> dict``: what a checkpoint must agree with.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate as _default_collate

from .data import check_indices


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _active_resolution(model: nn.Module) -> int | None:
    """The input size a model wants: a supernet's active resolution, an extracted subnet's
    resolution, None where any size (or the data's size) is right."""
    if hasattr(model, "active_config") and hasattr(model, "space"):
        return model.active_config().get("resolution")
    sub = getattr(model, "sk_subnet", None)
    if isinstance(sub, dict):
        return sub.get("resolution")
    return None


def _is_dataset(data) -> bool:
    return isinstance(data, Dataset) or (
        hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
        and not isinstance(data, DataLoader)
    )


def _int_label(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if (
        isinstance(v, torch.Tensor)
        and v.dim() == 0
        and not v.dtype.is_floating_point
        and v.dtype != torch.bool
    ):
        return int(v)
    return None


class Task:
    """Base of the tasks (see the module doc for the protocol)."""

    name = "task"
    metric_name = "metric"

    def setup(self, supernet: nn.Module) -> None:
        pass

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def to(self, device) -> Task:
        for m in self.modules().values():
            m.to(device)
        return self

    def collate(self, samples: list):
        return _default_collate(samples)

    def prepare(self, batch, generator: torch.Generator):
        return batch

    def to_device(self, batch, device):
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v, device) for k, v in batch.items()}
        if isinstance(batch, list | tuple):
            return type(batch)(self.to_device(v, device) for v in batch)
        return batch

    def fingerprint(self) -> dict:
        return {"task": self.name}

    def metric_sums(self, model: nn.Module, batches: Iterable) -> tuple[float, float]:
        raise NotImplementedError

    def metric(self, model: nn.Module, data, batch_size: int = 32) -> float:
        """The task metric of ``model`` on ``data`` (a Dataset, or an iterable of batches)."""
        if _is_dataset(data):
            data = DataLoader(data, batch_size=batch_size, collate_fn=self.collate)
        num, den = self.metric_sums(model, data)
        return num / den if den else float("nan")


# --------------------------------------------------------------------------- classification
class ClassificationTask(Task):
    """Image classification on ``(image, label)`` batches (timm-style models returning logits).

    loss: cross-entropy (``label_smoothing``); distillation: KL(teacher / T || student / T) * T^2
    (the teacher's softened distribution is the target); metric: top-1 accuracy. A timm ViT
    supernet at an active resolution other than the data's gets each batch resized (bilinear,
    antialiased) to it. ``num_classes`` None: read off the model (``num_classes`` attribute)
    in ``setup``.
    """

    name = "classification"
    metric_name = "top1"

    def __init__(self, num_classes: int | None = None, label_smoothing: float = 0.0):
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.in_chans = 3

    def setup(self, supernet: nn.Module) -> None:
        model = getattr(supernet, "model", supernet)
        if self.num_classes is None:
            n = getattr(model, "num_classes", None)
            if not isinstance(n, int) or n <= 0:
                head = model.get_classifier() if hasattr(model, "get_classifier") else None
                n = getattr(head, "out_features", None)
            if (not isinstance(n, int) or n <= 0) and hasattr(model, "classifier"):
                n = getattr(model.classifier, "out_features", None)  # transformers
            if not isinstance(n, int) or n <= 0:
                raise ValueError(
                    "ClassificationTask: cannot read the number of classes off the model; "
                    "pass ClassificationTask(num_classes=...)"
                )
            self.num_classes = n
        pe = getattr(model, "patch_embed", None)
        proj = getattr(pe, "proj", None)
        if isinstance(getattr(proj, "in_channels", None), int):
            self.in_chans = proj.in_channels

    def fingerprint(self) -> dict:
        return {"task": self.name, "num_classes": self.num_classes}

    def forward(self, model: nn.Module, batch):
        images = batch[0]
        r = _active_resolution(model)
        if r is not None and tuple(images.shape[-2:]) != (r, r):
            images = F.interpolate(
                images, size=(r, r), mode="bilinear", align_corners=False, antialias=True
            )
        out = model(images)
        if hasattr(out, "logits"):  # a transformers ModelOutput
            out = out.logits
        if isinstance(out, tuple | list):
            out = out[0]
        return out

    def loss(self, out: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(out.float(), batch[1], label_smoothing=self.label_smoothing)

    def distill_loss(self, out, teacher_out, temperature: float = 1.0) -> torch.Tensor:
        t = float(temperature)
        s = F.log_softmax(out.float() / t, dim=-1)
        p = F.log_softmax(teacher_out.detach().float() / t, dim=-1)
        return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)

    @torch.no_grad()
    def metric_sums(self, model, batches):
        dev = _model_device(model)
        correct = total = 0
        for batch in batches:
            batch = self.to_device(batch, dev)
            out = self.forward(model, batch)
            correct += int((out.argmax(-1) == batch[1]).sum())
            total += int(batch[1].numel())
        return float(correct), float(total)

    def validate_dataset(self, ds, limit: int | None = None, name: str = "train_data") -> None:
        if not _is_dataset(ds):
            raise TypeError(
                f"{name}: expected a map-style Dataset (__len__ and __getitem__), got "
                f"{type(ds).__name__}"
            )
        n = len(ds)
        if n == 0:
            raise ValueError(f"{name}: the dataset is empty")
        shape = None
        for i in check_indices(n, limit):
            item = ds[i]
            where = f"{name}[{i}]"
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"{where}: expected (image, label), got {type(item).__name__}")
            img, label = item
            if not isinstance(img, torch.Tensor):
                raise ValueError(f"{where}.image: expected a tensor, got {type(img).__name__}")
            if img.dim() != 3 or img.shape[0] != self.in_chans:
                raise ValueError(
                    f"{where}.image: expected shape ({self.in_chans}, H, W), got {tuple(img.shape)}"
                )
            if not img.dtype.is_floating_point:
                raise ValueError(f"{where}.image: expected a float tensor, got {img.dtype}")
            if shape is None:
                shape = tuple(img.shape)
            elif tuple(img.shape) != shape:
                raise ValueError(
                    f"{where}.image: shape {tuple(img.shape)} differs from the first sample's "
                    f"{shape} (all images must have one size)"
                )
            if not torch.isfinite(img).all():
                raise ValueError(f"{where}.image: holds NaN or inf")
            v = _int_label(label)
            if v is None:
                got = (
                    f"a tensor of shape {tuple(label.shape)} dtype {label.dtype}"
                    if isinstance(label, torch.Tensor)
                    else f"{type(label).__name__} {label!r:.40}"
                )
                raise ValueError(
                    f"{where}.label: expected an int (or 0-d integer tensor), got {got}"
                )
            if self.num_classes is not None and not 0 <= v < self.num_classes:
                raise ValueError(f"{where}.label: {v} is out of range 0..{self.num_classes - 1}")


# --------------------------------------------------------------------------- segmentation
def sigmoid_focal_loss(logits, target, alpha: float = 0.25, gamma: float = 2.0):
    """Per-mask mean focal loss (RetinaNet's, as in SAM), shape (M,)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits, target, eps: float = 1.0):
    """Per-mask soft dice loss, shape (M,)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def mask_iou(logits, target) -> torch.Tensor:
    """IoU of the binarized prediction (logit > 0) with the target, per mask (M,)."""
    pred = (logits > 0).flatten(1)
    t = target.flatten(1) > 0.5
    inter = (pred & t).sum(1).float()
    union = (pred | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


class SegmentationTask(Task):
    """Promptable segmentation with a segment-anything ``Sam`` (image_encoder, prompt_encoder,
    mask_decoder, pixel_mean, pixel_std). The supernet is made from ``sam.image_encoder``
    (``convert(sam.image_encoder)``); the task runs the supernet (or a teacher / extracted
    encoder) for the image embedding and ``sam``'s prompt encoder and mask decoder for the masks.

    Batches: ``(image (3, S, S) in [0, 1], masks (N, S, S))`` samples (see
    :mod:`~supernet_kernels.train.data`), S = the encoder's ``img_size``. Per image, up to
    ``masks_per_image`` masks are drawn; each gets one prompt: with probability ``point_prob``
    a point (a uniformly drawn foreground pixel), else its bounding box with noise (std 10% of
    the side, at most 20 px; the SAM paper's). One decoder output per prompt
    (``multimask_output=False``), upsampled to S x S.

    loss = ``focal_weight`` * focal + dice + MSE(predicted IoU, IoU of the binarized mask), the
    SAM paper's 20 : 1 : 1. Distillation on the mask logits: ``distill="bce"`` (default)
    BCE(sigmoid(student / T), sigmoid(teacher / T)) * T^2 — the teacher's probabilities as
    soft targets — or ``"mse"``: MSE between the logits. Metric: mIoU, the mean over prompted
    masks of the binarized mask's IoU, prompts drawn from a generator seeded ``eval_seed`` so
    every config is scored on the same prompts.

    ``train_decoder``: False (default) freezes the prompt encoder and the mask decoder
    (``requires_grad_(False)`` on ``sam``'s modules); True trains the mask decoder with the
    supernet (its weights are checkpointed as ``task.mask_decoder.*``).
    """

    name = "segmentation"
    metric_name = "miou"

    # What ``sam`` must have, and what it is expected to be (for the error).
    _sam_attrs = ("image_encoder", "prompt_encoder", "mask_decoder")
    _sam_kind = "a segment-anything Sam"

    def __init__(
        self,
        sam: nn.Module,
        *,
        masks_per_image: int = 4,
        point_prob: float = 0.5,
        train_decoder: bool = False,
        distill: str = "bce",
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        eval_seed: int = 0,
    ):
        cls = type(self).__name__
        for attr in self._sam_attrs:
            if not hasattr(sam, attr):
                raise TypeError(f"{cls}: sam has no {attr} (expected {self._sam_kind})")
        if distill not in ("bce", "mse"):
            raise ValueError(f'{cls}: distill must be "bce" or "mse", got {distill!r}')
        self.sam = sam
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.masks_per_image = masks_per_image
        self.point_prob = point_prob
        self.train_decoder = train_decoder
        self.distill = distill
        self.focal_weight, self.dice_weight, self.iou_weight = focal_weight, dice_weight, iou_weight
        self.eval_seed = eval_seed
        self.prompt_encoder.requires_grad_(False)
        self.mask_decoder.requires_grad_(train_decoder)
        self._frame(sam)

    def _frame(self, sam: nn.Module) -> None:
        """The encoder's input: ``pixel_mean`` / ``pixel_std`` (0..255 units) and ``img_size``
        (segment-anything's ``Sam`` keeps them; its defaults otherwise)."""
        mean = getattr(sam, "pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1))
        std = getattr(sam, "pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1))
        self.pixel_mean = mean.detach().clone().view(-1, 1, 1)
        self.pixel_std = std.detach().clone().view(-1, 1, 1)
        self.img_size = int(getattr(sam.image_encoder, "img_size", 1024))

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] as the encoder takes them: ``(255 x - pixel_mean) / pixel_std``."""
        return (images * 255.0 - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    @staticmethod
    def _upsample(low: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The decoder's low-resolution mask logits (M, h, w) at the images' size (M, S, S)."""
        return F.interpolate(
            low[:, None].float(),
            size=tuple(images.shape[-2:]),
            mode="bilinear",
            align_corners=False,
        )[:, 0]

    def modules(self) -> dict[str, nn.Module]:
        return {"mask_decoder": self.mask_decoder} if self.train_decoder else {}

    def to(self, device) -> SegmentationTask:
        self.prompt_encoder.to(device)
        self.mask_decoder.to(device)
        self.pixel_mean = self.pixel_mean.to(device)
        self.pixel_std = self.pixel_std.to(device)
        return self

    def fingerprint(self) -> dict:
        return {
            "task": self.name,
            "img_size": self.img_size,
            "train_decoder": self.train_decoder,
            "masks_per_image": self.masks_per_image,
            "point_prob": self.point_prob,
            "distill": self.distill,
        }

    def collate(self, samples: list):
        images = torch.stack([s[0] for s in samples])
        return {"images": images, "masks": [s[1] for s in samples]}

    def prepare(self, batch, generator: torch.Generator):
        """Draw the prompts: ``gt`` (M, S, S) float, ``img_idx`` (M,), ``is_point`` (M,),
        ``points`` (M, 2) (x, y), ``boxes`` (M, 4) (x0, y0, x1, y1), in image order."""
        gts, idx, is_point, points, boxes = [], [], [], [], []
        for i, masks in enumerate(batch["masks"]):
            masks = masks.to("cpu")
            n = masks.shape[0]
            pick = torch.randperm(n, generator=generator)[: self.masks_per_image]
            for j in pick.tolist():
                m = masks[j] > 0
                ys, xs = torch.nonzero(m, as_tuple=True)
                x0, x1 = xs.min().item(), xs.max().item()
                y0, y1 = ys.min().item(), ys.max().item()
                point = bool(torch.rand((), generator=generator) < self.point_prob)
                k = int(torch.randint(len(xs), (), generator=generator))
                box = torch.tensor([x0, y0, x1, y1], dtype=torch.float32)
                side = torch.tensor([x1 - x0, y1 - y0, x1 - x0, y1 - y0], dtype=torch.float32)
                noise = torch.randn(4, generator=generator) * (0.1 * side).clamp(max=20.0)
                box = (box + noise).clamp(0, self.img_size - 1)
                gts.append(m.float())
                idx.append(i)
                is_point.append(point)
                points.append(torch.tensor([xs[k].item() + 0.5, ys[k].item() + 0.5]))
                boxes.append(box)
        return {
            "images": batch["images"],
            "gt": torch.stack(gts),
            "img_idx": torch.tensor(idx),
            "is_point": torch.tensor(is_point),
            "points": torch.stack(points),
            "boxes": torch.stack(boxes),
        }

    def forward(self, model: nn.Module, batch):
        images = batch["images"]
        emb = model(self._normalize(images))
        pe = self.prompt_encoder
        m = batch["gt"].shape[0]
        dev = emb.device
        sparse_pt, dense = pe(
            points=(batch["points"][:, None, :], torch.ones(m, 1, dtype=torch.int, device=dev)),
            boxes=None,
            masks=None,
        )
        sparse_box, _ = pe(points=None, boxes=batch["boxes"], masks=None)
        sparse = torch.where(batch["is_point"][:, None, None], sparse_pt, sparse_box)
        image_pe = pe.get_dense_pe()
        logits, ious = [], []
        img_idx = batch["img_idx"]
        for i in range(images.shape[0]):
            rows = torch.nonzero(img_idx == i, as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            low, iou = self.mask_decoder(
                image_embeddings=emb[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse[rows],
                dense_prompt_embeddings=dense[rows],
                multimask_output=False,
            )
            logits.append(low[:, 0])
            ious.append(iou[:, 0])
        masks = self._upsample(torch.cat(logits), images)
        return {"masks": masks, "iou": torch.cat(ious)}

    def loss(self, out, batch) -> torch.Tensor:
        logits = out["masks"].float()
        gt = batch["gt"].float()
        focal = sigmoid_focal_loss(logits, gt).mean()
        dice = dice_loss(logits, gt).mean()
        with torch.no_grad():
            target = mask_iou(logits, gt)
        iou = F.mse_loss(out["iou"].float(), target)
        return self.focal_weight * focal + self.dice_weight * dice + self.iou_weight * iou

    def distill_loss(self, out, teacher_out, temperature: float = 1.0) -> torch.Tensor:
        s = out["masks"].float()
        t = teacher_out["masks"].detach().float()
        if self.distill == "mse":
            return F.mse_loss(s, t)
        tt = float(temperature)
        return F.binary_cross_entropy_with_logits(s / tt, torch.sigmoid(t / tt)) * (tt * tt)

    @torch.no_grad()
    def metric_sums(self, model, batches):
        dev = _model_device(model)
        g = torch.Generator().manual_seed(self.eval_seed)
        total = count = 0.0
        for batch in batches:
            batch = self.to_device(self.prepare(batch, g), dev)
            out = self.forward(model, batch)
            iou = mask_iou(out["masks"].float(), batch["gt"])
            total += float(iou.sum())
            count += iou.numel()
        return total, count

    def validate_dataset(self, ds, limit: int | None = None, name: str = "train_data") -> None:
        if not _is_dataset(ds):
            raise TypeError(
                f"{name}: expected a map-style Dataset (__len__ and __getitem__), got "
                f"{type(ds).__name__}"
            )
        n = len(ds)
        if n == 0:
            raise ValueError(f"{name}: the dataset is empty")
        s = self.img_size
        for i in check_indices(n, limit):
            item = ds[i]
            where = f"{name}[{i}]"
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"{where}: expected (image, masks), got {type(item).__name__}")
            img, masks = item
            if not isinstance(img, torch.Tensor) or not img.dtype.is_floating_point:
                raise ValueError(f"{where}.image: expected a float tensor (3, {s}, {s})")
            if tuple(img.shape) != (3, s, s):
                raise ValueError(
                    f"{where}.image: expected shape (3, {s}, {s}) (the image encoder's img_size), "
                    f"got {tuple(img.shape)}"
                )
            if not torch.isfinite(img).all():
                raise ValueError(f"{where}.image: holds NaN or inf")
            if not isinstance(masks, torch.Tensor):
                raise ValueError(
                    f"{where}.masks: expected a tensor (N, {s}, {s}), got {type(masks).__name__}"
                )
            if masks.dim() != 3 or masks.shape[0] < 1 or tuple(masks.shape[1:]) != (s, s):
                raise ValueError(
                    f"{where}.masks: expected shape (N >= 1, {s}, {s}) matching the image, got "
                    f"{tuple(masks.shape)}"
                )
            if masks.dtype.is_floating_point or masks.is_complex():
                raise ValueError(
                    f"{where}.masks: expected bool or uint8 (0 / 1), got {masks.dtype}"
                )
            if masks.dtype != torch.bool and not ((masks == 0) | (masks == 1)).all():
                raise ValueError(f"{where}.masks: values must be 0 or 1")
            empty = (masks.flatten(1) != 0).sum(1) == 0
            if empty.any():
                j = int(torch.nonzero(empty)[0])
                raise ValueError(f"{where}.masks: mask {j} is empty (every mask needs a pixel)")
