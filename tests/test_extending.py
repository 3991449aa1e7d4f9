"""README.md's "Extending" section works as written: its backbone file and entry, its dataset
entry and its command, taken from the README text, train a segmentation net on a 4-image
synthetic dataset.

The entries run in the registries' own modules (as if added to ``models/registry.py`` and
``datasets/layout.py``) and the network file is put where ``models.tiny`` is found, in a
separate process, so that the registries of the other tests stay as they are. The command
is in an ``sh`` block, not ``bash``: tests/test_readme.py parses the ``bash`` commands
against the registries without these entries."""
import glob
import os
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.labels import save_label_dict, write_id_list
from utils.vis import save_label_png

from helpers import ROOT, python


# the registrations run in their modules' namespaces, then the script as `python <script>`
PROGRAM = """
import runpy, sys
import models, models.registry, datasets.layout
models.__path__.append(sys.argv[1])
exec(sys.argv[2], vars(models.registry))
exec(sys.argv[3], vars(datasets.layout))
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def extending_section():
    """The README's "Extending" section: {first comment line: code} of its python blocks,
    and its sh command."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    blocks = {b.splitlines()[0]: b for b in re.findall(r"```python\n(.*?)```", section, re.S)}
    command = re.findall(r"```sh\n(.*?)```", section, re.S)[0].strip()
    return blocks, command


def shapes_dataset(root):
    """4 images of 64 px, a circle (class 1) or a square (class 2) on a grey ground, in the
    VOC folder layout; the masks twice: as ground truth and as the pseudo masks."""
    rng = np.random.default_rng(0)
    ids = [f"shape_{i}" for i in range(4)]
    labels = {}
    yy, xx = np.mgrid[:64, :64]
    for i, image_id in enumerate(ids):
        cls = 1 + i % 2
        cy, cx = rng.integers(20, 44, 2)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2 if cls == 1
                  else (abs(yy - cy) < 13) & (abs(xx - cx) < 13))
        mask = np.where(inside, cls, 0).astype(np.uint8)
        rgb = np.full((64, 64, 3), 128, np.uint8)
        rgb[inside] = (200, 40, 40) if cls == 1 else (40, 40, 200)
        for folder in ("JPEGImages", "SegmentationClass", "masks"):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
        Image.fromarray(rgb).save(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        for folder in ("SegmentationClass", "masks"):
            save_label_png(os.path.join(root, folder, image_id + ".png"), mask)
        labels[image_id] = np.eye(2, dtype=np.float32)[cls - 1]
    save_label_dict(os.path.join(root, "cls_labels.npy"), labels)
    write_id_list(os.path.join(root, "train.txt"), ids)
    write_id_list(os.path.join(root, "val.txt"), ids[:2])


@pytest.mark.slow
def test_the_readme_extending_section_runs_as_written(tmp_path):
    blocks, command = extending_section()
    net_file = blocks["# models/tiny.py"]
    backbone = blocks["# models/registry.py, after the other entries"]
    dataset = blocks["# datasets/layout.py, after the other entries"]
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "tiny.py").write_text(net_file)
    words = shlex.split(command)
    assert words[:2] == ["python", "train_seg.py"]
    data = dict(zip(words[2::2], words[3::2]))["--data-path"]
    shapes_dataset(str(tmp_path / data))
    argv = [os.path.join(ROOT, words[1]), *words[2:], "--crop_size", "64", "--num_workers",
            "0", "--no-tensorboard", "--device", "cpu"]
    proc = python("-c", PROGRAM, str(ext), backbone, dataset, *argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = glob.glob(str(tmp_path / "**" / "seg_net.pth"), recursive=True)
    assert len(saved) == 1
    state = torch.load(saved[0], map_location="cpu", weights_only=True)
    assert "trunk.0.weight" in state                          # the dataset's backbone: tiny
    assert state["fc8_seg_conv2.weight"].shape[0] == 3       # background, circle, square


def test_registry_lookups_name_the_choices():
    from datasets.layout import CocoDataset, DATASETS, layout, register_dataset
    from models.registry import build_segmentation_net, register_backbone, BACKBONES
    from utils.errors import UserError
    from utils.registry import Registry

    with pytest.raises(UserError, match="unknown --data-set 'NOPE'; choose one of VOC12, COCO"):
        layout("NOPE", ROOT, check=False)
    with pytest.raises(UserError, match="resnet50 has no segmentation net; choose one of "
                                        "resnet38, deeplabv2_r101, toy"):
        build_segmentation_net("resnet50", 3)
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(CocoDataset("COCO", ("a",), lists={}))
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone(BACKBONES["toy"])
    reg = Registry("thing", "--thing")
    reg.register("a", 1)
    assert list(reg) == ["a"] and "a" in reg and reg["a"] == 1 and len(reg) == 1
    assert len(DATASETS) >= 3


def test_training_recipes_come_from_the_backbone_entries():
    """train_seg.py's defaults: MCTformer's for resnet38 (its weight decay passed as SGD's
    momentum), deeplab-pytorch's 20,000 iterations of batch 10 as epochs for DeepLabV2."""
    from models.registry import seg_optim, seg_recipe

    assert seg_recipe("resnet38", 10582) == {"epochs": 30, "batch_size": 4, "lr": 7e-4,
                                             "weight_decay": 1e-5}
    assert seg_recipe("deeplabv2_r101", 10582) == {"epochs": 19, "batch_size": 10,
                                                   "lr": 2.5e-4, "weight_decay": 5e-4}
    assert seg_recipe("deeplabv2_r101", 5)["epochs"] == 20000
    assert seg_optim("resnet38", 1e-5, None) == (0.0, 1e-5)
    assert seg_optim("resnet38", 1e-5, 0.9) == (1e-5, 0.9)
    assert seg_optim("deeplabv2_r101", 5e-4, None) == (5e-4, 0.9)
