"""The whole model in one ONNX file, for a server without PyTorch: `sparsevit export` of a detector (without
`--backbone-only`) writes the whole torchvision Faster / Mask R-CNN, transform and post-processing included:

* in: ``image``, one float RGB image (3, H, W) in [0, 1] of any height and width;
* out: ``boxes`` (N, 4) xyxy in the image's pixels, ``labels`` (N,) 1..K, ``scores`` (N,), and for Mask R-CNN
  ``masks`` (N, 1, H, W) probabilities: torchvision's convention. Category id of label L:
  ``category_ids[L - 1]`` of the metadata the file carries (`ONNX_META_KEY`).

A classifier or segmenter (the whole Semantic FPN) is one file already (normalised images (B, 3, H, W) in, logits
out); every ONNX file `export` writes carries the model's metadata and its input convention
(`attach_onnx_metadata`), which `sparsevit predict` reads.

Exported with torch.onnx's TorchScript-based exporter (``dynamo=False``, opset 17; torchvision's detection models
support it with dynamic height and width; the dynamo exporter does not handle their data-dependent proposal
counts). The graph is verified in onnxruntime against the same module in PyTorch on images of two aspect ratios
(and the real validation images of `--data`): the same detections, boxes within `BOX_TOLERANCE_PX`; with a COCO
data set, AP from onnxruntime's outputs within `AP_TOLERANCE` of PyTorch's.

Sizes: the detector's transform resizes each image (aspect kept) and pads it to its own multiple of the stride.
Where the sparse backbone's graph cannot take every size (its window tables were traced at one size), the
file letterboxes every image on the model's square canvas (img_size x img_size, what a fixed-size backbone
export takes), and one line says so; the PyTorch it is verified against does the same (`WholeDetector(canvas=...)`).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError, first_line, shorten

#: ONNX metadata_props keys: the model's metadata (ModelMeta JSON), and what its graph reads (`IO_KINDS`)
ONNX_META_KEY = "sparsevit"
ONNX_IO_KEY = "sparsevit_io"
#: graph I/O kinds: a whole detector (one image in [0, 1] in, detections out), a batch model (normalised images
#: in, logits out), a detector's backbone alone (stage maps out: cannot predict)
IO_DETECTOR, IO_BATCH, IO_BACKBONE = "detector-image", "normalised-batch", "backbone-features"
IO_KINDS = (IO_DETECTOR, IO_BATCH, IO_BACKBONE)
#: a whole detector's graph names, torchvision's output keys
DETECTOR_INPUT = "image"
DETECTOR_OUTPUTS = ("boxes", "labels", "scores")
MASK_OUTPUT = "masks"
#: largest difference between onnxruntime's and PyTorch's boxes (pixels), scores, and mask probabilities
BOX_TOLERANCE_PX = 1e-2
SCORE_TOLERANCE = 1e-3
MASK_TOLERANCE = 5e-2
#: largest difference (AP points) between the AP of onnxruntime's outputs and PyTorch's on --data
AP_TOLERANCE = 0.1
OPSET = 17


class WholeDetector(nn.Module):
    """A torchvision detector as one image-in, detections-out module: transform (resize, normalise, pad), backbone,
    RPN, RoI heads, post-processing back to the image's pixels. With `canvas` (pixels), the transformed image is
    letterboxed (zeros at the bottom and right) on a canvas x canvas square instead of padded to the stride."""

    def __init__(self, detector: nn.Module, canvas: Optional[int] = None):
        super().__init__()
        self.detector = detector
        self.canvas = canvas
        self.masks = bool(detector.roi_heads.has_mask())

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        from torchvision.models.detection.image_list import ImageList

        m = self.detector
        original = [(image.shape[-2], image.shape[-1])]
        images, _ = m.transform([image])
        x = images.tensors
        if self.canvas is not None:
            x = F.pad(x, (0, self.canvas - x.shape[-1], 0, self.canvas - x.shape[-2]))
            images = ImageList(x, images.image_sizes)
        features = m.backbone(x)
        proposals, _ = m.rpn(images, features)
        detections, _ = m.roi_heads(features, proposals, images.image_sizes)
        d = m.transform.postprocess(detections, images.image_sizes, original)[0]
        return tuple(d[k] for k in self.output_names)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return DETECTOR_OUTPUTS + ((MASK_OUTPUT,) if self.masks else ())


def write_detector_onnx(module: WholeDetector, example: torch.Tensor, path: Path) -> None:
    """The legacy (TorchScript) exporter with dynamic image height and width and detection count."""
    names = list(module.output_names)
    axes = {DETECTOR_INPUT: {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names}}
    if MASK_OUTPUT in names:
        axes[MASK_OUTPUT] = {0: "detections", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[DETECTOR_INPUT], output_names=names, dynamic_axes=axes)


def onnx_session(path: Path, threads: int = 0):
    """An onnxruntime CPU session that prints nothing (its warnings and errors go to our one line); `threads`:
    its intra-op threads (0: onnxruntime's default, one per core)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs onnxruntime: pip install 'sparsevit[export]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failing run is one line of ours, not ORT's [E:...] on stderr
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_detector_session(session) -> Callable[[torch.Tensor], Dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return lambda image: dict(zip(names, session.run(None, {DETECTOR_INPUT: image.numpy()})))


def detector_differences(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Largest differences of one image's detections (inf when the detections differ in number or label)."""
    if len(ref["boxes"]) != len(got["boxes"]) or not np.array_equal(ref["labels"], got["labels"]):
        why = (f"{len(got['boxes'])} detections, PyTorch {len(ref['boxes'])}" if len(ref["boxes"]) != len(got["boxes"])
               else "other labels than PyTorch's")
        return {"detections": float(len(got["boxes"])), "boxes_px": math.inf, "scores": math.inf, "masks": math.inf,
                "error": why}
    diff = {"detections": float(len(got["boxes"]))}
    for key in ("boxes", "scores", "masks"):
        if key in ref:
            d = np.abs(ref[key].astype(np.float64) - got[key].astype(np.float64))
            diff["boxes_px" if key == "boxes" else key] = float(d.max()) if d.size else 0.0
    return diff


def _within(diff: Dict[str, float]) -> bool:
    return (diff["boxes_px"] <= BOX_TOLERANCE_PX and diff["scores"] <= SCORE_TOLERANCE
            and diff.get("masks", 0.0) <= MASK_TOLERANCE)


def check_images(img_size: int) -> List[torch.Tensor]:
    """Two seeded random images of different aspect (landscape 4:3, portrait 9:16 of `img_size`): two sizes the
    detector's transform pads to different canvases."""
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, img_size * 3 // 4, img_size, generator=g),
            torch.rand(3, img_size, max(8, img_size * 9 // 16), generator=g)]


def _pytorch(module: nn.Module, image: torch.Tensor) -> Dict[str, np.ndarray]:
    with torch.no_grad():
        return {n: t.detach().float().numpy() if n != "labels" else t.numpy()
                for n, t in zip(module.output_names, module(image))}


def _verify(module: WholeDetector, path: Path, images: Sequence[torch.Tensor]) -> List[Dict[str, Any]]:
    session = onnx_session(path)
    run = run_detector_session(session)
    checks = []
    for i, image in enumerate(images):
        try:
            got = run(image)
        except Exception as e:  # noqa: BLE001 (onnxruntime's errors)
            checks.append({"input": i, "size": f"{image.shape[-2]}x{image.shape[-1]}", "error": first_line(e),
                           "detections": 0.0, "boxes_px": math.inf, "scores": math.inf})
            continue
        checks.append({"input": i, "size": f"{image.shape[-2]}x{image.shape[-1]}",
                       **detector_differences(_pytorch(module, image), got)})
    return checks


def coco_ap_parity(module: WholeDetector, path: Path, dataset, metric: str) -> Dict[str, float]:
    """{'pytorch': AP, 'onnxruntime': AP} (%, pycocotools) of the module and of its ONNX file on `dataset`; with a
    letterboxing module also 'pytorch_own_size', the AP of the detector itself (each image padded to its own
    size), what the canvas costs."""
    from ..detection.coco import coco_ap, to_coco_results

    run = run_detector_session(onnx_session(path))
    plain = WholeDetector(module.detector).eval() if module.canvas is not None else None
    runs: Dict[str, Callable] = {"pytorch": lambda im: _pytorch(module, im), "onnxruntime": run}
    if plain is not None:
        runs["pytorch_own_size"] = lambda im: _pytorch(plain, im)
    results: Dict[str, List[Dict[str, Any]]] = {name: [] for name in runs}
    for i in range(len(dataset)):
        image, target = dataset[i]
        image_id = int(target["image_id"])
        for name, predict in runs.items():
            pred = predict(image)
            results[name] += to_coco_results([{k: torch.from_numpy(np.asarray(v)) for k, v in pred.items()}],
                                             [image_id], dataset.category_ids)
    return {name: coco_ap(dataset.coco, rs, metric)["ap"] or 0.0 for name, rs in results.items()}


def export_whole_detector(model: nn.Module, meta, out: Path, img_size: int, real: Sequence[torch.Tensor] = (),
                          dataset=None, metric: str = "box_ap", strict: bool = True) -> Dict[str, Any]:
    """Write the whole detector `model` as ONNX to `out` (atomically, only once verified; see the module doc).
    `real`: real images ((3, H, W) in [0, 1]) to verify on too; `dataset` (a COCO data set): AP parity.
    `strict` False (a benchmark of random weights, whose near-tied scores reorder): differences are reported in
    'checks', not refused.
    Returns {'file', 'canvas' (None: any size as the detector pads it), 'note', 'checks', 'ap'}."""
    from ..io import atomic_output

    model = model.eval()
    images = check_images(img_size) + list(real)
    report: Dict[str, Any] = {"format": "onnx", "file": str(out), "canvas": None}
    dynamic, why = backbone_takes_any_size(model, img_size)
    if not dynamic:
        report["canvas"] = img_size
        report["note"] = (f"onnx: the sparse backbone's graph takes one size only ({why}); every image is "
                          f"letterboxed on a {img_size}x{img_size} canvas inside the file (verified against "
                          f"PyTorch doing the same)")
    module = WholeDetector(model, canvas=report["canvas"]).eval()
    with atomic_output(out, "onnx export", suffix=".onnx") as tmp:
        try:
            write_detector_onnx(module, images[0], tmp)
        except Exception as e:  # noqa: BLE001 (the exporter's errors)
            raise UserError(f"onnx export of the whole detector failed: {first_line(e)}") from e
        checks = _verify(module, tmp, images)
        bad = [c for c in checks if not _within(c)]
        if bad and strict:
            c = bad[0]
            raise UserError(f"exported whole detector differs from PyTorch at {c.get('size', '?')}: "
                            + (c["error"] if "error" in c else f"boxes {c['boxes_px']:.2g} px (tolerance "
                               f"{BOX_TOLERANCE_PX:g}), scores {c['scores']:.2g}") + "; nothing was written")
        report["checks"] = checks
        if dataset is not None:
            ap = coco_ap_parity(module, tmp, dataset, metric)
            report["ap"] = ap
            if not abs(ap["pytorch"] - ap["onnxruntime"]) <= AP_TOLERANCE:
                raise UserError(f"exported whole detector's {metric} on the val images is {ap['onnxruntime']:.2f}, "
                                f"PyTorch's {ap['pytorch']:.2f} (tolerance {AP_TOLERANCE}); nothing was written")
        attach_onnx_metadata(tmp, meta, IO_DETECTOR)
    return report


def backbone_takes_any_size(model: nn.Module, img_size: int, tolerance: float = 1e-4) -> Tuple[bool, Optional[str]]:
    """(whether the detector's sparse backbone exports to ONNX with dynamic height and width, computing what
    PyTorch computes at two other sizes (relative error `tolerance` on its stage maps), why not). A whole
    detector's boxes are a weak test of this: on untrained weights they move little when the backbone is wrong.
    Written by `export`'s own ONNX writer; run in a quiet session (nothing from onnxruntime on stderr)."""
    import tempfile

    from ..detection.models import BackboneFeatures
    from ..tasks import backbone_of
    from .export import FORMATS, other_size

    body = BackboneFeatures(backbone_of(model)).eval()
    g = torch.Generator().manual_seed(3)
    h, w = other_size(model, img_size)
    traced = torch.randn(1, 3, img_size, img_size, generator=g)
    others = [torch.randn(1, 3, h, w, generator=g), torch.randn(1, 3, img_size, h, generator=g)]
    with torch.no_grad():
        body(traced)  # builds the engine's per-size tables, as export does before tracing
        refs = [[t.numpy() for t in body(x)] for x in others]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "backbone.onnx"
        try:
            FORMATS["onnx"].write(body, traced, path, dynamic=True)
            session = onnx_session(path)
            name = session.get_inputs()[0].name
            for x, ref in zip(others, refs):
                got = session.run(None, {name: x.numpy()})
                size = f"{x.shape[-2]}x{x.shape[-1]}"
                if len(got) != len(ref) or any(r.shape != o.shape for r, o in zip(ref, got)):
                    return False, f"at {size} its stage maps have other shapes"
                rel = max(float(np.abs(r - o).max()) / max(float(np.abs(r).max()), 1e-12) for r, o in zip(ref, got))
                if not rel <= tolerance:
                    return False, f"at {size} its relative error is {rel:.1e}"
        except Exception as e:  # noqa: BLE001 (the exporter's and onnxruntime's errors)
            return False, shorten(first_line(e), 160)
    return True, None


def attach_onnx_metadata(path: Path, meta, io_kind: str) -> None:
    """Write the model's metadata and its graph's input convention into the ONNX file's metadata_props, in
    place (`path` is a file being written: callers pass the temporary file of an atomic write)."""
    import onnx

    if io_kind not in IO_KINDS:
        raise ValueError(f"unknown ONNX input convention {io_kind!r}")
    model = onnx.load(str(path))
    props = {p.key: p for p in model.metadata_props}
    for key, value in ((ONNX_META_KEY, json.dumps(meta.to_dict())), (ONNX_IO_KEY, io_kind)):
        entry = props.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def add_metadata_atomically(path: Path, meta, io_kind: str) -> None:
    """`attach_onnx_metadata` on a file already written (a batch model or a backbone), through a new file."""
    import shutil

    from ..io import atomic_output

    with atomic_output(path, "onnx export", suffix=".onnx") as tmp:
        shutil.copyfile(path, tmp)
        attach_onnx_metadata(tmp, meta, io_kind)


def real_images(data: str, meta, count: int = 2) -> Tuple[List[torch.Tensor], Any]:
    """(`count` real val images (3, H, W) in [0, 1] at their own sizes, the COCO val data set)."""
    from ..tasks import get_task

    dataset = get_task(meta.task).dataset(data, "val", meta.image_size, train=False)
    if len(dataset) == 0:
        raise UserError(f"no validation images in '{data}'")
    return [dataset[i][0] for i in range(min(count, len(dataset)))], dataset


def run_whole_detector_export(checkpoint: str, config: Optional[Dict[str, Any]], out: Path, data: Optional[str],
                              img_size: Optional[int]) -> Dict[str, Any]:
    """`sparsevit export` of a detector model file, whole (see the module doc): load, export, verify."""
    from ..model_file import load_model_file
    from ..tasks import get_task

    model, _, meta = load_model_file(checkpoint, config)
    size = meta.resolve_img_size(img_size)
    real, dataset = ([], None)
    if data:
        real, dataset = real_images(data, meta)
        meta.check_data(dataset, data, checkpoint)
    return export_whole_detector(model, meta, Path(out), size, real, dataset, get_task(meta.task).metric_name)
