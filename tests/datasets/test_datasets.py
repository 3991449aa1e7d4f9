"""The data layer: list/label preparation, the toy set, the dataset modes and their errors.

Small VOC-, COCO- and toy-format folders are written to tmp_path on the fly.
"""
import filecmp
import inspect
import os
import pickle
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import datasets
from datasets.classification import build_transform
from datasets.labels import labels_from_mask
from datasets.layout import COCO_CLASSES, TOY_CLASSES, VOC_CLASSES, layout
from datasets.prepare import coco_val_subset, prepare_coco, prepare_voc
from datasets.toy import make_toy
from utils.errors import UserError
from utils.io import load_npy_dict, read_label_png
from utils.lists import read_id_list

from helpers import WritesMarker, assert_clean_error, assert_ok, python, run_script


# VOC fixture: id -> object names of its XML (parts excluded); which ids have aug masks.
VOC_OBJECTS = {"2007_000001": ["dog", "person"], "2007_000002": ["aeroplane"],
               "2007_000003": ["tvmonitor", "tvmonitor"], "2007_000004": ["cat"],
               "2008_000005": [], "2008_000006": ["bus", "car"]}
VOC_TRAIN = ["2007_000001", "2007_000002"]
VOC_VAL = ["2007_000003", "2007_000004"]
VOC_AUG = ["2007_000001", "2007_000003", "2008_000005", "2008_000006"]


def write_jpeg(path, width, height, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def write_mask(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8)).save(path)


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{l}\n" for l in lines))


def voc_xml(names):
    objects = "".join(f"<object><name>{n}</name><part><name>head</name></part></object>"
                      for n in names)
    return f"<annotation><filename>x.jpg</filename>{objects}</annotation>"


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    for k, (image_id, names) in enumerate(VOC_OBJECTS.items()):
        write_jpeg(str(root / "JPEGImages" / f"{image_id}.jpg"), 40 + k, 30, seed=k)
        os.makedirs(root / "Annotations", exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(names))
    for image_id in VOC_AUG:
        write_mask(str(root / "SegmentationClassAug" / f"{image_id}.png"), np.zeros((30, 40)))
    seg = root / "ImageSets" / "Segmentation"
    write_lines(str(seg / "train.txt"), VOC_TRAIN)
    write_lines(str(seg / "val.txt"), VOC_VAL)
    return root


# COCO fixture: (split, 12-digit id) -> mask values (k = class k-1; 0 and 255 ignored).
COCO_MASKS = {("train", "000000000009"): [0, 1, 255], ("train", "000000000025"): [0, 80],
              ("train", "000000000030"): [0, 255], ("val", "000000000042"): [3, 17, 0]}


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "COCO2014"
    for k, ((split, image_id), values) in enumerate(COCO_MASKS.items()):
        name = f"COCO_{split}2014_{image_id}"
        write_jpeg(str(root / f"{split}2014" / f"{name}.jpg"), 50, 36 + k, seed=k)
        mask = np.resize(np.array(values, np.uint8), (36 + k, 50))
        write_mask(str(root / "SegmentationClass" / f"{split}2014" / f"{name}.png"), mask)
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "TOY"
    make_toy(str(root), num_images=10, seed=3, size=64)
    return root


def read_list(path):
    with open(path) as f:
        return f.read().split()


def same_files(a, b):
    """True when the folders hold the same file names with the same bytes."""
    def files(root):
        return sorted(os.path.relpath(os.path.join(d, n), root)
                      for d, _, names in os.walk(root) for n in names)
    names = files(a)
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return names == files(b) and not mismatch and not errors


# ---- prepare ---------------------------------------------------------------------------

def test_prepare_voc_lists_and_labels(voc):
    prepare_voc(str(voc))
    seg = voc / "ImageSets" / "Segmentation"
    assert read_list(seg / "train_aug.txt") == sorted(set(VOC_AUG) - set(VOC_VAL))
    labels = load_npy_dict(str(voc / "cls_labels.npy"))
    assert sorted(labels) == sorted(set(VOC_AUG) | set(VOC_TRAIN) | set(VOC_VAL))
    for image_id, vec in labels.items():
        expected = np.zeros(20, np.float32)
        expected[[VOC_CLASSES.index(n) for n in VOC_OBJECTS[image_id]]] = 1
        assert vec.dtype == np.float32 and np.array_equal(vec, expected), image_id


