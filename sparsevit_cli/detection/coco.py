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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.demo import DET_LAYOUT
from ..errors import UserError, first_line

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
        raise UserError(f"annotation file '{ann_file}' not found")
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
    return f"annotation id {ann_id} (#{position} in the list)"


def validate_coco(data: Dict[str, Any], ann_file: Path, image_dir: Path, masks: bool = False) -> None:
    """UserError with one line for the first fault in a COCO instances mapping (see the module doc);
    `masks`: every annotation must carry a segmentation. Fills the optional fields COCOeval reads
    (``iscrowd`` 0, ``area`` of the box, ``id``) where a hand-written file leaves them out."""
    where = f"annotation file '{ann_file}'"
    if not data["annotations"]:
        raise UserError(f"{where} has an empty annotation list")
    if not data["categories"]:
        raise UserError(f"{where} has no categories")
    try:
        categories = {int(c["id"]) for c in data["categories"]}
        images = {int(im["id"]): im for im in data["images"]}
        for kind, entries in (("image", data["images"]), ("category", data["categories"])):
            seen: Dict[int, int] = {}
            for n, entry in enumerate(entries):
                if int(entry["id"]) in seen:  # a second entry would silently replace the first
                    raise UserError(f"{where}: {kind} id {int(entry['id'])} is used twice ({kind} entries "
                                    f"{seen[int(entry['id'])]} and {n}); ids must be unique")
                seen[int(entry["id"])] = n
        for im in images.values():
            im["file_name"], im["width"], im["height"]  # noqa: B018 (presence check)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: an image or category entry lacks a field ({first_line(e)})") from None
    for im in images.values():
        if not (image_dir / im["file_name"]).is_file():
            raise UserError(f"image '{im['file_name']}' listed in {where} is missing from '{image_dir}'")
    for i, ann in enumerate(data["annotations"]):
        what = _annotation_name(ann, i)
        try:
            cat, img, (x, y, w, h) = int(ann["category_id"]), int(ann["image_id"]), (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: {what} needs category_id, image_id and a 4-number bbox "
                            f"({first_line(e)})") from None
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
        if masks and not _valid_segmentation(ann.get("segmentation")):
            raise UserError(f"{where}: {what} has no valid segmentation (polygons or RLE), which "
                            f"instance segmentation needs")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", w * h)
        ann.setdefault("id", i + 1)


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
