"""COCO-format detection data (an image folder + an instances JSON) and COCO box / mask AP.

Reading goes through pycocotools (the format's reference reader), after a validation pass that turns
every mistake a user makes with their own annotations into one line naming the file and the fault:
a missing or corrupt JSON, an empty annotation list, an unknown category or image id, an image listed
but absent from the folder, a box outside its image. The whole file is checked when the data set is
built, before a run writes anything.

Labels: COCO category ids (any integers) map to contiguous labels 1..K in ascending id order; 0 is the
background class of torchvision's detectors, so a detector for K categories has K + 1 outputs.

AP: pycocotools' COCOeval on the detector's predictions converted to COCO results (xywh boxes,
original category ids, RLE-encoded masks thresholded at 0.5). Never a home-made AP.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.demo import DET_LAYOUT
from ..errors import UserError, first_line, shorten

#: how far (px) a box may reach past its image's border before it is refused (rounding in COCO's own
#: annotations reaches a fraction of a pixel past the edge); boxes within it are clipped
BOX_TOLERANCE = 1.0
#: mask probabilities above this are the instance (torchvision's Mask R-CNN convention)
MASK_THRESHOLD = 0.5
#: COCOeval iouType per metric name
IOU_TYPES = {"box_ap": "bbox", "mask_ap": "segm"}


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress ('loading annotations...', 'DONE (t=0.01s)') to stdout; a CLI whose
    stdout may be parsed keeps it quiet."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def split_paths(root: str | os.PathLike, split: str) -> Tuple[Path, Path]:
    """(image folder, instances JSON) of `split` under a COCO-style root: ``<root>/<split>/`` and
    ``<root>/annotations/instances_<split>.json``; COCO's own ``<split>2017`` names are accepted too."""
    root = Path(root)
    for name in (split, f"{split}2017"):
        ann = root / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            return root / name, ann
    return root / split, root / "annotations" / f"instances_{split}.json"


def _load_json(ann_file: Path) -> Dict[str, Any]:
    if not ann_file.is_file():
        given = ann_file.parent.parent  # `--data coco/train`: the annotations are beside it, not in it
        if given.name in ("train", "val", "test") and (given.parent / "annotations" / ann_file.name).is_file():
            raise UserError(f"annotation file '{ann_file}' not found: --data is the folder holding train/, val/ "
                            f"and annotations/; pass '{given.parent}', not '{given}'")
        raise UserError(f"annotation file '{ann_file}' not found")
    from ..io import note_input
    note_input(ann_file, "annotation file")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"annotation file '{ann_file}' is not valid JSON: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"annotation file '{ann_file}' must hold a JSON object (COCO instances format)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"annotation file '{ann_file}' has no '{key}' list (COCO instances format)")
    return data


def _quote(value: Any) -> str:
    """A value from the file as an error line quotes it: its repr (a string's newlines escaped), cut short."""
    return shorten(repr(value), 40)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rle_counts(counts: str) -> List[int]:
    """The run lengths of COCO's compressed RLE string (pycocotools' rleFrString, whose C code trusts its input:
    a garbage string decodes to runs that overrun the mask). ValueError when the string is not one."""
    runs: List[int] = []
    data, p = counts.encode("ascii"), 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("a run ends in the middle")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[p])!r} is not in COCO's RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def segmentation_fault(segm: Any, height: Any, width: Any) -> Optional[str]:
    """Why `segm` is not a COCO segmentation of an image of height x width (None when it is one): polygons
    (a non-empty list of lists of >= 3 finite x, y pairs), or RLE (`size` [height, width] of the image, `counts`
    a list of non-negative run lengths or COCO's compressed string, summing to height * width)."""
    if isinstance(segm, list):
        if not segm:
            return "is an empty list"
        for k, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f"polygon {k} is not a list of numbers"
            if len(poly) < 6 or len(poly) % 2:
                return f"polygon {k} has {len(poly)} coordinates (needs x, y pairs, at least 3)"
            if not all(math.isfinite(v) for v in poly):
                return f"polygon {k} has a non-finite coordinate"
        return None
    if not isinstance(segm, dict):
        return f"must be polygons or RLE, got {type(segm).__name__} {_quote(segm)}"
    size, counts = segm.get("size"), segm.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE needs 'size' [height, width], got {_quote(size)}"
    if size != [height, width]:
        return f"RLE size {size} is not the image's [height, width] [{height}, {width}]"
    if isinstance(counts, list):
        if not all(_is_int(v) for v in counts):
            return "RLE counts must be whole numbers"
        runs = counts
    elif isinstance(counts, str):
        try:
            runs = _rle_counts(counts)
        except (ValueError, UnicodeEncodeError) as e:
            return f"RLE counts is not COCO's compressed RLE ({first_line(e)})"
    else:
        return f"RLE needs 'counts' (a list or a string), got {type(counts).__name__}"
    if any(v < 0 for v in runs):
        return "RLE counts has a negative run"
    if sum(runs) != height * width:
        return f"RLE counts cover {sum(runs)} pixels, the image has {height} x {width} = {height * width}"
    return None