def test_prepare_is_idempotent(voc, coco):
    for prepare, root, names in ((prepare_voc, voc, ["cls_labels.npy",
                                                     "ImageSets/Segmentation/train_aug.txt"]),
                                 (prepare_coco, coco, ["cls_labels.npy", "train14.txt",
                                                       "val14.txt", "val_5200.txt"])):
        prepare(str(root))
        first = [(root / n).read_bytes() for n in names]
        prepare(str(root))
        assert [(root / n).read_bytes() for n in names] == first


def test_prepare_coco_lists_and_labels(coco):
    prepare_coco(str(coco))
    train = sorted(i for s, i in COCO_MASKS if s == "train")
    assert read_list(coco / "train14.txt") == train
    assert read_list(coco / "val14.txt") == ["000000000042"]
    assert read_list(coco / "val_5200.txt") == train       # fewer than 5,200: all of train
    labels = load_npy_dict(str(coco / "cls_labels.npy"))
    assert sorted(labels) == sorted(i for _, i in COCO_MASKS)
    for (_, image_id), values in COCO_MASKS.items():
        classes = [v - 1 for v in values if v not in (0, 255)]
        assert np.flatnonzero(labels[image_id]).tolist() == sorted(classes)
        assert labels[image_id].shape == (len(COCO_CLASSES),)


def test_coco_val_subset_is_a_fixed_subset_of_train():
    train = [f"{i:012d}" for i in range(0, 30000, 3)]
    sub = coco_val_subset(train)
    assert len(sub) == 5200 and len(set(sub)) == 5200 and set(sub) <= set(train)
    assert sub == sorted(sub) == coco_val_subset(train[::-1])
    assert sub != coco_val_subset(train, seed=1)


def test_labels_from_mask_ignores_background_and_boundary():
    mask = np.array([[0, 255, 2], [4, 4, 0]], np.uint8)
    assert labels_from_mask(mask, 4).tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="mask value 5"):
        labels_from_mask(np.array([[5]], np.uint8), 4)


def test_prepare_reports_missing_subfolders(voc, coco):
    os.rename(voc / "Annotations", voc / "elsewhere")
    with pytest.raises(UserError, match="Annotations"):
        prepare_voc(str(voc))
    os.rename(coco / "SegmentationClass" / "val2014", coco / "elsewhere")
    with pytest.raises(UserError, match=r"SegmentationClass/val2014"):
        prepare_coco(str(coco))


