"""Data sets for the image-level tasks (classification: ImageFolder; semantic segmentation: images/ +
masks/ folders) and the loaders every task reads through (COCO detection data lives in
detection/coco.py; `tasks.Task.dataset` picks the reader and `Task.collate` makes its batches).

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

import functools
import math
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import UserError, first_line
from ..io import data_files, load_yaml

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
            if os.path.lexists(path):
                data = load_yaml(path, "data metadata")  # one line for every way of not being YAML
                if not isinstance(data, dict):
                    raise UserError(f"data metadata '{path}' must be a mapping")
                return data
    return {}


def _default_hflip(meta: Dict[str, Any]) -> float:
    return 0.5 if meta.get("flip_invariant", True) else 0.0


def _normalize_params() -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def segmentation_size(width: int, height: int, img_size: int) -> Tuple[int, int]:
    """(width, height) a segmentation image of width x height is resized to: the aspect ratio kept, the longer
    side `img_size`, the shorter one rounded to a multiple of gcd(img_size, 32), so that it tiles the
    backbone's patches and stages as `img_size` does (a square image becomes img_size x img_size)."""
    step = math.gcd(int(img_size), 32)
    long_side, short_side = max(width, height), min(width, height)
    short = min(img_size, max(step, int(round(img_size * short_side / long_side / step)) * step))
    return (img_size, short) if width >= height else (short, img_size)


