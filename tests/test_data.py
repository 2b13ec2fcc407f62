"""The data layer: the demo data set (deterministic, balanced, mostly background, masks that match the
pixels, disjoint train/val digits, detail that downscaling destroys) and the loaders built on it."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from PIL import Image

from sparsevit_cli.data import (build_dataset, build_loader, epoch_batches, iterate, read_demo_index, read_image,
                                write_demo_data)
from sparsevit_cli.data.demo import demo_metadata, digit_source_split
from sparsevit_cli.errors import UserError

N_TRAIN, N_VAL = 200, 100


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """One full-size demo set shared by the module (224 px, the default counts: ~5 s to write)."""
    root = tmp_path_factory.mktemp("demo") / "data"
    info = write_demo_data(root, img_size=224, n_train=N_TRAIN, n_val=N_VAL, seed=0)
    assert info["written"] and info["seg_num_classes"] == 11
    return root


def _tree_hashes(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pairs(root: Path, split: str):
    """(row, RGB float array, mask array) for every image of a split, via the demo index."""
    for row in read_demo_index(root):
        if row["split"] == split:
            seg = root / "seg" / split
            rgb = np.asarray(Image.open(seg / "images" / row["file"]).convert("RGB"), dtype=np.float32)
            yield row, rgb, np.asarray(Image.open(seg / "masks" / row["file"]))


# --------------------------------------------------------------------------------------------- demo data
def test_demo_deterministic_and_seed_dependent(tmp_path):
    kw = dict(img_size=64, n_train=12, n_val=6)
    a, b, c = (tmp_path / n for n in "abc")
    write_demo_data(a, seed=3, **kw)
    write_demo_data(b, seed=3, **kw)
    write_demo_data(c, seed=4, **kw)
    ha, hb, hc = _tree_hashes(a), _tree_hashes(b), _tree_hashes(c)
    assert ha == hb
    assert len(ha) == 2 + 3 * (12 + 6)  # yaml + index + (class image, seg image, mask) per image
    images = [k for k in ha if k.startswith("seg/") and k.endswith(".png")]
    assert sum(ha[k] != hc.get(k) for k in images) == len(images)  # every image changes with the seed


def test_demo_layouts_share_pixels_and_labels(demo):
    for row in read_demo_index(demo):
        cls_file = demo / row["split"] / str(row["label"]) / row["file"]
        seg_file = demo / "seg" / row["split"] / "images" / row["file"]
        assert cls_file.read_bytes() == seg_file.read_bytes()


def test_demo_idempotent_conflict_and_overwrite(tmp_path):
    out = tmp_path / "d"
    assert write_demo_data(out, img_size=64, n_train=4, n_val=2)["written"]
    before = _tree_hashes(out)
    assert not write_demo_data(out, img_size=64, n_train=4, n_val=2)["written"]  # same metadata: kept
    with pytest.raises(UserError, match="other demo data"):
        write_demo_data(out, img_size=64, n_train=5, n_val=2)
    assert _tree_hashes(out) == before  # a refused call leaves the folder alone
    info = write_demo_data(out, img_size=64, n_train=5, n_val=2, overwrite=True)
    assert info["written"] and len(list((out / "seg" / "train" / "images").iterdir())) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary siblings left behind

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="non-empty"):
        write_demo_data(foreign, img_size=64, n_train=4, n_val=2, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_demo_argument_errors(tmp_path):
    for kw in ({"num_classes": 11}, {"img_size": 16}, {"n_train": 0}, {"digit_frac": (0.3, 0.2)}):
        with pytest.raises(UserError):
            write_demo_data(tmp_path / "x", **kw)


def test_demo_metadata_file(demo):
    import yaml

    meta = yaml.safe_load((demo / "demo_data.yaml").read_text())
    assert meta == demo_metadata(224, N_TRAIN, N_VAL, 0, 10)
    assert meta["seg_num_classes"] == 11 and meta["flip_invariant"] is False


def test_foreground_seg_labels_mark_every_digit_as_one_class(demo, tmp_path):
    """seg_labels="foreground": the same pixels, the same classification layout, masks that are the digit masks
    with every digit class folded into 1 (ignored edges kept); 2 classes, and the loader reads them so."""
    small = write_demo_data(tmp_path / "fg", img_size=224, n_train=20, n_val=10, seed=0, seg_labels="foreground")
    assert small["seg_num_classes"] == 2
    meta = demo_metadata(224, 20, 10, 0, 10, seg_labels="foreground")
    assert meta["seg_labels"] == "foreground" and meta["seg_num_classes"] == 2
    assert "seg_labels" not in demo_metadata(224, 20, 10, 0, 10)  # the default set's metadata is unchanged
    digits = write_demo_data(tmp_path / "digits", img_size=224, n_train=20, n_val=10, seed=0)
    root_fg, root_digits = Path(small["root"]), Path(digits["root"])
    for row in read_demo_index(root_fg):
        name = Path(row["split"]) / "masks" / row["file"]
        fg = np.asarray(Image.open(root_fg / "seg" / name))
        per_digit = np.asarray(Image.open(root_digits / "seg" / name))
        assert set(np.unique(fg).tolist()) == {0, 1, 255}
        assert np.array_equal(fg == 1, per_digit == row["label"] + 1)
        assert np.array_equal(fg == 255, per_digit == 255)
        image = Path(row["split"]) / str(row["label"]) / row["file"]
        assert (root_fg / image).read_bytes() == (root_digits / image).read_bytes()
    ds = build_dataset(root_fg, "segmentation", "val", 112, train=False)
    assert ds.num_classes == 2 and set(torch.unique(ds[0][1]).tolist()) <= {0, 1, 255}
    with pytest.raises(UserError, match="seg_labels must be one of digits, foreground"):
        write_demo_data(tmp_path / "bad", seg_labels="shapes")


def test_demo_balanced_classes(demo):
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        counts = [len(list((demo / split / str(c)).iterdir())) for c in range(10)]
        assert counts == [n // 10] * 10
        labels = [r["label"] for r in read_demo_index(demo) if r["split"] == split]
        assert labels != sorted(labels) and labels != [i % 10 for i in range(n)]  # shuffled, not in blocks


def test_demo_mostly_background_and_masks_match_pixels(demo):
    for split in ("train", "val"):
        for row, rgb, mask in _pairs(demo, split):
            assert set(np.unique(mask).tolist()) <= {0, row["label"] + 1, 255}
            digit, background = mask == row["label"] + 1, mask == 0
            assert background.mean() > 0.85
            assert digit.sum() > 20
            # the ink is bright (HSV value >= 0.88): the digit pixels stand out from the background
            bright = rgb.max(axis=2)
            assert bright[digit].mean() > bright[background].mean() + 60
            ys, xs = np.nonzero(digit)  # the mask lies inside the recorded placement box
            assert row["y"] <= ys.min() and ys.max() < row["y"] + row["h"]
            assert row["x"] <= xs.min() and xs.max() < row["x"] + row["w"]


def test_demo_train_val_digits_disjoint(demo):
    rows = read_demo_index(demo)
    train = {r["digit_index"] for r in rows if r["split"] == "train"}
    val = {r["digit_index"] for r in rows if r["split"] == "val"}
    assert train and val and not train & val
    assert train <= set(digit_source_split("train")) and val <= set(digit_source_split("val"))


def test_downscaling_destroys_digit_detail_not_background(demo):
    """Why the method keeps the resolution: shrinking the image to 1/4 of its side and back costs far
    more in the digit's strokes (the pixels that decide the label) than in the background."""
    ratios = []
    for row, rgb, mask in _pairs(demo, "val"):
        im = Image.fromarray(rgb.astype(np.uint8))
        back = im.resize((56, 56), Image.BILINEAR).resize((224, 224), Image.BILINEAR)
        err = np.abs(rgb - np.asarray(back, dtype=np.float32)).mean(axis=2)
        digit = (mask > 0) & (mask < 255)
        far = np.ones_like(digit)  # background away from the digit's own blurred halo
        far[max(0, row["y"] - 8): row["y"] + row["h"] + 8, max(0, row["x"] - 8): row["x"] + row["w"] + 8] = False
        ratios.append(err[digit].mean() / err[far].mean())
    assert np.median(ratios) > 5 and min(ratios) > 2


