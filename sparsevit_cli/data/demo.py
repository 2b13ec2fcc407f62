"""The built-in high-resolution demo data set: small handwritten digits on large textured canvases.

Why this data set: SparseViT pays off when most of a high-resolution image is background and the
object that decides the label is small. Each image here is a large RGB canvas (``img_size`` square)
with a smooth, textured, cluttered background and ONE small handwritten digit (a real scikit-learn
``load_digits`` sample, upscaled to 1/8 - 1/5 of the image side) whose class is the label. So

* more than 85 % of every image is background (windows a pruner may skip),
* the digit's strokes are a few pixels wide, so feeding the model a downscaled image loses exactly the
  detail that decides the label (the reason to keep the resolution and prune instead),
* everything ships with scikit-learn (digits and the two sample photos used as blurred clutter):
  nothing is downloaded.

Two layouts are written from the same pixels:

* classification (torchvision ImageFolder): ``out/{train,val}/<class>/<idx>.png``
* segmentation: ``out/seg/{train,val}/images/<idx>.png`` and ``.../masks/<idx>.png`` (mode "L":
  0 = background, class id + 1 on the digit's strokes, 255 = ignore on the thin anti-aliased edge
  of the strokes), so ``seg_num_classes = num_classes + 1``. With ``seg_labels="foreground"`` the
  masks say only *where* the digit is (1 on its strokes, ``seg_num_classes = 2``): telling ten digits
  apart pixel by pixel takes far more training than a CPU benchmark affords (a Semantic FPN trained from
  scratch on 256 canvases stayed at background-only mIoU), finding them does not (see SEG_LABELS).

and, with ``detection=True`` (``sparsevit demo-data --detection``), a third with other canvases:

* detection / instance segmentation (COCO format): ``out/det/{train,val}/<idx>.png`` and
  ``out/det/annotations/instances_{train,val}.json``: canvases of mixed aspect ratios in turn
  (``DET_ASPECTS``: 4:3, 3:4, 16:9, square; the longer side ``img_size``), several digits per canvas (``DET_DIGITS``), one
  instance each with its tight box and its mask (uncompressed RLE, ``alpha >= 0.5``), category ids
  1..num_classes named "0".."9". The classification and segmentation files do not change with it.

plus ``out/demo_data.yaml`` (metadata) and ``out/demo_index.csv`` (per image: label, which
``load_digits`` sample was drawn and where), which tests and debugging use.

Deterministic (same arguments, byte-identical files: numpy ``Generator`` streams keyed by seed,
split and image index; PNG carries no timestamp) and atomic (written into a temporary sibling
directory that is renamed into place, so a reader never sees half a data set).
"""
from __future__ import annotations

import colorsys
import csv
import io
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml
from PIL import Image, ImageDraw

from ..errors import UserError
from ..io import parse_yaml, write_error

#: bump when the pixels change, so an old folder is not mistaken for the current one
GENERATOR_VERSION = 1
GENERATOR_NAME = "sparsevit-demo-digits"
META_FILE = "demo_data.yaml"
INDEX_FILE = "demo_index.csv"
IGNORE_INDEX = 255
_SPLIT_CODE = {"train": 1, "val": 2}
#: digit height as a fraction of the image side (drawn uniformly per image)
DEFAULT_DIGIT_FRAC = (1 / 8, 1 / 5)
#: load_digits has 1797 samples; train draws from the first half, val from the second (disjoint writers' samples)
_N_DIGITS = 1797
#: digits per detection canvas (drawn uniformly per image) and their height as a fraction of the side
DET_DIGITS = (2, 4)
DET_DIGIT_FRAC = (1 / 9, 1 / 6)
#: detection canvas aspect ratios (width, height), one per image in turn: landscape 4:3, portrait 3:4,
#: wide 16:9 and square, as COCO's photos come; the longer side is img_size
DET_ASPECTS = ((4, 3), (3, 4), (16, 9), (1, 1))
#: the folder of the COCO detection layout inside the demo root
DET_LAYOUT = "det"
#: what the segmentation masks label: "digits": the digit's class (class id + 1; background 0);
#: "foreground": every digit alike (1; background 0), the class-agnostic task a small Semantic FPN learns in
#: a few hundred CPU steps (measured at 512 px: foreground IoU 88% after 50 steps of 8 canvases, where
#: "digits" was still at 13 mIoU after 384). The first is the default.
SEG_LABELS = ("digits", "foreground")
_HALF = _N_DIGITS // 2