def segmentation_image(image, img_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """An RGB PIL image as the segmentation model sees it: bicubic resize to `segmentation_size` (aspect
    kept, longer side img_size), then normalized (mean/std as (3, 1, 1) tensors). Shared by
    `SegmentationFolder` and `sparsevit visualize`."""
    size = segmentation_size(image.size[0], image.size[1], img_size)
    if image.size != size:
        image = image.resize(size, Image.BICUBIC)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    return (x - mean) / std


#: what PIL raises for a file that is not a readable image (empty, corrupt, truncated, too large)
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


#: what a training run's unreadable image adds to its error line (evaluate and visualize take no run config)
SKIP_HINT = " (set data.skip_bad_images: true in the run config to skip such files)"


def read_image(path: str | os.PathLike, hint: str = "") -> Image.Image:
    """An image file as an 8-bit RGB PIL image, decoded now; UserError naming the file when it cannot be
    read (with `hint` appended). 16-bit greyscale (PIL modes I;16* and I) is scaled to 8 bit (value / 257)
    instead of being clipped to white by PIL's convert."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I"):
                wide = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
            return image.convert("RGB")
    except BAD_IMAGE_ERRORS as e:
        raise UserError(f"cannot read image '{path}': {first_line(e)}{hint}") from None


def _hint(skip_bad_images: Optional[bool]) -> str:
    """A training run (which says skip_bad_images true or false) can skip unreadable images; other
    commands (skip_bad_images None) take no run config, so their error line does not mention it."""
    return SKIP_HINT if skip_bad_images is not None else ""


def readable_images(paths: Sequence[Path]) -> Tuple[List[int], List[Path]]:
    """(indices of the readable images, the unreadable files) of `paths`, each fully decoded once."""
    good, bad = [], []
    for i, path in enumerate(paths):
        try:
            read_image(path)
            good.append(i)
        except UserError:
            bad.append(Path(path))
    return good, bad


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


#: the split folders a data set holds (a --data naming one of them is one level too deep)
SPLIT_NAMES = ("train", "val", "test")


def _require_dir(path: Path) -> None:
    if path.is_dir():
        return
    given = path.parent  # `--data mydata/train`: its split folder would be mydata/train/train
    if given.name in SPLIT_NAMES and path.name in SPLIT_NAMES and (given.parent / path.name).is_dir():
        raise UserError(f"data folder '{path}' not found: --data is the folder holding train/ and val/; pass "
                        f"'{given.parent}', not '{given}'")
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
                 hflip: Optional[float] = None, skip_bad_images: Optional[bool] = None):
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

            @staticmethod
            def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
                # io.data_files, the listing the pipeline's data fingerprint reads too (hidden names skipped,
                # FIFOs refused), instead of torchvision's walk
                return [(str(p), class_to_idx[c]) for c in classes if os.path.isdir(os.path.join(directory, c))
                        for p in data_files(os.path.join(directory, c), IMAGE_EXTENSIONS)]

        try:
            self.folder = _Folder(str(folder), transform=classification_transform(self.img_size, train, hflip),
                                  loader=functools.partial(read_image, hint=_hint(skip_bad_images)),
                                  is_valid_file=lambda p: _is_image(os.path.basename(p)),
                                  allow_empty=True)
        except FileNotFoundError as e:
            raise UserError(f"cannot read '{folder}': {first_line(e)}") from None
        #: unreadable images left out (only with skip_bad_images; otherwise reading one raises)
        self.skipped: List[Path] = []
        if skip_bad_images:
            good, self.skipped = readable_images([p for p, _ in self.folder.samples])
            self.folder.samples = [self.folder.samples[i] for i in good]
            self.folder.imgs = self.folder.samples
            self.folder.targets = [t for _, t in self.folder.samples]
        if len(self.folder) == 0:
            raise UserError(f"no images in '{folder}' (expected {folder}/<class>/<image>.png)")
        self.classes: List[str] = list(classes)
        self.num_classes: int = len(classes)
        self.targets: List[int] = list(self.folder.targets)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return self.folder[i]

    def image_path(self, i: int) -> Path:
        """The file of item `i` (to draw it, e.g. the pipeline's kept-window pictures)."""
        return Path(self.folder.samples[i][0])


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
                 num_classes: Optional[int] = None, hflip: Optional[float] = None, skip_bad_images: Optional[bool] = None):
        self.root = Path(root)
        self.split = split
        self.img_size = int(img_size)
        self.train = train
        image_dir, mask_dir = self.root / split / "images", self.root / split / "masks"
        _require_dir(self.root / split)
        _require_dir(image_dir)
        _require_dir(mask_dir)
        images = data_files(image_dir, IMAGE_EXTENSIONS, recursive=False)
        if not images:
            raise UserError(f"no images in '{image_dir}'")
        masks = {p.stem: p for p in data_files(mask_dir, (".png",), recursive=False)}
        pairs = []
        for img in images:
            if img.stem not in masks:
                raise UserError(f"mask missing for image '{img}' (expected '{mask_dir / (img.stem + '.png')}')")
            pairs.append((img, masks.pop(img.stem)))
        if masks:
            stray = sorted(masks)[0]
            raise UserError(f"mask '{masks[stray]}' has no image in '{image_dir}'")
        self.skipped: List[Path] = []
        if skip_bad_images:
            good, self.skipped = readable_images([img for img, _ in pairs])
            pairs = [pairs[i] for i in good]
            if not pairs:
                raise UserError(f"no readable images in '{image_dir}'")
        self.pairs: List[Tuple[Path, Path]] = pairs
        self._hint = _hint(skip_bad_images)

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

    def image_path(self, i: int) -> Path:
        """The image file of item `i`."""
        return self.pairs[i][0]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path, self._hint)
        try:
            mask = Image.open(mask_path)
            mask.load()
        except BAD_IMAGE_ERRORS as e:
            raise UserError(f"cannot read mask '{mask_path}': {first_line(e)}") from None
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise UserError(f"mask '{mask_path}' must be a single-channel PNG of class ids, got mode {mask.mode}")
        if mask.size != image.size:
            raise UserError(f"mask '{mask_path}' is {mask.size[0]}x{mask.size[1]}, its image "
                            f"{image.size[0]}x{image.size[1]}")
        ids = np.asarray(mask)  # checked at full size: resizing may drop the one bad pixel
        bad = ids[((ids < 0) | (ids >= self.num_classes)) & (ids != IGNORE_INDEX)]
        if bad.size:
            raise UserError(f"mask '{mask_path}' has class id {int(bad[0])}, but the data set has "
                            f"{self.num_classes} classes (ids 0-{self.num_classes - 1}, {IGNORE_INDEX} = ignore)")
        x = segmentation_image(image, self.img_size, self._mean, self._std)
        size = (x.shape[-1], x.shape[-2])
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
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
    return ImageFolderClassification(path, split, img_size, train, hflip=kw.get("hflip"),
                                     skip_bad_images=kw.get("skip_bad_images"))


def _build_segmentation(path: Path, split: str, img_size: int, train: bool, **kw: Any) -> Dataset:
    return SegmentationFolder(_segmentation_root(path, split), split, img_size, train,
                              num_classes=kw.get("num_classes"), hflip=kw.get("hflip"),
                              skip_bad_images=kw.get("skip_bad_images"))