def test_prepare_reports_unreadable_files(voc, coco):
    (voc / "Annotations" / "2007_000002.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match=r"1 of 6 files could not be read: .*2007_000002\.xml"):
        prepare_voc(str(voc))
    bad = coco / "SegmentationClass" / "train2014" / "COCO_train2014_000000000025.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="COCO_train2014_000000000025.png"):
        prepare_coco(str(coco))


def test_prepare_cli_missing_dir_exits_with_message(tmp_path):
    missing = str(tmp_path / "nowhere")
    res = run_script("-m datasets.prepare", "--data-set", "VOC12", "--data-path", missing)
    assert_clean_error(res, "data directory not found")
    assert missing in res.stderr


# ---- toy set ---------------------------------------------------------------------------

def test_toy_is_deterministic(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_toy(str(tmp_path / name), num_images=4, seed=seed, size=64, shortcut=True)
    assert same_files(tmp_path / "a", tmp_path / "b")
    jpeg = os.path.join("JPEGImages", "toy_00000.jpg")
    assert (tmp_path / "a" / jpeg).read_bytes() != (tmp_path / "c" / jpeg).read_bytes()


def test_toy_masks_and_labels_agree(toy):
    seg = toy / "ImageSets" / "Segmentation"
    train, val = read_list(seg / "train.txt"), read_list(seg / "val.txt")
    assert (len(train), len(val)) == (8, 2) and not set(train) & set(val)
    labels = load_npy_dict(str(toy / "cls_labels.npy"))
    assert sorted(labels) == sorted(train + val)
    for image_id in train + val:
        mask = read_label_png(str(toy / "SegmentationClass" / f"{image_id}.png"))
        with Image.open(toy / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 2, 3, 4, 255}
        assert 255 in mask
        label = labels[image_id]
        assert np.array_equal(label, labels_from_mask(mask, len(TOY_CLASSES)))
        assert 1 <= label.sum() <= 2
        for k in np.flatnonzero(label):
            assert (mask == k + 1).mean() > 0.05     # every labelled object is visible


def test_toy_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="num-images"):
        make_toy(str(tmp_path / "t"), num_images=1, seed=0)
    with pytest.raises(UserError, match="val-fraction"):
        make_toy(str(tmp_path / "t"), num_images=5, seed=0, val_fraction=1.0)


# ---- datasets --------------------------------------------------------------------------

def test_build_dataset_signature_and_no_torch_in_layout():
    params = inspect.signature(datasets.build_dataset).parameters
    assert list(params) == ["data_set", "data_path", "list_path", "mode", "input_size",
                            "augment"]
    assert params["input_size"].default == 224 and params["augment"].default == "timm"
    code = "import sys, datasets.layout; assert 'torch' not in sys.modules"
    assert_ok(python("-c", code))


@pytest.mark.parametrize("mode,augment", [("train", "timm"), ("train", "light"),
                                          ("fim", "timm")])
def test_square_modes(toy, mode, augment):
    random.seed(0)              # timm's RandAugment draws from `random`, torchvision from torch
    torch.manual_seed(0)
    ds = datasets.build_dataset("TOY", str(toy), str(toy / "ImageSets/Segmentation/train.txt"),
                                mode, input_size=48, augment=augment)
    assert len(ds) == 8 and ds.labels.shape == (8, 4)
    image, label = ds[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert torch.isfinite(image).all()
    assert label.dtype == torch.float32 and torch.equal(label, torch.from_numpy(ds.labels[0]))


def test_timm_posterize_to_zero_bits_gives_black_like_the_reference():
    """Magnitude 9 +- 0.5 reaches 10, where PosterizeIncreasing keeps 0 bits: Pillow >= 11
    raises there; the reference's Pillow returned a black image."""
    transform = build_transform("train", 32, "timm")
    rand_augment = next(t for t in transform.transforms if isinstance(t, RandAugment))
    op = next(op for op in rand_augment.ops if op.name == "PosterizeIncreasing")
    op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, 10
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert not np.asarray(op(image)).any()
    op.magnitude = 5                               # 2 bits kept
    assert np.unique(np.asarray(op(image))).tolist() == [0, 64, 192]


def test_infer_mode_native_size_and_collate(toy):
    ds = datasets.build_dataset("TOY", str(toy), str(toy / "ImageSets/Segmentation/val.txt"),
                                "infer")
    image, label, image_id = ds[1]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (4,) and image_id == ds.ids[1] == "toy_00009"
    with Image.open(toy / "JPEGImages" / "toy_00009.jpg") as im:
        pixels = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) / 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN,
                                                         IMAGENET_DEFAULT_STD))
    torch.testing.assert_close(image * std + mean, pixels)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=datasets.collate_single)
    items = list(loader)
    assert [i[2] for i in items[:2]] == ["toy_00008", "toy_00009"]
    assert items[1][0].shape == (3, 64, 64) and items[1][1].shape == (4,)
    torch.testing.assert_close(items[1][0], image)


def test_voc_reference_list_format_and_empty_label(voc):
    prepare_voc(str(voc))
    ids = ["2008_000005", "2007_000001"]
    lst = voc / "ref.txt"
    write_lines(str(lst), [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids])
    ds = datasets.build_dataset("VOC12", str(voc), str(lst), "infer")
    assert ds.ids == ids
    image, label, image_id = ds[0]
    assert image_id == "2008_000005" and image.shape == (3, 30, 44)
    assert label.shape == (20,) and label.sum() == 0     # background only is legal
    assert ds[1][1].nonzero().flatten().tolist() == [VOC_CLASSES.index("dog"),
                                                     VOC_CLASSES.index("person")]