def _valid_segmentation(segm: Any) -> bool:
    """COCO polygons (lists of >= 3 x, y pairs) or RLE (a dict with size and counts)."""
    if isinstance(segm, dict):
        return "size" in segm and "counts" in segm
    return (isinstance(segm, list) and bool(segm)
            and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm))


def _annotation_name(ann: Any, position: int) -> str:
    """How an error names an annotation: by its COCO `id` (what a user searches the file for), with its
    position in the list (0-based) for files whose ids are missing or repeated."""
    ann_id = ann.get("id") if isinstance(ann, dict) else None
    if ann_id is None:
        return f"annotation #{position} in the list (no id)"
    return f"annotation id {_quote(ann_id)} (#{position} in the list)"


def _check_entries(where: str, kind: str, entries: List[Any], fields: Dict[str, Any]) -> None:
    """Each image or category entry: a mapping whose `fields` ({name: (check, what it must be)}) hold."""
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"{where}: {kind} entry {n} is a {type(entry).__name__}, not a mapping")
        for name, (check, must) in fields.items():
            if name not in entry:
                raise UserError(f"{where}: {kind} entry {n} lacks '{name}'")
            if not check(entry[name]):
                raise UserError(f"{where}: {kind} entry {n} ('id' {_quote(entry.get('id'))}): '{name}' must be "
                                f"{must}, got {_quote(entry[name])}")


