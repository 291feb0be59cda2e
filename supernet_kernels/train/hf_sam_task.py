""":class:`HFSamSegmentationTask`: promptable segmentation with a Hugging Face transformers
``SamModel``, the counterpart of :class:`~supernet_kernels.train.tasks.SegmentationTask`
(segment-anything's ``Sam``).

The supernet is made from the SamModel's vision encoder (a ``SamVisionModel`` holding it,
:func:`supernet_kernels.supernet.hf.vision_model`); the task runs the supernet (or a teacher
or an extracted subnet) for the image embeddings and the SamModel's prompt encoder and mask
decoder (``SamModel.forward(image_embeddings=...)``) for the masks. Batches, prompts, losses,
distillation and the metric are SegmentationTask's: the same ``(image (3, S, S) in [0, 1],
masks (N, S, S))`` samples, with S the vision encoder's ``image_size``, which must equal the
prompt encoder's (the frame its point and box coordinates are in). Images are normalized as
transformers' ``SamImageProcessor`` does (ImageNet mean / std), which is segment-anything's
``(255 x - pixel_mean) / pixel_std``.
"""

from __future__ import annotations

import torch
from torch import nn

from .tasks import SegmentationTask


class HFSamSegmentationTask(SegmentationTask):
    """SegmentationTask for a transformers ``SamModel`` (module doc); the same arguments."""

    name = "segmentation"
    _sam_attrs = ("vision_encoder", "prompt_encoder", "mask_decoder", "config")
    _sam_kind = "a transformers SamModel"

    def _frame(self, sam: nn.Module) -> None:
        size = int(sam.config.vision_config.image_size)
        prompt_size = int(sam.config.prompt_encoder_config.image_size)
        if size != prompt_size:
            raise ValueError(
                f"HFSamSegmentationTask: the vision encoder's image_size {size} differs from "
                f"the prompt encoder's {prompt_size} (the frame of the prompt coordinates)"
            )
        # SamImageProcessor: rescale by 1 / 255, then ImageNet mean / std (in 0..255 units here,
        # as SegmentationTask keeps them).
        self.pixel_mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
        self.pixel_std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
        self.img_size = size
        self.sam.shared_image_embedding.requires_grad_(False)

    def to(self, device) -> HFSamSegmentationTask:
        self.sam.shared_image_embedding.to(device)
        super().to(device)
        return self

    def forward(self, model: nn.Module, batch):
        images = batch["images"]
        emb = model(self._normalize(images))
        emb = getattr(emb, "last_hidden_state", emb)  # a SamVisionModel's output
        img_idx, is_point = batch["img_idx"], batch["is_point"]
        order, logits, ious = [], [], []
        for i in range(images.shape[0]):
            for points in (True, False):  # transformers takes one kind of prompt per call
                rows = torch.nonzero((img_idx == i) & (is_point == points), as_tuple=True)[0]
                if rows.numel() == 0:
                    continue
                if points:
                    pts = batch["points"][rows][None, :, None, :]  # (1, prompts, 1 point, 2)
                    labels = torch.ones(pts.shape[:3], dtype=torch.long, device=pts.device)
                    kw = {"input_points": pts, "input_labels": labels}
                else:
                    kw = {"input_boxes": batch["boxes"][rows][None]}  # (1, prompts, 4)
                out = self.sam(image_embeddings=emb[i : i + 1], multimask_output=False, **kw)
                order.append(rows)
                logits.append(out.pred_masks[0, :, 0])
                ious.append(out.iou_scores[0, :, 0])
        # back into the order of batch["gt"]
        inverse = torch.argsort(torch.cat(order))
        masks = self._upsample(torch.cat(logits)[inverse], images)
        return {"masks": masks, "iou": torch.cat(ious)[inverse]}