def test_coco_dataset_bare_and_prefixed_ids(coco):
    prepare_coco(str(coco))
    lst = coco / "mixed.txt"
    write_lines(str(lst), ["000000000042", "COCO_train2014_000000000009"])
    ds = datasets.build_dataset("COCO", str(coco), str(lst), "infer")
    (image0, label0, _), (image1, label1, _) = ds[0], ds[1]
    assert image0.shape == (3, 39, 50) and image1.shape == (3, 36, 50)
    assert label0.nonzero().flatten().tolist() == [2, 16] and label1.sum() == 1


# ---- errors ----------------------------------------------------------------------------

def test_error_missing_dir_and_list(toy, tmp_path):
    with pytest.raises(UserError, match="data directory not found.*datasets.toy"):
        datasets.build_dataset("TOY", str(tmp_path / "nope"), "x.txt", "fim")
    with pytest.raises(UserError, match="list file not found: .*missing.txt"):
        datasets.build_dataset("TOY", str(toy), str(tmp_path / "missing.txt"), "fim")


def test_error_id_absent_from_labels(voc):
    prepare_voc(str(voc))
    lst = voc / "extra.txt"
    write_lines(str(lst), ["2007_000001", "2011_999999"])
    with pytest.raises(UserError) as e:
        datasets.build_dataset("VOC12", str(voc), str(lst), "fim")
    msg = str(e.value)
    assert "1 ids missing: 2011_999999" in msg and "cls_labels.npy" in msg
    assert "python -m datasets.prepare --data-set VOC12" in msg


def test_error_labels_missing_or_unsafe(voc):
    train = str(voc / "ImageSets/Segmentation/train.txt")
    with pytest.raises(UserError, match="image-level labels not found.*datasets.prepare"):
        datasets.build_dataset("VOC12", str(voc), train, "fim")
    np.save(voc / "cls_labels.npy", {"2007_000001": Counter()}, allow_pickle=True)
    with pytest.raises(UserError, match="not a readable cls_labels.npy.*forbidden"):
        datasets.build_dataset("VOC12", str(voc), train, "fim")