def test_downscaling_costs_label_information(demo):
    """The label is readable from the rendered digit (1-NN on its crop, trained on the train split), and
    reading it after an 8x downscale is clearly worse."""
    from sklearn.neighbors import KNeighborsClassifier

    def features(split: str, factor: int):
        xs, ys = [], []
        for row, rgb, _ in _pairs(demo, split):
            im = Image.fromarray(rgb.astype(np.uint8)).convert("L")
            if factor > 1:
                im = im.resize((224 // factor,) * 2, Image.BOX).resize((224, 224), Image.BILINEAR)
            box = (row["x"], row["y"], row["x"] + row["w"], row["y"] + row["h"])
            crop = np.asarray(im.crop(box).resize((12, 12), Image.BOX), dtype=np.float32)
            xs.append(((crop - crop.mean()) / (crop.std() + 1e-6)).ravel())
            ys.append(row["label"])
        return np.array(xs), np.array(ys)

    acc = {}
    for factor in (1, 8):
        knn = KNeighborsClassifier(1).fit(*features("train", factor))
        acc[factor] = knn.score(*features("val", factor))
    assert acc[1] > 0.7, acc
    assert acc[1] - acc[8] > 0.15, acc


# --------------------------------------------------------------------------------------------- loaders
def test_classification_loader(demo):
    train = build_dataset(demo, "classification", "train", 96, train=True)
    val = build_dataset(demo, "classification", "val", 96, train=False)
    assert (len(train), len(val)) == (N_TRAIN, N_VAL)
    assert train.classes == [str(c) for c in range(10)] and train.num_classes == 10
    loader = build_loader(train, epoch_batches(len(train), 16, seed=0, epoch=0, shuffle=True, drop_last=True),
                          sample_seed=0)
    x, y = next(iter(loader))
    assert x.shape == (16, 3, 96, 96) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 10
    assert -3 < float(x.mean()) < 3  # ImageNet-normalized, not 0..255
    x, y = val[0]
    assert x.shape == (3, 96, 96) and isinstance(y, int)
    assert torch.equal(val[0][0], val[0][0])  # eval transform is deterministic


def test_loader_order_is_seeded(demo):
    ds = build_dataset(demo, "segmentation", "val", 32, train=False)

    def first_masks(seed):
        loader = build_loader(ds, epoch_batches(len(ds), 4, seed, epoch=0, shuffle=True, drop_last=True))
        return next(iter(loader))[1]

    assert torch.equal(first_masks(1), first_masks(1))
    assert not torch.equal(first_masks(1), first_masks(2))
    loader = build_loader(ds, epoch_batches(len(ds), 7, 0, epoch=0, shuffle=False, drop_last=False))
    assert sum(len(b[0]) for b in loader) == N_VAL  # eval keeps the last partial batch


def test_loader_augmentation_is_independent_of_workers_and_resume(demo):
    """What a sample looks like (random crop, flip, colour jitter) depends only on the seed and its place
    in the epoch: two workers give the batches one process gives, and a loader resumed at batch 2 gives
    exactly the rest; the caller's RNG is not touched by loading."""
    ds = build_dataset(demo, "classification", "train", 32, train=True, hflip=0.5)
    batches = epoch_batches(len(ds), 4, seed=7, epoch=1, shuffle=True, drop_last=True)[:4]
    before = torch.get_rng_state()
    full = list(build_loader(ds, batches, sample_seed=11))
    assert torch.equal(torch.get_rng_state(), before)
    resumed = list(iterate(build_loader(ds, batches, num_workers=2, start=2, sample_seed=11)))
    assert len(full) == 4 and len(resumed) == 2
    for (x, y), (rx, ry) in zip(full[2:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    other = list(build_loader(ds, batches, sample_seed=12))
    assert not torch.equal(full[0][0], other[0][0])  # the augmentation does follow the seed


def test_segmentation_loader(demo):
    for path in (demo, demo / "seg"):  # the demo root or its seg/ folder
        ds = build_dataset(path, "segmentation", "train", 112, train=True)
        assert len(ds) == N_TRAIN and ds.num_classes == 11
    assert ds.hflip == 0.0  # digits are not mirror symmetric: the demo data says so
    loader = build_loader(ds, epoch_batches(len(ds), 8, 0, epoch=0, shuffle=True, drop_last=True), sample_seed=0)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 112, 112) and x.dtype == torch.float32
    assert y.shape == (8, 112, 112) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= set(range(11)) | {255}
    assert (y > 0).any() and (y == 0).float().mean() > 0.85


def test_segmentation_mask_is_resized_with_nearest(demo):
    ds = build_dataset(demo, "segmentation", "val", 160, train=False)
    row = next(r for r in read_demo_index(demo) if r["split"] == "val" and r["idx"] == 0)
    _, y = ds[0]
    assert set(torch.unique(y).tolist()) <= {0, row["label"] + 1, 255}  # no blended label values


def test_flip_applies_to_image_and_mask_together(demo):
    ds = build_dataset(demo, "segmentation", "val", 64, train=True, hflip=1.0)
    ref = build_dataset(demo, "segmentation", "val", 64, train=False)
    (x, y), (rx, ry) = ds[3], ref[3]
    assert torch.equal(y, ry.flip(-1)) and torch.allclose(x, rx.flip(-1))


def test_data_errors(demo, tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_dataset(tmp_path / "nope", "classification", "train", 64, train=False)
    with pytest.raises(UserError, match="not found"):
        build_dataset(tmp_path, "classification", "train", 64, train=False)
    with pytest.raises(UserError, match="unknown task"):
        build_dataset(demo, "detection", "train", 64, train=False)
    with pytest.raises(UserError, match="segmentation layout"):
        build_dataset(demo / "seg", "classification", "train", 64, train=False)

    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        build_dataset(empty, "classification", "train", 64, train=False)

    seg = tmp_path / "seg"
    shutil.copytree(demo / "seg" / "val", seg / "val")
    with pytest.raises(UserError, match="number of classes"):  # no metadata next to a copied folder
        build_dataset(seg, "segmentation", "val", 64, train=False)
    assert build_dataset(seg, "segmentation", "val", 64, train=False, num_classes=11).num_classes == 11
    victim = sorted((seg / "val" / "masks").iterdir())[5]
    victim.rename(victim.with_name("renamed.png"))  # the masks no longer match the images
    with pytest.raises(UserError, match="mask missing for image"):
        build_dataset(seg, "segmentation", "val", 64, train=False, num_classes=11)
    shutil.rmtree(seg / "val" / "masks")
    with pytest.raises(UserError, match="not found"):
        build_dataset(seg, "segmentation", "val", 64, train=False, num_classes=11)


def test_epoch_batches_shard_over_ranks():
    for n in (10, 11):  # 11: padded by wrapping so both ranks get as many batches
        shards = [epoch_batches(n, 2, seed=0, epoch=1, shuffle=True, drop_last=False, rank=r, world=2)
                  for r in range(2)]
        flat = [i for shard in shards for batch in shard for i in batch]
        assert len(shards[0]) == len(shards[1]) == 3
        assert sorted(set(flat)) == list(range(n)) and len(flat) == 2 * ((n + 1) // 2)
    one = epoch_batches(11, 2, seed=0, epoch=1, shuffle=True, drop_last=True)
    assert one == epoch_batches(11, 2, seed=0, epoch=1, shuffle=True, drop_last=True)
    assert one != epoch_batches(11, 2, seed=0, epoch=2, shuffle=True, drop_last=True)  # a new order per epoch
    assert len(one) == 5  # the last partial batch is dropped


# --------------------------------------------------------------------------------------------- bad files
def _small_classification(tmp_path, demo, per_class=2):
    """A copy of the first `per_class` training images of every class (64 px), to break files in."""
    root = tmp_path / "cls"
    for folder in sorted((demo / "train").iterdir()):
        if folder.is_dir():
            (root / "train" / folder.name).mkdir(parents=True)
            for img in sorted(folder.iterdir())[:per_class]:
                shutil.copy(img, root / "train" / folder.name / img.name)
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_images_name_the_file_or_are_skipped(demo, tmp_path, workers):
    root = _small_classification(tmp_path, demo)
    good = sorted((root / "train" / "3").iterdir())[0]
    broken = {"empty.png": b"", "garbage.png": bytes(range(256)) * 4,
              "truncated.png": good.read_bytes()[: len(good.read_bytes()) // 2]}
    for name, data in broken.items():
        (root / "train" / "3" / name).write_bytes(data)
    # a training run (skip_bad_images false) is told of the option; evaluate (None) takes no run config
    for skip, hint in ((False, True), (None, False)):
        ds = build_dataset(root, "classification", "train", 32, train=False, skip_bad_images=skip)
        loader = build_loader(ds, [list(range(len(ds)))], num_workers=workers)
        with pytest.raises(UserError) as e:
            list(iterate(loader))
        message = str(e.value)
        assert "\n" not in message and "cannot read image" in message
        assert ("skip_bad_images" in message) == hint and ("run config" in message) == hint
        assert any(str(root / "train" / "3" / name) in message for name in broken)

    kept = build_dataset(root, "classification", "train", 32, train=False, skip_bad_images=True)
    assert len(kept) == len(ds) - 3 and sorted(p.name for p in kept.skipped) == sorted(broken)
    batch = next(iter(build_loader(kept, [list(range(len(kept)))], num_workers=workers)))
    assert batch[0].shape == (len(kept), 3, 32, 32)


def test_mask_with_a_class_id_beyond_the_data_set_is_one_line(demo, tmp_path):
    seg = tmp_path / "seg"
    shutil.copytree(demo / "seg" / "val", seg / "val")
    mask_path = sorted((seg / "val" / "masks").iterdir())[2]
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[0, 0] = 77
    Image.fromarray(mask).save(mask_path)
    ds = build_dataset(seg, "segmentation", "val", 32, train=False, num_classes=11)
    ds[1]  # the others are fine
    with pytest.raises(UserError) as e:
        ds[2]
    assert str(e.value) == (f"mask '{mask_path}' has class id 77, but the data set has 11 classes "
                            f"(ids 0-10, 255 = ignore)")
    mask[0, 0] = 255  # the ignore index is not a class
    Image.fromarray(mask).save(mask_path)
    assert int(ds[2][1].max()) < 11  # read without complaint (the resize to 32 px drops that pixel)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    wide = np.full((8, 8), 128 * 257, dtype=np.uint16)
    wide[0, 0] = 65535
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(read_image(path))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[1:, 1:] == 128).all() and (rgb[0, 0] == 255).all()
    assert np.asarray(Image.open(path).convert("RGB"))[1, 1, 0] == 255  # what PIL alone makes of it
