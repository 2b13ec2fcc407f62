"""`sparsevit predict`: run a model file (.safetensors) or an exported ONNX file on a folder of images of any
sizes and write what a service would return.

* detection, instance segmentation: COCO results files (`detection.coco.write_coco_results`: the data set's
  category ids from the model's metadata, xywh boxes in each image's own pixels, RLE masks in their own file)
  and ``images.json``, the COCO ``images`` and ``categories`` lists the results' image ids refer to (ids from
  `coco_images`, a COCO instances file naming the images, else 1..N in file-name order);
* segmentation: one PNG of class indices per image, at the image's own size, in ``masks/``;
* classification: class and score per image, ``predictions.csv`` or ``predictions.json``;
* with `pictures`: each image with its predictions drawn (``pictures/``).

Images are read as training reads them (`data.datasets.read_image`: greyscale and RGBA become RGB, 16-bit
scaled to 8), preprocessed as evaluation does, and run in batches. An image that cannot be read is one line;
`on_error` 'skip' goes on without it, 'stop' ends the run there (exit 2, nothing but the masks already written).

An ONNX file carries the model's metadata (`ONNX_META_KEY`) and what its graph reads (`ONNX_IO_KEY`), written by
`sparsevit export`: a whole detector (one float RGB image (3, H, W) in [0, 1] in; boxes, labels, scores, masks
out, torchvision's convention) or a classifier / segmenter (normalised images (B, 3, H, W) in, logits out). A
detector's backbone-only file cannot predict (its heads are not in it): export the whole model.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.datasets import IMAGE_EXTENSIONS
from ..errors import UserError, first_line
from .export_whole import IO_BACKBONE, IO_BATCH, IO_DETECTOR, ONNX_IO_KEY, ONNX_META_KEY

#: what `--on-error` may say: skip an unreadable image (one line each) or stop at the first
ON_ERROR = ("skip", "stop")
#: classification outputs (the table's file suffix)
TABLE_FORMATS = ("csv", "json")

@dataclass
class PredictOptions:
    model: str                        # a model file (.safetensors) or an exported .onnx
    images: str                       # a folder of images (or one image file)
    out: str                          # output folder
    batch_size: int = 8               # images per forward
    on_error: str = "skip"            # an unreadable image: 'skip' (one line) or 'stop'
    pictures: bool = False            # also draw the predictions on each image
    score_threshold: Optional[float] = None  # pictures: detections drawn from this score (None: draw.select_detections)
    table_format: str = "csv"         # classification: predictions.csv or predictions.json
    coco_images: Optional[str] = None  # detection: a COCO instances JSON whose images give the results' image ids
    device: str = "cpu"
    progress: bool = True


@dataclass
class Prediction:
    """One image's outputs in its own pixels: detection {'boxes' (N, 4) xyxy, 'labels' (N,) 1..K, 'scores',
    'masks' (N, 1, H, W) probabilities}; segmentation {'classes' (H, W) int}; classification {'probs' (C,)}."""
    values: Dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- inputs
def list_images(path: str | os.PathLike) -> List[Path]:
    """The image files of a folder (by suffix, sorted by name), or the one file given; one line when none."""
    from ..io import check_file, data_files

    path = Path(path)
    if path.is_file():
        return [check_file(path, "--images file")]
    if not path.is_dir():
        raise UserError(f"--images '{path}' is neither a folder nor a file")
    # the one listing every loader uses: a FIFO named x.png is refused, and every image is noted as an input,
    # so no output (a picture of `--out`) is ever written over one of them
    files = data_files(path, IMAGE_EXTENSIONS, recursive=False, what="--images folder")
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{path}'")
    return files


def output_names(files: Sequence[Path]) -> List[str]:
    """The stem each image's mask / picture is named by: its file's stem, or its whole name where two files share
    a stem (a.png and a.jpg)."""
    stems = [f.stem for f in files]
    return [f.stem if stems.count(f.stem) == 1 else f.name for f in files]


def coco_image_ids(files: Sequence[Path], coco_images: Optional[str]) -> List[int]:
    """The results' image id of each file: from a COCO instances file's `images` (by file name; one line for an
    image it does not list), else 1..N in order."""
    if coco_images is None:
        return list(range(1, len(files) + 1))
    from ..io import check_file

    try:
        data = json.loads(check_file(coco_images, "--coco-images file").read_text())
        by_name = {Path(str(im["file_name"])).name: int(im["id"]) for im in data["images"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--coco-images '{coco_images}' is not a COCO instances file with an images list "
                        f"({first_line(e)})") from None
    missing = [f.name for f in files if f.name not in by_name]
    if missing:
        raise UserError(f"--coco-images '{coco_images}' lists no image '{missing[0]}'"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    return [by_name[f.name] for f in files]


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (`data.datasets.read_image`); UserError naming it when unreadable."""
    from ..data.datasets import read_image

    return np.asarray(read_image(path), dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------------- preprocessing
def _classification_input(rgb: np.ndarray, img_size: int):
    from PIL import Image

    from ..data.datasets import classification_transform

    return classification_transform(img_size, train=False)(Image.fromarray(rgb))


def _segmentation_input(rgb: np.ndarray, img_size: int):
    import torch
    from PIL import Image

    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ..data.datasets import segmentation_image

    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return segmentation_image(Image.fromarray(rgb), img_size, mean, std)


def _pad_batch(xs, size: Optional[Tuple[int, int]] = None):
    """Normalised images (3, h, w) zero-padded (the mean colour) at the bottom and right to a common size (the
    largest, or `size`), as the segmentation data's collate pads them."""
    import torch

    H = size[0] if size else max(x.shape[-2] for x in xs)
    W = size[1] if size else max(x.shape[-1] for x in xs)
    batch = torch.zeros(len(xs), 3, H, W)
    for i, x in enumerate(xs):
        batch[i, :, : x.shape[-2], : x.shape[-1]] = x
    return batch


def _classes_at(logits, own: Tuple[int, int], shape: Tuple[int, int]) -> np.ndarray:
    """(H, W) class indices of one image: its logits (C, h', w') cropped to the part its resized image filled
    (`own`), upsampled to its original `shape` (bilinear on logits, then argmax)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(logits)[None, :, : own[0], : own[1]].float()
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0].argmax(0).numpy()


# --------------------------------------------------------------------------------------------- engines
class Engine:
    """Runs a batch of RGB images (H x W x 3 uint8) to one `Prediction` each. `meta` is the model's ModelMeta.

    Images of one size go through one forward; a batch of several sizes is split by size, so that no image
    is padded to another's size: the windows a sparse backbone keeps depend on its whole input, so an image
    predicts the same whichever images share its batch."""

    meta: Any
    task: str

    def run(self, images: Sequence[np.ndarray]) -> List[Prediction]:
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        out: List[Optional[Prediction]] = [None] * len(images)
        for members in groups.values():
            for i, p in zip(members, self.forward([images[i] for i in members])):
                out[i] = p
        return out  # type: ignore[return-value]

    def forward(self, images: Sequence[np.ndarray]) -> List[Prediction]:
        """Predictions of images of one size."""
        raise NotImplementedError


class TorchEngine(Engine):
    """A model file, in PyTorch."""

    def __init__(self, path: str, device: str = "cpu"):
        from ..model_file import load_model_file
        from ..timing import resolve_device

        self.device = resolve_device(device)
        model, _, meta = load_model_file(path)
        self.model, self.meta, self.task = model.to(self.device).eval(), meta, meta.task

    def forward(self, images):
        import torch

        size = self.meta.image_size
        with torch.no_grad():
            if self.task in ("detection", "instance_segmentation"):
                tensors = [torch.from_numpy(im).permute(2, 0, 1).float().div_(255.0).to(self.device) for im in images]
                return [Prediction({k: v.detach().float().cpu().numpy() if k != "labels" else v.cpu().numpy()
                                    for k, v in out.items()}) for out in self.model(tensors)]
            if self.task == "segmentation":
                xs = [_segmentation_input(im, size) for im in images]
                logits = self.model(_pad_batch(xs).to(self.device)).float().cpu()
                return [Prediction({"classes": _classes_at(lg, tuple(x.shape[-2:]), im.shape[:2])})
                        for lg, x, im in zip(logits, xs, images)]
            x = torch.stack([_classification_input(im, size) for im in images]).to(self.device)
            return [Prediction({"probs": p}) for p in self.model(x).float().softmax(-1).cpu().numpy()]


def onnx_metadata(path: str | os.PathLike) -> Tuple[Any, str]:
    """(ModelMeta, graph I/O kind) an exported ONNX file carries (`ONNX_META_KEY`, `ONNX_IO_KEY`); one line for a
    file without them."""
    import onnx

    from ..model_file import ModelMeta

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # noqa: BLE001 (protobuf's errors have many types)
        raise UserError(f"'{path}' is not a readable ONNX file: {first_line(e)}") from None
    if ONNX_META_KEY not in props or ONNX_IO_KEY not in props:
        raise UserError(f"ONNX file '{path}' carries no sparsevit metadata; export it with `sparsevit export` "
                        f"(which writes the classes and the input convention into it)")
    try:
        meta = ModelMeta.of(json.loads(props[ONNX_META_KEY]), source=f"ONNX file '{path}'")
    except ValueError as e:
        raise UserError(f"ONNX file '{path}': its sparsevit metadata is not JSON ({first_line(e)})") from None
    return meta, props[ONNX_IO_KEY]


class OnnxEngine(Engine):
    """An exported ONNX file, in onnxruntime (no PyTorch model involved)."""

    def __init__(self, path: str):
        self.meta, self.io = onnx_metadata(path)
        self.task = self.meta.task
        if self.io == IO_BACKBONE:
            raise UserError(f"ONNX file '{path}' holds a detector's backbone only (its heads run in PyTorch); "
                            f"export the whole model (`sparsevit export` without --backbone-only) to predict")
        if self.io not in (IO_DETECTOR, IO_BATCH):
            raise UserError(f"ONNX file '{path}' has an unknown input convention '{self.io}'")
        from .export_whole import onnx_session

        self.session = onnx_session(Path(path))
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.shape = [d if isinstance(d, int) else None for d in graph_input.shape]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def _run_batches(self, x: np.ndarray) -> np.ndarray:
        """Logits of a normalised batch, fed in the graph's own (static) batch size, the last one zero-padded."""
        step = self.shape[0] or len(x)
        out = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            out.append(self.session.run(None, {self.input_name: chunk})[0][: len(x) - i])
        return np.concatenate(out)

    def forward(self, images):
        import torch

        size = self.meta.image_size
        if self.io == IO_DETECTOR:
            out = []
            for im in images:
                x = np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32) / 255.0
                values = dict(zip(self.outputs, self.session.run(None, {self.input_name: x})))
                out.append(Prediction(values))
            return out
        if self.task == "segmentation":
            xs = [_segmentation_input(im, size) for im in images]
            fixed = tuple(self.shape[2:]) if None not in self.shape[2:] else None  # a fixed-size graph: pad to it
            logits = self._run_batches(_pad_batch(xs, fixed).numpy())
            return [Prediction({"classes": _classes_at(lg, tuple(x.shape[-2:]), im.shape[:2])})
                    for lg, x, im in zip(logits, xs, images)]
        x = torch.stack([_classification_input(im, size) for im in images]).numpy()
        logits = torch.from_numpy(self._run_batches(x)).float()
        return [Prediction({"probs": p}) for p in logits.softmax(-1).numpy()]