# --------------------------------------------------------------------------------------------- sources
@lru_cache(maxsize=1)
def _digits() -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 N x 8 x 8 in [0, 1], targets int64 N) from scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images.astype(np.float32) / 16.0), d.target.astype(np.int64)


@lru_cache(maxsize=1)
def _clutter_photos() -> Tuple[np.ndarray, ...]:
    """scikit-learn's two bundled sample photos, shrunk to ~1/10 so a crop of them blown up to the
    canvas is a heavily blurred, natural-looking texture (cheap: no Gaussian blur at full size)."""
    from sklearn.datasets import load_sample_images

    out = []
    for photo in load_sample_images().images:
        im = Image.fromarray(photo)
        out.append(np.asarray(im.resize((im.width // 10, im.height // 10), Image.BOX)))
    return tuple(out)


def digit_source_split(split: str) -> range:
    """Indices of ``load_digits`` a split may draw from: disjoint halves, so val digits are unseen."""
    return range(0, _HALF) if split == "train" else range(_HALF, _N_DIGITS)


# --------------------------------------------------------------------------------------------- drawing
def _resize_f(a: np.ndarray, size: Tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """Resize a 2-D float array with PIL (mode "F"); size is (width, height)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, resample), dtype=np.float32)


def _background(rng: np.random.Generator, size) -> np.ndarray:
    """A size x size x 3 (or, for size (h, w), h x w x 3) float canvas in [0, 1]: dark-to-mid base colour,
    low-frequency colour noise, a blurred photo crop as clutter, a few faint non-digit strokes, fine
    sensor-like noise. Kept well below the digit's brightness so the digit stays the one salient object.
    A square canvas draws exactly what it drew before canvases could be oblong (same files)."""
    h, w = (size, size) if isinstance(size, int) else size
    base = rng.uniform(0.12, 0.38, size=3).astype(np.float32)
    img = np.empty((h, w, 3), dtype=np.float32)
    k = int(rng.integers(3, 7))  # low-frequency noise: a k x k grid blown up bicubically
    for c in range(3):
        low = _resize_f(rng.standard_normal((k, k)).astype(np.float32), (w, h))
        np.multiply(low, np.float32(0.07), out=img[:, :, c])
        img[:, :, c] += base[c]

    photos = _clutter_photos()
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    cw = int(rng.integers(pw // 4, pw // 2))
    cy, cx = int(rng.integers(0, ph - cw)), int(rng.integers(0, pw - cw))
    crop = np.asarray(Image.fromarray(photo[cy: cy + cw, cx: cx + cw]).resize((w, h), Image.BICUBIC))
    alpha = np.float32(rng.uniform(0.2, 0.45))
    img *= 1 - alpha
    img += crop.astype(np.float32) * (alpha * np.float32(0.6 / 255.0))

    # faint straight/curved strokes: edges that are NOT digits, so "any edge" does not give the label away
    strokes = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(strokes)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, np.array([w, h, w, h], dtype=np.float64)))
        width = max(1, int(round(max(h, w) * rng.uniform(0.004, 0.012))))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=255, width=width)
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=255, width=width)
    on = np.nonzero(np.asarray(strokes))  # binary strokes: blend only the pixels they cover
    tone = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    img[on] = img[on] * np.float32(0.88) + np.float32(0.12) * tone

    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    noise *= np.float32(0.015)
    img += noise
    return img


def _digit_alpha(rng: np.random.Generator, digit: np.ndarray, size: int,
                 digit_frac: Tuple[float, float] = DEFAULT_DIGIT_FRAC) -> np.ndarray:
    """The digit as an alpha matte (2-D float in [0, 1]): upscaled bicubically to a height drawn from
    ``digit_frac`` (fractions of the image side) with slight aspect and rotation jitter, then sharpened
    into crisp ink by a soft threshold (an 8x8 sample blown up is blurry; strokes should have edges)."""
    h = rng.uniform(size * digit_frac[0], size * digit_frac[1])
    w = h * rng.uniform(0.75, 1.0)
    padded = np.pad(digit, 1)  # zero border: the upscaled strokes fade to 0 at the edge
    scale = 10.0 / 8.0  # the pad grows the 8x8 box to 10x10
    up = _resize_f(padded, (max(4, int(round(w * scale))), max(4, int(round(h * scale)))))
    angle = float(rng.uniform(-12, 12))
    up = np.asarray(Image.fromarray(up, mode="F").rotate(angle, Image.BILINEAR, expand=True), dtype=np.float32)
    return np.clip((up - 0.45) / 0.2, 0.0, 1.0)


def render_example(seed: int, split: str, idx: int, label: int, digit_index: int, img_size: int,
                   digit_frac: Tuple[float, float] = DEFAULT_DIGIT_FRAC) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """One demo image: (RGB uint8 H x W x 3, mask uint8 H x W, placement info). A pure function of
    its arguments, so any single image can be regenerated without the rest of the data set."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 1, idx])
    img = _background(rng, img_size)
    digits, _ = _digits()
    alpha = _digit_alpha(rng, digits[digit_index], img_size, digit_frac)
    ah, aw = alpha.shape
    margin = int(round(0.06 * img_size))
    y = int(rng.integers(margin, max(margin + 1, img_size - ah - margin)))
    x = int(rng.integers(margin, max(margin + 1, img_size - aw - margin)))
    ah, aw = min(ah, img_size - y), min(aw, img_size - x)
    alpha = alpha[:ah, :aw]

    _composite_digit(img, alpha, x, y, rng)

    mask = np.zeros((img_size, img_size), dtype=np.uint8)
    m = np.where(alpha >= 0.5, label + 1, np.where(alpha > 0.05, IGNORE_INDEX, 0)).astype(np.uint8)
    mask[y: y + ah, x: x + aw] = m
    return _to_uint8(img), mask, {"x": x, "y": y, "w": aw, "h": ah}


def _composite_digit(img: np.ndarray, alpha: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    """Blend a digit matte into the float canvas at (x, y) in a random bright colour (in place)."""
    ah, aw = alpha.shape
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.2, 0.7), rng.uniform(0.88, 1.0)
    colour = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)
    a = alpha[:, :, None]
    img[y: y + ah, x: x + aw] = img[y: y + ah, x: x + aw] * (1 - a) + colour * a


def _to_uint8(img: np.ndarray) -> np.ndarray:
    img *= np.float32(255.0)
    img += np.float32(0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def det_canvas_size(img_size: int, idx: int) -> Tuple[int, int]:
    """(height, width) of detection canvas `idx`: the aspect ratios of `DET_ASPECTS` in turn, the longer
    side `img_size` (so every canvas fits an img_size square and digits keep one pixel scale)."""
    aw, ah = DET_ASPECTS[idx % len(DET_ASPECTS)]
    if aw >= ah:
        return int(round(img_size * ah / aw)), img_size
    return img_size, int(round(img_size * aw / ah))


def render_detection_example(seed: int, split: str, idx: int, digits: List[Tuple[int, int]], img_size: int,
                             digit_frac: Tuple[float, float] = DET_DIGIT_FRAC) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """One detection canvas of `det_canvas_size(img_size, idx)`: (RGB uint8 H x W x 3, one instance per placed
    digit: label, digit_index, bool mask H x W, tight box [x, y, w, h]). `digits` lists (label, load_digits
    index) to place; a digit that finds no free spot (boxes never overlap) in 50 tries is left out. Digit
    heights are `digit_frac` of `img_size` on every canvas. A pure function of its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 2, idx])
    H, W = det_canvas_size(img_size, idx)
    img = _background(rng, (H, W))
    samples, _ = _digits()
    margin = int(round(0.03 * img_size))
    taken: List[Tuple[int, int, int, int]] = []
    instances = []
    for label, digit_index in digits:
        alpha = _digit_alpha(rng, samples[digit_index], img_size, digit_frac)
        ah, aw = min(alpha.shape[0], H - 2 * margin), min(alpha.shape[1], W - 2 * margin)
        alpha = alpha[:ah, :aw]
        for _ in range(50):
            y = int(rng.integers(margin, H - ah - margin + 1))
            x = int(rng.integers(margin, W - aw - margin + 1))
            if all(x + aw + margin <= tx or tx + tw + margin <= x or y + ah + margin <= ty or ty + th + margin <= y
                   for tx, ty, tw, th in taken):
                break
        else:
            continue
        ink = alpha >= 0.5
        if not ink.any():
            continue
        taken.append((x, y, aw, ah))
        _composite_digit(img, alpha, x, y, rng)
        mask = np.zeros((H, W), dtype=bool)
        mask[y: y + ah, x: x + aw] = ink
        ys, xs = np.nonzero(ink)
        box = [x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1]
        instances.append({"label": label, "digit_index": digit_index, "mask": mask, "box": box})
    return _to_uint8(img), instances


def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
    """A bool H x W mask as COCO's uncompressed RLE (column-major run lengths, starting with a zero run):
    pycocotools reads it for crowd and non-crowd instances alike."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _det_plan(seed: int, split: str, n: int, num_classes: int) -> List[List[Tuple[int, int]]]:
    """(label, load_digits index) of every digit of every detection canvas: counts drawn per image,
    labels and samples balanced over all instances as in `_split_plan`."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 3])
    counts = rng.integers(DET_DIGITS[0], DET_DIGITS[1] + 1, size=n).tolist()
    flat = iter(_split_plan(seed + 7919, split, sum(counts), num_classes))
    return [[next(flat) for _ in range(c)] for c in counts]


def _split_plan(seed: int, split: str, n: int, num_classes: int) -> List[Tuple[int, int]]:
    """(label, load_digits index) per image: round-robin labels shuffled by the seed (balanced to
    within one), each class cycling through its own shuffled pool of samples from the split's half."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 0])
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    _, targets = _digits()
    src = np.asarray(digit_source_split(split))
    pools = {c: rng.permutation(src[targets[src] == c]) for c in range(num_classes)}
    used = {c: 0 for c in range(num_classes)}
    plan = []
    for lab in labels.tolist():
        pool = pools[lab]
        plan.append((lab, int(pool[used[lab] % len(pool)])))
        used[lab] += 1
    return plan


def _png_bytes(array: np.ndarray) -> bytes:
    """PNG-encode without metadata (deterministic bytes); low compression because noise does not compress."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- writer
def demo_metadata(img_size: int, n_train: int, n_val: int, seed: int, num_classes: int,
                  digit_frac: Tuple[float, float] = DEFAULT_DIGIT_FRAC, detection: bool = False,
                  seg_labels: str = SEG_LABELS[0]) -> Dict[str, Any]:
    """What ``demo_data.yaml`` holds; two folders with equal metadata hold byte-identical files."""
    meta = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "img_size": int(img_size),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "seed": int(seed),
        "num_classes": int(num_classes),
        "seg_num_classes": int(num_classes) + 1,
        "digit_frac": [float(digit_frac[0]), float(digit_frac[1])],
        "class_names": [str(c) for c in range(num_classes)],
        "ignore_index": IGNORE_INDEX,
        # mirrored digits are different glyphs: loaders must not flip these images for augmentation
        "flip_invariant": False,
        "layouts": {"classification": ".", "segmentation": "seg"},
    }
    if seg_labels != SEG_LABELS[0]:  # only then, so that the metadata of a default set stays as it was
        meta["seg_labels"] = seg_labels
        meta["seg_num_classes"] = 2
    if detection:  # only then, so that the metadata (and files) of a set without it stay as they were
        meta["layouts"]["detection"] = DET_LAYOUT
        meta["det_digits"] = list(DET_DIGITS)
        meta["det_digit_frac"] = [float(DET_DIGIT_FRAC[0]), float(DET_DIGIT_FRAC[1])]
        # in the metadata, so a folder written before canvases had mixed shapes is told apart
        meta["det_aspects"] = [f"{w}:{h}" for w, h in DET_ASPECTS]
    return meta


def _info(out: Path, meta: Dict[str, Any], written: bool) -> Dict[str, Any]:
    return {"root": str(out), "train": str(out / "train"), "val": str(out / "val"), "seg": str(out / "seg"),
            "n_train": meta["n_train"], "n_val": meta["n_val"], "num_classes": meta["num_classes"],
            "seg_num_classes": meta["seg_num_classes"], "img_size": meta["img_size"], "written": written,
            **({"det": str(out / meta["layouts"]["detection"])} if "detection" in meta["layouts"] else {})}


def _read_meta(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def write_demo_data(out_dir: str | os.PathLike, img_size: int = 224, n_train: int = 200, n_val: int = 100,
                    seed: int = 0, num_classes: int = 10, progress: bool = False,
                    overwrite: bool = False,
                    digit_frac: Tuple[float, float] = DEFAULT_DIGIT_FRAC, detection: bool = False,
                    seg_labels: str = SEG_LABELS[0]) -> Dict[str, Any]:
    """Write the demo data set (both layouts, see the module doc) to ``out_dir`` and return its paths
    and counts (``written`` is False when an identical data set was already there).

    An existing ``out_dir`` holding the same metadata is kept as is (idempotent, cheap to call before
    every run); one holding other demo data raises UserError unless ``overwrite``; a non-empty folder
    that is not demo data is never deleted. ``digit_frac`` bounds the digit's height as a fraction of
    the image side: the default puts 28-45 px digits on a 224 px canvas; since the digits carry only
    8x8 samples' worth of detail, downscaling costs accuracy once a digit falls below ~10 px, so smaller
    fractions make high resolution matter more. ``detection`` adds the COCO detection layout (``det``).
    ``seg_labels`` (one of `SEG_LABELS`) is what the segmentation masks label.
    """
    if not 32 <= img_size <= 8192:
        raise UserError(f"demo data img_size must be in 32..8192, got {img_size}")
    if n_train < 1 or n_val < 1:
        raise UserError(f"demo data needs at least one train and one val image, got {n_train} and {n_val}")
    if not 2 <= num_classes <= 10:
        raise UserError(f"demo data num_classes must be in 2..10 (digits), got {num_classes}")
    out = Path(out_dir)
    lo, hi = (float(v) for v in digit_frac)
    if not 0 < lo <= hi <= 0.5:
        raise UserError(f"demo data digit_frac must satisfy 0 < low <= high <= 0.5, got {digit_frac}")
    if seg_labels not in SEG_LABELS:
        raise UserError(f"demo data seg_labels must be one of {', '.join(SEG_LABELS)}, got {seg_labels!r}")
    meta = demo_metadata(img_size, n_train, n_val, seed, num_classes, (lo, hi), detection, seg_labels)

    if out.exists():
        if not out.is_dir():
            raise UserError(f"demo data target '{out}' exists and is not a directory")
        old = _read_meta(out / META_FILE)
        if old == meta:
            return _info(out, meta, written=False)
        if any(out.iterdir()):
            if old is None:
                raise UserError(f"'{out}' is a non-empty folder without {META_FILE}; refusing to write demo data into it")
            if not overwrite:
                diff = ", ".join(f"{k} {old.get(k)!r}->{v!r}" for k, v in meta.items() if old.get(k) != v)
                raise UserError(f"'{out}' already holds other demo data ({diff}); remove it first or write elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp: Optional[Path] = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:64]}.tmp-", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the data set should be readable like any folder
        _write_tree(tmp, meta, progress)
        _swap_into_place(tmp, out)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # full disk, read-only, ...: one line; a previous data set stays as it was
            raise write_error(e, out, "demo data set") from None
        raise
    return _info(out, meta, written=True)


def _write_tree(root: Path, meta: Dict[str, Any], progress: bool) -> None:
    """Render every image into ``root`` (a fresh temporary directory); the metadata file goes last."""
    seed, size, ncls = meta["seed"], meta["img_size"], meta["num_classes"]
    digit_frac = tuple(meta["digit_frac"])
    foreground_only = meta.get("seg_labels", SEG_LABELS[0]) == "foreground"
    splits = {"train": meta["n_train"], "val": meta["n_val"]}
    width = max(5, len(str(max(splits.values()) - 1)))
    for split in splits:
        for c in range(ncls):
            (root / split / str(c)).mkdir(parents=True)
        (root / "seg" / split / "images").mkdir(parents=True)
        (root / "seg" / split / "masks").mkdir(parents=True)

    bar, task = None, None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("demo data"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
        task = bar.add_task("render", total=sum(splits.values()))
        bar.start()
    rows = []
    try:
        for split, n in splits.items():
            for idx, (label, digit_index) in enumerate(_split_plan(seed, split, n, ncls)):
                rgb, mask, where = render_example(seed, split, idx, label, digit_index, size, digit_frac)
                name = f"{idx:0{width}d}.png"
                image_path = root / split / str(label) / name
                image_path.write_bytes(_png_bytes(rgb))
                _link_or_copy(image_path, root / "seg" / split / "images" / name)
                if foreground_only:  # every digit is class 1; background and the ignored edge stay
                    mask[(mask > 0) & (mask != IGNORE_INDEX)] = 1
                (root / "seg" / split / "masks" / name).write_bytes(_png_bytes(mask))
                rows.append([split, idx, name, label, digit_index, where["x"], where["y"], where["w"], where["h"]])
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    if "detection" in meta["layouts"]:
        _write_detection(root / meta["layouts"]["detection"], meta)
    with open(root / INDEX_FILE, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["split", "idx", "file", "label", "digit_index", "x", "y", "w", "h"])
        w.writerows(rows)
    with open(root / META_FILE, "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)


def _write_detection(root: Path, meta: Dict[str, Any]) -> None:
    """The COCO layout: canvases under ``root/<split>/`` and ``root/annotations/instances_<split>.json``."""
    seed, size, ncls = meta["seed"], meta["img_size"], meta["num_classes"]
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": c + 1, "name": str(c), "supercategory": "digit"} for c in range(ncls)]
    for split in ("train", "val"):
        n = meta[f"n_{split}"]
        width = max(5, len(str(n - 1)))
        (root / split).mkdir()
        images, annotations = [], []
        for idx, digits in enumerate(_det_plan(seed, split, n, ncls)):
            rgb, instances = render_detection_example(seed, split, idx, digits, size, tuple(meta["det_digit_frac"]))
            name = f"{idx:0{width}d}.png"
            (root / split / name).write_bytes(_png_bytes(rgb))
            images.append({"id": idx + 1, "file_name": name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])})
            for inst in instances:
                annotations.append({"id": len(annotations) + 1, "image_id": idx + 1, "category_id": inst["label"] + 1,
                                    "bbox": inst["box"], "area": int(inst["mask"].sum()), "iscrowd": 0,
                                    "segmentation": mask_to_rle(inst["mask"]), "digit_index": inst["digit_index"]})
        coco = {"info": {"description": f"{GENERATOR_NAME} v{GENERATOR_VERSION} detection, seed {seed}"},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(coco, f, separators=(",", ":"))


def _link_or_copy(src: Path, dst: Path) -> None:
    """The segmentation layout shows the very same image file: a hard link (no second copy on disk),
    or a byte copy where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished tree onto ``out``. rename(2) replaces an absent or empty directory in one
    step; an old demo tree is first renamed aside and deleted only after the new one is in place."""
    if out.exists() and any(out.iterdir()):
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def read_demo_index(root: str | os.PathLike) -> List[Dict[str, Any]]:
    """Rows of ``demo_index.csv`` (ints converted): which digit sample each image shows and where."""
    with open(Path(root) / INDEX_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("idx", "label", "digit_index", "x", "y", "w", "h"):
            r[k] = int(r[k])
    return rows
