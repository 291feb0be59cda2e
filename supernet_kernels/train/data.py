"""Training data: the format of users' own data, folder datasets, and the seeded data order.

Data format (also returned by :func:`data_format`)
--------------------------------------------------

Classification (:class:`~supernet_kernels.train.ClassificationTask`, timm models):

* any map-style ``Dataset`` (``__len__`` + ``__getitem__``; a list works) whose items are
  ``(image, label)``: ``image`` a float tensor ``(3, H, W)`` already normalized the way the model
  expects (every sample the same H, W; a timm ViT supernet resizes each batch to the active
  resolution itself), ``label`` an int (or 0-d integer tensor) in ``0 .. num_classes - 1``;
* or a folder of class subfolders (torchvision ``ImageFolder`` layout), read by
  :class:`ImageFolderDataset`::

      root/cat/001.jpg
      root/dog/xyz.png          # classes are the sorted subfolder names -> labels 0, 1, ...

Segmentation (:class:`~supernet_kernels.train.SegmentationTask`, segment-anything):

* any map-style ``Dataset`` whose items are ``(image, masks)``: ``image`` a float tensor
  ``(3, H, W)`` with values in [0, 1] (the task applies SAM's pixel mean / std), H = W = the
  image encoder's ``img_size``; ``masks`` a bool / uint8 (0 or 1) tensor ``(N, H, W)``, one
  non-empty binary mask per object (N >= 1, may differ between images);
* or a folder read by :class:`SegmentationFolder`::

      root/images/0001.jpg      # any PIL-readable image
      root/masks/0001.npz       # array "masks" (N, H, W) of 0 / 1, or
      root/masks/0001.png       # an instance-id map: 0 background, each other value one mask

  Images are resized to ``image_size`` (bilinear), masks with nearest neighbour.

Checks: ``task.validate_dataset(ds)`` runs before training starts (``Trainer.__init__``) on every
sample (or ``TrainConfig.validate_samples`` spread over the dataset) and raises ValueError naming
the sample index and the field (``train_data[7].label: 12 is out of range 0..9``).

Data order: :class:`StepBatchSampler` — epoch e is a permutation drawn from a generator seeded
with ``seed + e``; step s, micro-batch a, rank r reads a fixed slice of it, so the order of any
step is derived from (seed, epoch, step) alone and a resumed run reads exactly the batches an
uninterrupted run would. Incomplete final global batches of an epoch are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def data_format(task: str | None = None) -> str:
    """The documented data format (this module's docstring section), for ``"classification"``,
    ``"segmentation"`` or both (None)."""
    doc = __doc__ or ""
    start = doc.index("Classification (")
    seg = doc.index("Segmentation (")
    end = doc.index("Checks:")
    if task is None:
        return doc[start:end].strip()
    if task == "classification":
        return doc[start:seg].strip()
    if task == "segmentation":
        return doc[seg:end].strip()
    raise ValueError(
        f'data_format: task must be "classification", "segmentation" or None, got {task!r}'
    )


# --------------------------------------------------------------------------- folders
def _load_image(path: Path, size: int | tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            im = im.resize((hw[1], hw[0]), Image.BILINEAR)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return data.view(im.height, im.width, 3).permute(2, 0, 1).float() / 255.0


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` -> ``(image (3, S, S) float normalized, label)``; classes are the
    sorted subfolder names (``self.classes``), images resized to ``image_size`` and normalized
    with ``mean`` / ``std`` (ImageNet's by default; pass the model's, e.g. timm's
    ``model.pretrained_cfg["mean"]``). ``transform``, if given, replaces resize + normalize:
    a callable PIL image -> tensor (e.g. a torchvision transform)."""

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        transform=None,
        extensions=IMAGE_EXTENSIONS,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"ImageFolderDataset: {self.root} is not a folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"ImageFolderDataset: {self.root} has no class subfolders")
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, int]] = []
        for label, c in enumerate(self.classes):
            for p in sorted((self.root / c).rglob("*")):
                if p.is_file() and p.suffix.lower() in exts:
                    self.samples.append((p, label))
        if not self.samples:
            raise ValueError(f"ImageFolderDataset: no images {exts} under {self.root}")
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        if self.transform is not None:
            from PIL import Image

            with Image.open(path) as im:
                return self.transform(im.convert("RGB")), label
        return (_load_image(path, self.image_size) - self.mean) / self.std, label