#: task name -> builder(path, split, img_size, train, **options); add a task by adding an entry
DATASETS: Dict[str, Callable[..., Dataset]] = {
    "classification": _build_classification,
    "segmentation": _build_segmentation,
}


def build_dataset(path: str | os.PathLike, task: str, split: str, img_size: int, train: bool,
                  num_classes: Optional[int] = None, hflip: Optional[float] = None,
                  skip_bad_images: Optional[bool] = None) -> Dataset:
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
    return builder(root, split, int(img_size), train, num_classes=num_classes, hflip=hflip,
                   skip_bad_images=skip_bad_images)


# --------------------------------------------------------------------------------------------- loaders
def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool, drop_last: bool,
                  rank: int = 0, world: int = 1) -> List[List[int]]:
    """This rank's batches of one epoch: a permutation seeded by (seed, epoch), sharded like
    DistributedSampler (padded by wrapping so every rank has the same number of batches)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if world > 1:
        total = math.ceil(n / world) * world
        order = (order + order[: total - n])[rank:total:world] if shuffle else order[rank::world]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i: i + batch_size] for i in range(0, stop, batch_size)]


class BatchList(Sampler):
    """A DataLoader batch sampler over a fixed list of batches (e.g. `epoch_batches`), from batch
    `start` on (a resumed epoch skips the batches it already trained on). With `sample_seed` every item
    is a (seed, index) pair: `SeededSamples` draws the item's augmentation from that seed, so what a
    sample looks like depends only on (sample_seed, batch, position), not on the number of workers, on
    which worker loads it or on where a run was resumed."""

    def __init__(self, batches: Sequence[Sequence[int]], start: int = 0, sample_seed: Optional[int] = None):
        self.batches, self.start, self.sample_seed = [list(b) for b in batches], int(start), sample_seed

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)

    def __iter__(self) -> Iterator[List[Any]]:
        for b in range(self.start, len(self.batches)):
            if self.sample_seed is None:
                yield self.batches[b]
            else:
                base = (self.sample_seed * 1_000_003 + b) * 4_099
                yield [((base + k) % 2 ** 63, i) for k, i in enumerate(self.batches[b])]


class SeededSamples(Dataset):
    """`dataset[i]` with torch's and Python's RNG seeded from the (seed, i) pair it is indexed with, in a
    forked RNG state, so the caller's (trainer's) random streams are not touched by data loading."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        seed, i = key
        # CPU generator only: torch.manual_seed also seeds every CUDA device and costs ~0.25 ms a call
        generator = torch.default_generator
        states = random.getstate(), generator.get_state()
        try:
            generator.manual_seed(seed)
            random.seed(seed)  # timm's RandomResizedCrop draws from `random`
            return self.dataset[i]
        finally:
            random.setstate(states[0])
            generator.set_state(states[1])


def _seed_worker(worker_id: int) -> None:
    """DataLoader seeds torch and `random` per worker from its generator; numpy needs it by hand."""
    np.random.seed(torch.initial_seed() % 2 ** 32)


def build_loader(dataset: Dataset, batches: Sequence[Sequence[int]], num_workers: int = 0, start: int = 0,
                 sample_seed: Optional[int] = None, collate_fn: Optional[Callable[[List[Any]], Any]] = None
                 ) -> DataLoader:
    """A DataLoader reading `batches` (lists of indices of `dataset`) in order from batch `start` on, with
    `num_workers` worker processes; with `sample_seed` the random augmentation of every sample is a pure
    function of that seed and the sample's place in `batches` (see `BatchList`). `collate_fn` (e.g. a
    task's `collate`) makes a batch of items; default: torch's, which stacks tensors and numbers."""
    sampler = BatchList(batches, start, sample_seed)
    data = dataset if sample_seed is None else SeededSamples(dataset)
    return DataLoader(data, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                      worker_init_fn=_seed_worker if num_workers > 0 else None,
                      generator=torch.Generator().manual_seed(0 if sample_seed is None else sample_seed))


def iterate(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches; a UserError raised in a worker process (a file that cannot be read) comes
    back as the same one line instead of DataLoader's page of worker traceback."""
    try:
        yield from loader
    except UserError as e:
        text = str(e)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.strip().splitlines() if "UserError: " in line]
        raise UserError(last[-1].split("UserError: ", 1)[1] if last else first_line(e)) from None