def validate_coco(data: Dict[str, Any], ann_file: Path, image_dir: Path, masks: bool = False) -> None:
    """UserError with one line for the first fault in a COCO instances mapping, naming the entry (an
    annotation by its id) and the field: the format's types (ids integers, `file_name` a string, `iscrowd`
    0 or 1, `area` a finite number, `bbox` four finite numbers, `segmentation` polygons or RLE that fit the
    image), unique image, category and annotation ids, ids that exist, boxes inside their image, images that
    are files in `image_dir`. The one validator every COCO reader runs before training or scoring;
    `masks`: every annotation must carry a segmentation. Fills the optional fields COCOeval reads
    (``iscrowd`` 0, ``area`` of the box, ``id``) where a hand-written file leaves them out."""
    from ..io import InputFiles, note_input

    where = f"annotation file '{ann_file}'"
    if not data["annotations"]:
        raise UserError(f"{where} has an empty annotation list")
    if not data["categories"]:
        raise UserError(f"{where} has no categories")
    positive = (lambda v: _is_int(v) and v > 0, "a positive whole number")
    _check_entries(where, "image", data["images"], {"id": (_is_int, "a whole number"),
                                                    "file_name": (lambda v: isinstance(v, str) and v != "",
                                                                  "a file name (a string)"),
                                                    "width": positive, "height": positive})
    _check_entries(where, "category", data["categories"], {"id": (_is_int, "a whole number")})
    for kind, entries in (("image", data["images"]), ("category", data["categories"])):
        seen: Dict[int, int] = {}
        for n, entry in enumerate(entries):
            if entry["id"] in seen:  # a second entry would silently replace the first
                raise UserError(f"{where}: {kind} id {entry['id']} is used twice ({kind} entries "
                                f"{seen[entry['id']]} and {n}); ids must be unique")
            seen[entry["id"]] = n
    categories = {c["id"] for c in data["categories"]}
    images = {im["id"]: im for im in data["images"]}
    for im in images.values():
        path = image_dir / im["file_name"]
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            raise UserError(f"image '{shorten(repr(im['file_name'])[1:-1], 120)}' listed in {where} is missing from "
                            f"'{image_dir}'") from None
        if not stat.S_ISREG(mode):
            raise UserError(f"image '{shorten(repr(im['file_name'])[1:-1], 120)}' listed in {where} is not a regular file "
                            f"(a folder, FIFO, socket or device)")
        note_input(path, InputFiles.DATA)
    seen_ids: Dict[Any, int] = {}
    for i, ann in enumerate(data["annotations"]):
        what = _annotation_name(ann, i)
        if not isinstance(ann, dict):
            raise UserError(f"{where}: {what} is a {type(ann).__name__}, not a mapping")
        try:
            cat, img, (x, y, w, h) = ann["category_id"], ann["image_id"], ann["bbox"]
            if not (_is_number(x) and _is_number(y) and _is_number(w) and _is_number(h)):
                raise TypeError("bbox values must be numbers")
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: {what} needs category_id, image_id and a 4-number bbox "
                            f"({first_line(e)})") from None
        for name, value in (("image_id", img), ("category_id", cat)):
            if not _is_int(value):
                raise UserError(f"{where}: {what}: '{name}' must be a whole number, got {_quote(value)}")
        if "id" in ann:
            if not _is_int(ann["id"]):
                raise UserError(f"{where}: {what}: 'id' must be a whole number, got {_quote(ann['id'])}")
            if ann["id"] in seen_ids:  # pycocotools keys annotations by id: one would be silently lost
                raise UserError(f"{where}: annotation id {ann['id']} is used twice (annotations #{seen_ids[ann['id']]} "
                                f"and #{i} in the list); ids must be unique")
            seen_ids[ann["id"]] = i
        if not all(math.isfinite(v) for v in (x, y, w, h)):  # NaN passes every comparison below
            named = f" (id {ann['id']})" if "id" in ann else ""
            raise UserError(f"{where}: annotation {i}{named} has a non-finite bbox [{x:g}, {y:g}, {w:g}, {h:g}]")
        if cat not in categories:
            raise UserError(f"{where}: {what} has unknown category id {cat} "
                            f"(categories: {', '.join(map(str, sorted(categories)))})")
        if img not in images:
            raise UserError(f"{where}: {what} refers to unknown image id {img}")
        W, H = images[img]["width"], images[img]["height"]
        t = BOX_TOLERANCE
        if w <= 0 or h <= 0 or x < -t or y < -t or x + w > W + t or y + h > H + t:
            raise UserError(f"{where}: {what} box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] lies outside "
                            f"image '{images[img]['file_name']}' ({W} x {H}) or is empty")
        if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
            raise UserError(f"{where}: {what}: 'iscrowd' must be 0 or 1, got {_quote(ann['iscrowd'])}")
        if "area" in ann and not (_is_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
            raise UserError(f"{where}: {what}: 'area' must be a finite number >= 0, got {_quote(ann['area'])}")
        segm = ann.get("segmentation")
        if segm is not None and segm != []:  # an empty list: no mask (a box-only file may carry one)
            fault = segmentation_fault(segm, H, W)
            if fault:
                raise UserError(f"{where}: {what}: 'segmentation' {fault}")
        if masks and not _valid_segmentation(segm):
            raise UserError(f"{where}: {what} has no valid segmentation (polygons or RLE), which "
                            f"instance segmentation needs")
        if ann.get("iscrowd") == 1 and segm is not None and segm != [] and not isinstance(segm, dict):
            raise UserError(f"{where}: {what}: 'segmentation' of a crowd annotation (iscrowd 1) must be RLE")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", w * h)
    next_id = max((v for v in seen_ids), default=0) + 1
    for ann in data["annotations"]:
        if "id" not in ann:  # after every given id: a filled-in id never repeats one
            ann["id"], next_id = next_id, next_id + 1


def load_coco(ann_file: str | os.PathLike, image_dir: str | os.PathLike, masks: bool = False):
    """A validated pycocotools COCO object for `ann_file` whose images live in `image_dir` (with `masks`:
    every annotation has a segmentation)."""
    from pycocotools.coco import COCO

    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = _load_json(ann_file)
    validate_coco(data, ann_file, image_dir, masks)
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """A COCO-format split as torchvision's detectors read it: items are (image float (3, H, W) in
    [0, 1], target) with target boxes (N, 4) xyxy in pixels, labels (N,) in 1..K, masks (N, H, W) uint8
    and image_id. Crowd annotations are skipped for training targets (COCOeval still sees them)."""

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, masks: bool = True,
                 hflip: float = 0.0):
        self.image_dir = Path(image_dir)
        self.coco = load_coco(ann_file, self.image_dir, masks)
        self.masks = masks
        self.hflip = float(hflip)  # probability of a horizontal flip (training only; 0 for digits)
        self.image_ids: List[int] = sorted(self.coco.imgs)
        self.category_ids: List[int] = sorted(self.coco.cats)
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.class_names = [str(self.coco.cats[c].get("name", c)) for c in self.category_ids]

    @classmethod
    def from_root(cls, root: str | os.PathLike, split: str, masks: bool = True, hflip: float = 0.0) -> "CocoDetection":
        """`split` of a COCO-style root (see `split_paths`), or of the demo data root (its ``det/``)."""
        root = Path(root)
        if not (root / "annotations").is_dir() and (root / DET_LAYOUT / "annotations").is_dir():
            root = root / DET_LAYOUT
        image_dir, ann_file = split_paths(root, split)
        return cls(image_dir, ann_file, masks=masks, hflip=hflip)

    @property
    def num_classes(self) -> int:
        """Object categories (without background)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        """The image file of item `i`."""
        return self.image_dir / self.coco.imgs[self.image_ids[i]]["file_name"]

    def target(self, index: int) -> Dict[str, torch.Tensor]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        W, H = info["width"], info["height"]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        target = {"boxes": boxes,
                  "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
                  "image_id": torch.tensor(image_id)}
        if self.masks:
            m = [self.coco.annToMask(a) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(m)) if m else torch.zeros(0, H, W, dtype=torch.uint8)
        return target

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                rgb = np.array(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise UserError(f"image '{path}' cannot be read: {first_line(e)}") from None
        if rgb.shape[:2] != (info["height"], info["width"]):
            raise UserError(f"image '{path}' is {rgb.shape[1]} x {rgb.shape[0]} but its annotation file "
                            f"says {info['width']} x {info['height']}")
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        target = self.target(index)
        if self.hflip and torch.rand(()) < self.hflip:
            image = image.flip(-1)
            W = image.shape[-1]
            target["boxes"] = torch.stack([W - target["boxes"][:, 2], target["boxes"][:, 1],
                                           W - target["boxes"][:, 0], target["boxes"][:, 3]], dim=1)
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(items: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
    """Detection batches stay lists: images may differ in size (the detector's transform batches them)."""
    return [it[0] for it in items], [it[1] for it in items]


def to_coco_results(predictions: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                    label_to_cat: Sequence[int]) -> List[Dict[str, Any]]:
    """torchvision detector outputs (xyxy boxes, labels 1..K, scores, optional (N, 1, H, W) mask
    probabilities) -> COCO result dicts (xywh boxes, category ids, RLE masks)."""
    from pycocotools import mask as mask_util

    results = []
    for pred, image_id in zip(predictions, image_ids):
        boxes = pred["boxes"].detach().float().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]
        masks = pred.get("masks")
        rles = None
        if masks is not None:
            binary = (masks.detach().float().cpu()[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)
            rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for j, (box, label, score) in enumerate(zip(boxes.tolist(), pred["labels"].tolist(), pred["scores"].tolist())):
            r = {"image_id": int(image_id), "category_id": int(label_to_cat[label - 1]),
                 "bbox": [round(v, 3) for v in box], "score": float(score)}
            if rles is not None:
                rle = dict(rles[j])
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            results.append(r)
    return results


def split_results(results: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """COCO results by COCOeval iouType, as a results file must hold them for plain pycocotools: 'bbox'
    entries (image_id, category_id, bbox, score) and, where masks were predicted, 'segm' entries (image_id,
    category_id, segmentation, score) without the box. A file whose entries hold both is read by loadRes as box
    results, which gives every mask its box's area, so mask APs/APm/APl would differ from `evaluate`'s
    (detectron2 drops the box before its mask evaluation for the same reason; mmdetection writes two files)."""
    out: Dict[str, List[Dict[str, Any]]] = {"bbox": [{k: v for k, v in r.items() if k != "segmentation"}
                                                     for r in results]}
    if any("segmentation" in r for r in results):
        out["segm"] = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    return out


def results_paths(path: str | os.PathLike, masks: bool) -> Dict[str, Path]:
    """Where the COCO results of a detector go, by iouType: `path` holds the task's metric (boxes of a
    detector, masks of an instance segmenter), and an instance segmenter's boxes go beside it to
    ``<stem>.bbox.json``; each file is evaluated by plain ``COCOeval(gt, gt.loadRes(file), iouType)``."""
    path = Path(path)
    if not masks:
        return {"bbox": path}
    return {"segm": path, "bbox": path.with_name(f"{path.stem}.bbox.json")}


def write_coco_results(path: str | os.PathLike, results: Sequence[Dict[str, Any]], masks: bool) -> Dict[str, str]:
    """Write `results` (`to_coco_results`) as COCO results files (`results_paths`, `split_results`), each
    atomically; {iouType: path written}. Compact JSON: a results file of a large set is big."""
    from ..io import atomic_write_json

    parts = split_results(results)
    written = {}
    for iou_type, file in results_paths(path, masks).items():
        atomic_write_json(file, parts.get(iou_type, []), indent=None, what="COCO results file")
        written[iou_type] = str(file)
    return written


#: COCOeval.stats in order, as detectron2 and mmdetection name them (AP: AP@[.5:.95], AR@N: at N detections)
SUMMARY_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                 "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def run_cocoeval(coco_gt, results: List[Dict[str, Any]], metric: str = "box_ap",
                 image_ids: Optional[Sequence[int]] = None):
    """pycocotools' COCOeval of `results` (COCO result dicts, `to_coco_results`) against `coco_gt` on
    `image_ids` (all images if None), evaluated, accumulated and summarized; None when there are no
    results at all (loadRes refuses an empty list)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return None
    # copies, one iouType each (`split_results`: loadRes writes ids and areas into them; mask results go
    # without their box, so that loadRes takes each detection's area from its mask)
    results = split_results(results).get(IOU_TYPES[metric], [])
    if not results:
        return None
    with _quiet():
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, IOU_TYPES[metric])
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def summary_stats(ev) -> Dict[str, Optional[float]]:
    """COCOeval's standard summary (`SUMMARY_NAMES`) in percent; None where COCOeval says -1 (no ground
    truth in that size range). No evaluation (nothing detected): every number 0."""
    if ev is None:
        return dict.fromkeys(SUMMARY_NAMES, 0.0)
    return {n: float(s) * 100.0 if s >= 0 else None for n, s in zip(SUMMARY_NAMES, ev.stats)}


def per_class_ap(ev, coco_gt) -> Dict[str, Optional[float]]:
    """AP@[.5:.95] (%) of each category, keyed by its name: COCOeval's accumulated precision restricted to
    that category (the computation of `COCOeval.summarize`'s first line, one category at a time, as
    detectron2 reports it); None for a category without ground truth in the images evaluated."""
    out: Dict[str, Optional[float]] = {}
    for k, cat in enumerate(sorted(coco_gt.cats)):
        name = str(coco_gt.cats[cat].get("name", cat))
        if ev is None:
            out[name] = 0.0
            continue
        # precision: [IoU thresholds, recall points, categories, area ranges ('all' first), max dets (100 last)]
        p = ev.eval["precision"][:, :, k, 0, -1]
        p = p[p > -1]
        out[name] = float(p.mean()) * 100.0 if p.size else None
    return out


def coco_ap(coco_gt, results: List[Dict[str, Any]], metric: str = "box_ap",
            image_ids: Optional[Sequence[int]] = None) -> Dict[str, Optional[float]]:
    """The COCO summary (`summary_stats`) of `results` against `coco_gt` on `image_ids` (all images if None)."""
    return summary_stats(run_cocoeval(coco_gt, results, metric, image_ids))


def resampled_coco(coco_gt, image_ids: Sequence[int], results: Sequence[List[Dict[str, Any]]], weights):
    """(ground truth, results) of a bootstrap resample: image `image_ids[i]` (detections `results[i]`) copied
    `weights[i]` times, each copy its own image (COCOeval keeps one copy of a repeated image id)."""
    from pycocotools.coco import COCO

    images, anns, out = [], [], []
    for image_id, dets, count in zip(image_ids, results, weights):
        for _ in range(int(count)):
            new_id = len(images) + 1
            images.append({**coco_gt.imgs[image_id], "id": new_id})
            anns += [{**a, "image_id": new_id, "id": len(anns) + k + 1}
                     for k, a in enumerate(coco_gt.imgToAnns.get(image_id, []))]
            out += [{**r, "image_id": new_id} for r in dets]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": list(coco_gt.cats.values())}
    with _quiet():
        coco.createIndex()
    return coco, out