class SegmentationFolder(Dataset):
    """``root/images/<stem>.<ext>`` + ``root/masks/<stem>.npz`` (array ``masks`` (N, H, W)) or
    ``root/masks/<stem>.png`` (instance-id map) -> ``(image (3, S, S) in [0, 1], masks (N, S, S)
    bool)`` with S = ``image_size`` (the SAM image encoder's ``img_size``)."""

    def __init__(
        self, root: str | os.PathLike, image_size: int = 1024, extensions=IMAGE_EXTENSIONS
    ):
        self.root = Path(root)
        images, masks = self.root / "images", self.root / "masks"
        if not images.is_dir() or not masks.is_dir():
            raise ValueError(f"SegmentationFolder: {self.root} needs images/ and masks/ folders")
        exts = tuple(e.lower() for e in extensions)
        self.samples: list[tuple[Path, Path]] = []
        for p in sorted(images.iterdir()):
            if not (p.is_file() and p.suffix.lower() in exts):
                continue
            m = next(
                (
                    masks / (p.stem + s)
                    for s in (".npz", ".png")
                    if (masks / (p.stem + s)).is_file()
                ),
                None,
            )
            if m is None:
                raise ValueError(
                    f"SegmentationFolder: no mask file masks/{p.stem}.npz or .png for {p.name}"
                )
            self.samples.append((p, m))
        if not self.samples:
            raise ValueError(f"SegmentationFolder: no images under {images}")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch.nn.functional as F

        ip, mp = self.samples[i]
        image = _load_image(ip, self.image_size)
        if mp.suffix == ".npz":
            import numpy as np

            with np.load(mp) as z:
                if "masks" not in z:
                    raise ValueError(f"SegmentationFolder: {mp} has no array 'masks'")
                masks = torch.from_numpy(np.asarray(z["masks"]).astype("uint8"))
        else:
            import numpy as np
            from PIL import Image

            with Image.open(mp) as im:
                ids = torch.from_numpy(np.asarray(im).astype("int64"))
            if ids.dim() == 3:
                ids = ids[..., 0]
            values = [v for v in ids.unique().tolist() if v != 0]
            masks = torch.stack([ids == v for v in values]) if values else ids[None] != ids[None]
        s = self.image_size
        masks = F.interpolate(masks[None].float(), size=(s, s), mode="nearest")[0] > 0.5
        return image, masks


# --------------------------------------------------------------------------- data order
class StepBatchSampler:
    """Index lists for steps ``start .. steps - 1``: per step ``grad_accum`` micro-batches of
    ``batch_size`` indices for this ``rank``. The global batch of one micro-batch is
    ``batch_size * world_size`` consecutive entries of the epoch's permutation (rank r takes
    the r-th slice, like ``DistributedSampler``), so 2 ranks x 4 read the same samples as 1 x 8.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        grad_accum: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start: int = 0,
        steps: int = 0,
        shuffle: bool = True,
    ):
        self.n, self.batch_size, self.grad_accum = n, batch_size, grad_accum
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.start, self.steps, self.shuffle = start, steps, shuffle
        self.per_step = batch_size * world_size * grad_accum
        if n < self.per_step:
            raise ValueError(
                f"train_data has {n} samples, fewer than one step's global batch "
                f"(batch_size {batch_size} x grad_accum {grad_accum} x world_size {world_size} = "
                f"{self.per_step})"
            )
        self.steps_per_epoch = n // self.per_step
        self._perm: tuple[int, torch.Tensor] | None = None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                self._perm = (epoch, torch.randperm(self.n, generator=g))
            else:
                self._perm = (epoch, torch.arange(self.n))
        return self._perm[1]

    def indices(self, step: int, micro: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        gb = self.batch_size * self.world_size
        off = k * self.per_step + micro * gb + self.rank * self.batch_size
        return self.permutation(epoch)[off : off + self.batch_size].tolist()

    def __iter__(self):
        for s in range(self.start, self.steps):
            for a in range(self.grad_accum):
                yield self.indices(s, a)

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.grad_accum


def check_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """The sample indices a dataset check looks at: all of them, or ``limit`` of them (the
    first, the last, and the rest spread by a seeded draw)."""
    if limit is None or n <= limit:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    rest = torch.randperm(n - 2, generator=g)[: max(0, limit - 2)] + 1
    return sorted({0, n - 1, *rest.tolist()})


def load_dataset(
    path: str | Path,
    task: str = "classification",
    image_size: int = 224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
):
    """A dataset in the documented formats (module doc): a folder (:class:`ImageFolderDataset`
    for classification, normalized with ``mean`` / ``std``; :class:`SegmentationFolder` for
    ``task="segmentation"``) or a ``.npz`` with arrays ``images`` (N, 3, H, W) float, already
    normalized, and ``labels`` (N,) int (classification; a list of ``(image, label)``).
    ``FileNotFoundError`` for a missing path, ``ValueError`` for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data: no file or folder {path}")
    if path.is_dir():
        if task == "segmentation":
            return SegmentationFolder(path, image_size=image_size)
        return ImageFolderDataset(path, image_size=image_size, mean=mean, std=std)
    if path.suffix.lower() != ".npz":
        raise ValueError("expected a folder (see `supernet-kernels train --help`) or a .npz file")
    import numpy as np

    with np.load(path) as z:
        if "images" not in z or "labels" not in z:
            raise ValueError("a .npz needs arrays 'images' (N, 3, H, W) and 'labels' (N,)")
        x = torch.from_numpy(np.asarray(z["images"], dtype="float32"))
        y = torch.from_numpy(np.asarray(z["labels"]).astype("int64"))
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(
            f"images {tuple(x.shape)} / labels {tuple(y.shape)}: expected (N, 3, H, W) and (N,)"
        )
    return [(x[i], int(y[i])) for i in range(len(x))]
