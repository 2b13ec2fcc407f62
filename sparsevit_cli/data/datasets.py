"""Data sets and loaders for the two tasks the trainer and the search evaluate: classification
(ImageFolder) and semantic segmentation (images/ + masks/ folders).

Every malformed input (missing folder, no images, an image without its mask, ...) raises UserError with
one line naming the path, because these are the mistakes a user makes when pointing the toolkit at
their own data, and a torchvision traceback does not say which folder is wrong.

Augmentation is deliberately mild: the objects that matter in high-resolution images (and in the
demo data) are small, and a heavy RandomResizedCrop would crop them out or blow them up, hiding
exactly the effect SparseViT is about. Horizontal flips are used unless the data set declares itself
not flip invariant (``flip_invariant: false`` in its ``demo_data.yaml`` / ``dataset.yaml``; the
digit demo data does, as a mirrored 2 is not a 2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import UserError, first_line

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: files a data folder may carry to describe itself (the demo writes the first; users may write the second)
META_FILES = ("demo_data.yaml", "dataset.yaml")
TRAIN_SCALE = (0.75, 1.0)  # RandomResizedCrop area range: keeps small objects in the frame


def _read_meta(*folders: Path) -> Dict[str, Any]:
    """The first metadata mapping found in ``folders`` (in order), or {}."""
    for folder in folders:
        for name in META_FILES:
            path = folder / name
            if path.is_file():
                try:
                    with open(path) as f:
                        data = yaml.safe_load(f)
                except (OSError, yaml.YAMLError) as e:
                    raise UserError(f"cannot read data metadata '{path}': {first_line(e)}") from None
                if not isinstance(data, dict):
                    raise UserError(f"data metadata '{path}' must be a mapping")
                return data
    return {}


def _default_hflip(meta: Dict[str, Any]) -> float:
    return 0.5 if meta.get("flip_invariant", True) else 0.0


def _normalize_params() -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def segmentation_image(image, img_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """An RGB PIL image as the segmentation model sees it: bicubic resize to S x S, then normalized
    (mean/std as (3, 1, 1) tensors). Shared by `SegmentationFolder` and `sparsevit visualize`."""
    size = (img_size, img_size)
    if image.size != size:
        image = image.resize(size, Image.BICUBIC)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return (x - mean) / std


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"data folder '{path}' not found")


# --------------------------------------------------------------------------------------------- classification
def classification_transform(img_size: int, train: bool, hflip: float = 0.5):
    """timm's transform at ``img_size``: train = mild RandomResizedCrop (75-100 % of the area, near-square)
    + optional flip + light colour jitter; eval = resize + center crop with crop_pct 1.0 (nothing cut off)."""
    from timm.data import create_transform

    mean, std = _normalize_params()
    if train:
        return create_transform(input_size=(3, img_size, img_size), is_training=True, scale=TRAIN_SCALE,
                                ratio=(0.9, 1.1), hflip=hflip, vflip=0.0, color_jitter=0.2,
                                interpolation="bicubic", re_prob=0.0, mean=mean, std=std)
    return create_transform(input_size=(3, img_size, img_size), is_training=False, crop_pct=1.0,
                            interpolation="bicubic", mean=mean, std=std)


class ImageFolderClassification(Dataset):
    """``root/split/<class>/<image>`` as (normalized image tensor 3 x S x S, int label).

    The class list comes from ``root/train`` when it exists (else from ``root/split``), so a val split
    missing a class still maps every name to the index the model was trained with.
    """

    def __init__(self, root: str | os.PathLike, split: str, img_size: int, train: bool,
                 hflip: Optional[float] = None):
        from torchvision.datasets import ImageFolder

        self.root = Path(root)
        self.split = split
        self.img_size = int(img_size)
        folder = self.root / split
        _require_dir(self.root)
        _require_dir(folder)
        subdirs = {p.name for p in folder.iterdir() if p.is_dir()}
        if subdirs and subdirs <= {"images", "masks"}:
            raise UserError(f"'{folder}' holds images/ and masks/: a segmentation layout, use task segmentation")
        class_dir = self.root / "train" if (self.root / "train").is_dir() else folder
        classes = sorted(p.name for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"no class folders in '{class_dir}' (expected {class_dir}/<class>/<image>)")
        extra = sorted(subdirs - set(classes) - {n for n in subdirs if n.startswith(".")})
        if extra:
            raise UserError(f"'{folder}' has class folders not in '{class_dir}': {', '.join(extra[:5])}")
        hflip = _default_hflip(_read_meta(self.root)) if hflip is None else hflip
        class_to_idx = {c: i for i, c in enumerate(classes)}

        class _Folder(ImageFolder):  # fixed class list instead of torchvision's scan of this split
            def find_classes(self, directory):
                return classes, class_to_idx

        try:
            self.folder = _Folder(str(folder), transform=classification_transform(self.img_size, train, hflip),
                                  is_valid_file=lambda p: _is_image(os.path.basename(p)), allow_empty=True)
        except FileNotFoundError as e:
            raise UserError(f"cannot read '{folder}': {first_line(e)}") from None
        if len(self.folder) == 0:
            raise UserError(f"no images in '{folder}' (expected {folder}/<class>/<image>.png)")
        self.classes: List[str] = list(classes)
        self.num_classes: int = len(classes)
        self.targets: List[int] = list(self.folder.targets)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return self.folder[i]


# --------------------------------------------------------------------------------------------- segmentation
class SegmentationFolder(Dataset):
    """``root/split/images/<stem>.<ext>`` with ``root/split/masks/<stem>.png`` as (normalized image
    tensor 3 x S x S, mask LongTensor S x S; 255 = ignore).

    Images are resized to S x S (bicubic), masks with nearest neighbour (labels must not blend);
    training flips image and mask together. ``num_classes`` (background included) comes from the
    folder's metadata (``seg_num_classes`` in ``demo_data.yaml`` or ``dataset.yaml``, in ``root`` or
    ``root/..``); the argument is needed only where there is none.
    """

    def __init__(self, root: str | os.PathLike, split: str, img_size: int, train: bool,
                 num_classes: Optional[int] = None, hflip: Optional[float] = None):
        self.root = Path(root)
        self.split = split
        self.img_size = int(img_size)
        self.train = train
        image_dir, mask_dir = self.root / split / "images", self.root / split / "masks"
        _require_dir(self.root / split)
        _require_dir(image_dir)
        _require_dir(mask_dir)
        images = sorted(p for p in image_dir.iterdir() if p.is_file() and _is_image(p.name))
        if not images:
            raise UserError(f"no images in '{image_dir}'")
        masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
        pairs = []
        for img in images:
            if img.stem not in masks:
                raise UserError(f"mask missing for image '{img}' (expected '{mask_dir / (img.stem + '.png')}')")
            pairs.append((img, masks.pop(img.stem)))
        if masks:
            stray = sorted(masks)[0]
            raise UserError(f"mask '{masks[stray]}' has no image in '{image_dir}'")
        self.pairs: List[Tuple[Path, Path]] = pairs

        meta = _read_meta(self.root, self.root.parent)
        if meta.get("seg_num_classes") is not None:
            self.num_classes = int(meta["seg_num_classes"])
        elif num_classes is not None:
            self.num_classes = int(num_classes)
        else:
            raise UserError(f"segmentation data '{self.root}' does not say its number of classes: add a "
                            f"dataset.yaml with 'seg_num_classes: N' (background included) or pass num_classes")
        self.hflip = 0.0 if not train else (_default_hflip(meta) if hflip is None else float(hflip))
        mean, std = _normalize_params()
        self._mean = torch.tensor(mean).view(3, 1, 1)
        self._std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        img_path, mask_path = self.pairs[i]
        image = Image.open(img_path).convert("RGB")
        mask = Image.open(mask_path)
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise UserError(f"mask '{mask_path}' must be a single-channel PNG of class ids, got mode {mask.mode}")
        if mask.size != image.size:
            raise UserError(f"mask '{mask_path}' is {mask.size[0]}x{mask.size[1]}, its image "
                            f"{image.size[0]}x{image.size[1]}")
        size = (self.img_size, self.img_size)
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        x = segmentation_image(image, self.img_size, self._mean, self._std)
        y = torch.from_numpy(np.array(mask, dtype=np.int64))
        if self.hflip > 0 and torch.rand(()) < self.hflip:  # torch RNG: seeded by the trainer and per worker
            x, y = x.flip(-1), y.flip(-1)  # normalizing is per pixel, so before or after the flip is the same
        return x, y


def _segmentation_root(path: Path, split: str) -> Path:
    """The folder holding ``split/images``: ``path`` itself, or ``path/seg`` when given the demo root."""
    for root in (path, path / "seg"):
        if (root / split / "images").is_dir():
            return root
    return path


# --------------------------------------------------------------------------------------------- dispatch
def _build_classification(path: Path, split: str, img_size: int, train: bool, **kw: Any) -> Dataset:
    return ImageFolderClassification(path, split, img_size, train, hflip=kw.get("hflip"))


def _build_segmentation(path: Path, split: str, img_size: int, train: bool, **kw: Any) -> Dataset:
    return SegmentationFolder(_segmentation_root(path, split), split, img_size, train,
                              num_classes=kw.get("num_classes"), hflip=kw.get("hflip"))


#: task name -> builder(path, split, img_size, train, **options); add a task by adding an entry
DATASETS: Dict[str, Callable[..., Dataset]] = {
    "classification": _build_classification,
    "segmentation": _build_segmentation,
}


def build_dataset(path: str | os.PathLike, task: str, split: str, img_size: int, train: bool,
                  num_classes: Optional[int] = None, hflip: Optional[float] = None) -> Dataset:
    """The ``split`` of the data at ``path`` for ``task``, at ``img_size`` x ``img_size``.

    For segmentation ``path`` may be the segmentation root or the demo data root (its ``seg/`` is used).
    Raises UserError with one line for an unknown task or a missing/empty/malformed folder.
    """
    builder = DATASETS.get(task)
    if builder is None:
        raise UserError(f"unknown task '{task}': expected one of {', '.join(sorted(DATASETS))}")
    if not path:
        raise UserError("no data path given")
    root = Path(path)
    _require_dir(root)
    return builder(root, split, int(img_size), train, num_classes=num_classes, hflip=hflip)


# --------------------------------------------------------------------------------------------- loaders
def _seed_worker(worker_id: int) -> None:
    """DataLoader seeds torch and `random` per worker from its generator; numpy needs it by hand."""
    np.random.seed(torch.initial_seed() % 2 ** 32)


def build_loader(dataset: Dataset, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                 distributed: bool = False) -> Tuple[DataLoader, Optional[DistributedSampler]]:
    """A DataLoader whose order is a function of ``seed`` (seeded generator), shuffled and dropping the
    last partial batch when ``train``. With ``distributed`` and an initialised process group every rank
    reads its shard through a DistributedSampler, returned too so the caller can ``set_epoch``; without a
    process group ``distributed`` is ignored (one process is a world of one)."""
    import torch.distributed as tdist

    sampler = None
    if distributed and tdist.is_available() and tdist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train)
    generator = torch.Generator().manual_seed(int(seed))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                        drop_last=train, num_workers=num_workers, generator=generator,
                        worker_init_fn=_seed_worker if num_workers > 0 else None,
                        persistent_workers=num_workers > 0)
    return loader, sampler
