"""``make rehearsal`` (``bench/rehearsal.py``): the README's VOC commands, read from
README.md, run as printed on a VOC-shaped synthetic folder with the real backbones. Here in
its reduced form (one image per split at half the VOC sizes, one network per stage), so
that a README command that stops working fails the suite."""
import os

import numpy as np
import pytest

from bench.rehearsal import readme_voc_commands, reduce_command
from utils.lists import read_id_list

from helpers import ROOT, run_script

README = os.path.join(ROOT, "README.md")


def test_the_readme_voc_commands_are_read_in_order_and_only_shortened():
    commands = readme_voc_commands(README)
    assert not any("COCO" in c or "torchrun" in c for c in commands)
    authors = ["python infer_PCSS.py --name pcss_release --load_pretrained "
               "pretrained/eccv24_pcss_wsss_69.5_pascal.pth --dict",
               "python evaluation.py --name pcss_release --task cam --dict_dir dict"]
    assert commands.index(authors[0]) + 1 == commands.index(authors[1])
    scripts = {c.split()[1] for c in commands}
    assert {"train_PCSS.py", "infer_PCSS.py", "evaluation.py", "train_aff.py", "infer_aff.py",
            "train_seg.py", "infer_seg.py"} <= scripts
    assert any("deeplabv2_r101" in c and "train_seg.py" in c for c in commands)
    assert any("--split test" in c for c in commands)
    words, changes = reduce_command(["python", "infer_PCSS.py", "--load_epo", "59"], 1)
    assert words[-1] == "0" and changes == ["--load_epo 59 -> 0"]
    words, _ = reduce_command(["python", "train_PCSS.py", "--name", "x", "--resume"], 1)
    assert words[-4:] == ["--epochs", "2", "--batch_size", "2"]


@pytest.mark.slow
def test_rehearsal_runs_the_readme_commands(tmp_path):
    proc = run_script("-m bench.rehearsal", "--quick", "--work", str(tmp_path / "work"),
                      timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "README commands ran as printed" in out and "peak MB" in out
    from engine.run_folder import RunFolder

    release, voc = RunFolder("pcss_release", tmp_path / "work"), RunFolder("pcss_voc",
                                                                             tmp_path / "work")
    assert os.path.isfile(release.eval_json("cam"))                # the authors' commands
    assert os.path.isfile(voc.results_archive())                   # the test-server archive
    assert os.path.isfile(voc.trained_weights("segmentation"))
    with open(voc.path("train.log")) as f:
        log = f.read()
    assert "  finetune: pretrained/deit_small_patch16_224-cd65a155.pth" in log


def test_the_voc_like_folder_has_voc_geometry_and_prepares(tmp_path):
    from PIL import Image

    from datasets.layout import layout
    from datasets.prepare import prepare_voc
    from datasets.segmentation_data import SegTrainDataset
    from datasets.voc_like import VOC_SIZES, make_voc_like
    from utils.errors import UserError
    from utils.io import read_label_png
    from utils.vis import save_label_png

    root = str(tmp_path / "VOC2012")
    ids = make_voc_like(root, {"train": 2, "aug": 2, "val": 1, "test": 1})
    prepare_voc(root, report=lambda msg: None)
    lay = layout("VOC12", root)
    assert read_id_list(lay.train_list) == sorted(ids["train"] + ids["aug"])
    every = ids["train"] + ids["aug"] + ids["val"] + ids["test"]
    for n, i in enumerate(every):
        with Image.open(lay.image_path(i)) as im:
            assert im.size == VOC_SIZES[n]
    mask = read_label_png(os.path.join(root, "SegmentationClassAug", ids["aug"][0] + ".png"))
    assert 255 in mask and 0 in mask and mask[mask != 255].max() <= 20
    assert not os.path.isfile(os.path.join(root, "SegmentationClass", ids["aug"][0] + ".png"))
    assert not os.path.isfile(os.path.join(root, "Annotations", ids["test"][0] + ".xml"))
    # a pseudo mask with a class the dataset does not have: one line naming the file
    bad = os.path.join(root, "SegmentationClassAug", ids["train"][0] + ".png")
    save_label_png(bad, np.where(read_label_png(bad) == 0, 0, 30))
    ds = SegTrainDataset(lay, ids["train"], os.path.join(root, "SegmentationClassAug"))
    with pytest.raises(UserError, match=f"{ids['train'][0]}.png has class 30 but VOC12 has 20"):
        ds[(0, 1.0)]