def test_error_missing_and_corrupt_images(voc):
    prepare_voc(str(voc))
    train = str(voc / "ImageSets/Segmentation/train_aug.txt")
    os.remove(voc / "JPEGImages" / "2008_000006.jpg")
    with pytest.raises(UserError, match=r"1 image files missing: .*2008_000006\.jpg"):
        datasets.build_dataset("VOC12", str(voc), train, "fim")
    write_jpeg(str(voc / "JPEGImages" / "2008_000006.jpg"), 20, 20)
    (voc / "JPEGImages" / "2008_000005.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = datasets.build_dataset("VOC12", str(voc), train, "fim")
    with pytest.raises(UserError, match=r"cannot read image .*2008_000005\.jpg"):
        ds[ds.ids.index("2008_000005")]


# ---- files researchers already have ----------------------------------------------------

def save_old_pickle(path, obj, protocol=2):
    """``np.save`` of a dict as the authors' ``cls_labels.npy`` is written: an object array
    pickled with protocol 2, whose arrays rebuild their bytes through ``_codecs.encode``."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False,
                                                 "shape": ()})
        pickle.dump(np.array(obj, dtype=object), f, protocol=protocol)


def test_authors_protocol2_cls_labels_load(voc):
    labels = {i: np.eye(20, dtype=np.float32)[k] for k, i in enumerate(VOC_OBJECTS)}
    save_old_pickle(voc / "cls_labels.npy", labels)
    with open(voc / "cls_labels.npy", "rb") as f:
        assert b"_codecs" in f.read()             # the construct the issue is about
    ds = datasets.build_dataset("VOC12", str(voc), str(voc / "ImageSets/Segmentation/train.txt"),
                                "fim")
    for image_id, vec in zip(ds.ids, ds.labels):
        np.testing.assert_array_equal(vec, labels[image_id])


def test_integer_keyed_labels_of_irn_style_repositories(voc):
    labels = {int(i.replace("_", "")): np.eye(20, dtype=np.float32)[k]
              for k, i in enumerate(VOC_OBJECTS)}
    save_old_pickle(voc / "cls_labels.npy", labels, protocol=4)
    ds = datasets.build_dataset("VOC12", str(voc), str(voc / "ImageSets/Segmentation/val.txt"),
                                "fim")
    for image_id, vec in zip(ds.ids, ds.labels):
        np.testing.assert_array_equal(vec, labels[int(image_id.replace("_", ""))])


def test_old_pickles_that_call_anything_else_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    save_old_pickle(tmp_path / "evil.npy", {"2007_000001": WritesMarker(str(marker))})
    with pytest.raises(pickle.UnpicklingError, match="forbidden object _?io.open"):
        load_npy_dict(str(tmp_path / "evil.npy"))
    assert not marker.exists()

    class Codec:        # _codecs.encode is allowed only as a latin1 bytes builder
        def __reduce__(self):
            import _codecs
            return (_codecs.encode, ("eJwLAAAA", "base64"))
    save_old_pickle(tmp_path / "codec.npy", {"x": Codec()})
    with pytest.raises(pickle.UnpicklingError, match="forbidden codec 'base64'"):
        load_npy_dict(str(tmp_path / "codec.npy"))


def test_prepare_voc_without_sbd(voc, capsys):
    shutil.rmtree(voc / "SegmentationClassAug")
    written = prepare_voc(str(voc))
    out = capsys.readouterr().out
    assert "SegmentationClassAug" in out and "train_aug" in out and "dropbox" in out
    assert not (voc / "ImageSets/Segmentation/train_aug.txt").exists()
    assert sorted(load_npy_dict(str(voc / "cls_labels.npy"))) == sorted(VOC_TRAIN + VOC_VAL)
    assert list(written) == [str(voc / "cls_labels.npy")]
    datasets.build_dataset("VOC12", str(voc), str(voc / "ImageSets/Segmentation/train.txt"),
                           "infer")


def test_authors_two_column_train_aug_without_sbd(voc, capsys):
    shutil.rmtree(voc / "SegmentationClassAug")
    aug = sorted(set(VOC_AUG) - set(VOC_VAL))
    write_lines(str(voc / "ImageSets/Segmentation/train_aug.txt"),
                [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in aug])
    prepare_voc(str(voc))
    assert "using the existing" in capsys.readouterr().out
    ds = datasets.build_dataset("VOC12", str(voc), layout("VOC12", str(voc)).train_list, "train",
                                32)
    assert ds.ids == aug and len(ds[0]) == 2


def test_list_files_crlf_blank_duplicates_and_paths(tmp_path):
    p = tmp_path / "l.txt"
    p.write_bytes(b"2007_000001\r\n\r\n  \r\n# comment\r\n2007_000002\r\n")
    assert read_id_list(str(p)) == ["2007_000001", "2007_000002"]
    p.write_text("2007_000001\n2007_000002\n2007_000001\n")
    with pytest.raises(UserError, match="1 ids more than once.*2007_000001"):
        read_id_list(str(p))
    for bad in ("../../etc/passwd", "/home/user/VOC/JPEGImages/2007_000001.jpg", "a;b"):
        p.write_text(bad + "\n")
        with pytest.raises(UserError, match="l.txt"):
            read_id_list(str(p))


def test_infer_transform_is_torchvisions_without_torchvision():
    """The infer transform gives torchvision's ToTensor + Normalize bits."""
    from PIL import Image
    from torchvision import transforms
    from datasets.classification import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                                         build_transform)
    ref = transforms.Compose([transforms.ToTensor(),
                              transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    rng = np.random.default_rng(0)
    for h, w in ((375, 500), (5, 3)):
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        got, want = build_transform("infer")(im), ref(im)
        assert got.dtype == want.dtype and torch.equal(got, want)