def open_engine(path: str, device: str = "cpu") -> Engine:
    """The engine for a model file or an ONNX file (by its suffix)."""
    if Path(path).suffix.lower() == ".onnx":
        from ..io import check_file, note_input

        check_file(path, "ONNX file")
        note_input(path, "ONNX file")
        if device != "cpu":
            raise UserError(f"--device {device}: ONNX files run on onnxruntime's CPU provider here; leave out --device")
        return OnnxEngine(path)
    return TorchEngine(path, device)


# --------------------------------------------------------------------------------------------- outputs
def _class_name(meta, k: int) -> str:
    """The name of class index `k` (its number where the metadata names no classes)."""
    names = meta.class_names or []
    return str(names[k]) if k < len(names) else str(k)


def _detection_names(meta) -> List[str]:
    """Names of labels 1..K (a detector's metadata names them in order; else the category ids)."""
    if meta.class_names:
        return list(meta.class_names)
    return [str(c) for c in (meta.category_ids or range(1, (meta.num_classes or 0) + 1))]


def _torch_prediction(p: Prediction) -> Dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.asarray(v)) for k, v in p.values.items()}


def _segmentation_picture(rgb: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each pixel tinted translucently in its class's colour (class 0, the background, left as it is)."""
    from ..detection.draw import MASK_ALPHA, class_colour

    colours = np.array([class_colour(c) for c in range(1, int(classes.max()) + 1)] or [(0, 0, 0)], np.float32)
    tint = colours[np.clip(classes - 1, 0, None)]
    alpha = np.where(classes > 0, MASK_ALPHA, 0.0)[..., None]
    return (rgb * (1 - alpha) + tint * alpha).round().astype(np.uint8)


def picture(rgb: np.ndarray, p: Prediction, task: str, meta, score_threshold: Optional[float]) -> np.ndarray:
    """The image with its prediction drawn: boxes (masks) and labels, class colours, or the class and score."""
    from ..detection.draw import class_colour, draw_detections, draw_labelled_boxes

    if task in ("detection", "instance_segmentation"):
        return draw_detections(rgb, _torch_prediction(p), _detection_names(meta), score_threshold)
    if task == "segmentation":
        return _segmentation_picture(rgb, p.values["classes"])
    k = int(np.argmax(p.values["probs"]))
    H, W = rgb.shape[:2]
    return draw_labelled_boxes(rgb, [{"class": _class_name(meta, k), "score": float(p.values["probs"][k]),
                                      "box": [0.0, 0.0, float(W), float(H)], "colour": class_colour(k + 1)}])


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _label_png(classes: np.ndarray) -> np.ndarray:
    """Class indices as a PNG-able array: 8-bit up to 255 classes, 16-bit beyond."""
    return classes.astype(np.uint8 if classes.max(initial=0) < 256 else np.uint16)


# --------------------------------------------------------------------------------------------- the command
def check_options(opts: PredictOptions) -> None:
    """Every option checked before a model is loaded."""
    if opts.on_error not in ON_ERROR:
        raise UserError(f"--on-error must be one of {', '.join(ON_ERROR)}, got '{opts.on_error}'")
    if opts.table_format not in TABLE_FORMATS:
        raise UserError(f"--table-format must be one of {', '.join(TABLE_FORMATS)}, got '{opts.table_format}'")
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.score_threshold is not None and not 0.0 <= float(opts.score_threshold) <= 1.0:
        raise UserError(f"--score-threshold must be a score in [0, 1], got {opts.score_threshold}")


def run_predict(opts: PredictOptions, console=None, warn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Predict every image of `opts.images` and write the outputs under `opts.out` (see the module doc).
    `warn` gets the one line of each image skipped. Returns {'task', 'images', 'predicted', 'skipped':
    [{'file', 'error'}], 'files': {what: path}}."""
    from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output_dir, refuse_input

    check_options(opts)
    files = list_images(opts.images)
    out = check_output_dir(opts.out, "--out", "the predictions")
    ids = coco_image_ids(files, opts.coco_images) if opts.coco_images else None
    engine = open_engine(opts.model, opts.device)
    meta, task = engine.meta, engine.task
    detector = task in ("detection", "instance_segmentation")
    if opts.coco_images and not detector:
        raise UserError(f"--coco-images is for detectors; '{opts.model}' is a {task} model")
    ids = ids or list(range(1, len(files) + 1))
    names = output_names(files)
    say = warn or (lambda line: None)
    results: List[Dict[str, Any]] = []
    images_list: List[Dict[str, Any]] = []
    rows: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    written: Dict[str, str] = {}
    planned = [out / "masks" / f"{n}.png" for n in names] if task == "segmentation" else []
    planned += [out / "pictures" / f"{n}.png" for n in names] if opts.pictures else []
    for path in planned:  # an output over an input image is refused before any image is predicted
        refuse_input(path, "--out")
    if task == "segmentation":
        (out / "masks").mkdir(parents=True, exist_ok=True)
    if opts.pictures:
        (out / "pictures").mkdir(parents=True, exist_ok=True)

    def flush(batch: List[Tuple[int, np.ndarray]]) -> None:
        from ..detection.coco import to_coco_results

        preds = engine.run([rgb for _, rgb in batch])
        for (i, rgb), p in zip(batch, preds):
            H, W = rgb.shape[:2]
            if detector:
                label_to_cat = meta.category_ids or list(range(1, (meta.num_classes or 0) + 1))
                results.extend(to_coco_results([_torch_prediction(p)], [ids[i]], label_to_cat))
                images_list.append({"id": ids[i], "file_name": files[i].name, "width": W, "height": H})
            elif task == "segmentation":
                atomic_write_bytes(out / "masks" / f"{names[i]}.png", _png_bytes(_label_png(p.values["classes"])),
                                   what="mask")
            else:
                k = int(np.argmax(p.values["probs"]))
                rows.append({"file": files[i].name, "class_index": k, "class": _class_name(meta, k),
                             "score": round(float(p.values["probs"][k]), 6)})
            if opts.pictures:
                atomic_write_bytes(out / "pictures" / f"{names[i]}.png",
                                   _png_bytes(picture(rgb, p, task, meta, opts.score_threshold)), what="picture")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True, disable=not opts.progress or console is None)
    with progress:
        bar = progress.add_task("predict", total=len(files))
        batch: List[Tuple[int, np.ndarray]] = []
        pending = 0  # files read (or skipped) since the last forward
        for i, path in enumerate(files):
            pending += 1
            try:
                batch.append((i, read_rgb(path)))
            except UserError as e:
                if opts.on_error == "stop":
                    raise UserError(f"{e} (--on-error stop; --on-error skip goes on without it)") from None
                skipped.append({"file": str(path), "error": str(e)})
                say(f"skipped: {e}")
            if len(batch) == opts.batch_size or i == len(files) - 1:
                if batch:
                    flush(batch)
                progress.advance(bar, pending)
                batch, pending = [], 0

    if detector:
        from ..detection.coco import write_coco_results

        masks = task == "instance_segmentation"
        for iou_type, path in write_coco_results(out / "results.json", results, masks).items():
            written[f"results_{iou_type}"] = path
        cats = meta.category_ids or list(range(1, (meta.num_classes or 0) + 1))
        atomic_write_json(out / "images.json", {
            "images": images_list,
            "categories": [{"id": int(c), "name": n} for c, n in zip(cats, _detection_names(meta))]},
            what="images list")
        written["images"] = str(out / "images.json")
    elif task == "segmentation":
        written["masks"] = str(out / "masks")
    else:
        table = out / f"predictions.{opts.table_format}"
        if opts.table_format == "json":
            atomic_write_json(table, rows, what="predictions")
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=["file", "class_index", "class", "score"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(table, buf.getvalue(), what="predictions")
        written["predictions"] = str(table)
    if opts.pictures:
        written["pictures"] = str(out / "pictures")
    return {"task": task, "model": str(opts.model), "images": len(files), "predicted": len(files) - len(skipped),
            "skipped": skipped, "files": written}
