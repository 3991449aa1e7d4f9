"""infer_PCSS.py and evaluation.py on the synthetic toy set (CPU).

The scripts run as users run them: a subprocess with the experiment folder under its
working directory (tests never import a script module); the rest calls the library.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.classification import build_dataset
from datasets.layout import TOY_CLASSES
from engine.run_folder import RunFolder
from models.weights import load_network
from utils.errors import UserError
from wsss.cam import cam_dict, label_classes
from wsss.crf import crf_available
from wsss.metrics import cam_miou
from wsss.scorefile import load_cam_dict

from helpers import (ONE_THREAD, ROOT, WritesMarker, assert_clean_error, python, run_script,
                     toy_net, toy_work)

EVAL = ["--data-set", "TOY", "--data-path", "data", "--num_workers", "0"]
DATA = EVAL + ["--arch", "toy", "--device", "cpu"]   # compared with CPU results
THRESHOLDS = ["--thresholds", "0.30", "0.80", "0.01"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory with ``data/`` (12 toy images, 6 of them in val.txt) and
    ``w.pth``, a bare state dict of a randomly initialised toy network."""
    return toy_work(tmp_path_factory.mktemp("infer_eval"), 12, val_fraction=0.5)


@pytest.fixture(scope="module")
def inferred(work):
    """``infer_PCSS.py --dict --png --vis`` run once as a subprocess (name ``run``)."""
    proc = run_script("infer_PCSS.py", "--name", "run", "--load_pretrained", "w.pth",
                      "--dict", "--png", "--vis", "--threshold", "0.4", *DATA, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work


@pytest.fixture(scope="module")
def evaluated(inferred):
    """``evaluation.py --task cam --json out.json`` run once as a subprocess."""
    proc = run_script("evaluation.py", "--name", "run", "--task", "cam", "--json", "out.json",
                      *THRESHOLDS, *EVAL, cwd=inferred)
    assert proc.returncode == 0, proc.stderr
    return inferred, proc


def toy_items(work):
    return build_dataset("TOY", str(work / "data"),
                         str(work / "data/ImageSets/Segmentation/val.txt"), "infer")


def exp(work, *parts):
    return RunFolder("run", work).path(*parts)


def infer(work, *args):
    """``infer_PCSS.py --name run --load_pretrained w.pth`` (+ ``args``) in ``work``."""
    return run_script("infer_PCSS.py", "--name", "run", "--load_pretrained", "w.pth", *DATA,
                      *args, cwd=work)


# ----------------------------------------------------------------------------- outputs
def test_dicts_equal_cam_dict(inferred):
    net = toy_net()
    ds = toy_items(inferred)
    assert sorted(os.listdir(exp(inferred, "dict"))) == sorted(
        [i + ".npy" for i in ds.ids] + ["manifest.json"])
    for image, label, image_id in ds:
        got = load_cam_dict(exp(inferred, "dict", image_id + ".npy"))
        want = cam_dict(net, image[None], label)
        assert sorted(got) == label_classes(label) == sorted(want)
        for k, v in got.items():
            assert v.dtype == np.float32 and v.shape == image.shape[1:]
            assert v.min() >= 0 and v.max() <= 1
            np.testing.assert_allclose(v, want[k], rtol=0, atol=1e-6)


def test_png_is_thresholded_argmax(inferred):
    for image_id in toy_items(inferred).ids:
        with Image.open(exp(inferred, "png", image_id + ".png")) as im:
            assert im.mode == "P"
            assert im.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]   # VOC palette
            got = np.asarray(im)
        cams = load_cam_dict(exp(inferred, "dict", image_id + ".npy"))
        scores = np.zeros((1 + len(TOY_CLASSES),) + got.shape, np.float32)
        scores[0] = 0.4
        for k, v in cams.items():
            scores[k + 1] = v
        np.testing.assert_array_equal(got, np.argmax(scores, axis=0))


def test_vis_jpegs(inferred):
    for image, label, image_id in toy_items(inferred):
        with Image.open(exp(inferred, "vis", image_id + ".jpg")) as im:
            assert im.format == "JPEG"
            H, W = image.shape[1:]
            assert im.size == (W * (1 + len(label_classes(label))), H + 20)


def test_multiscale_averages_before_normalising(work):
    net = toy_net()
    image, label, _ = toy_items(work)[0]
    one = cam_dict(net, image[None], label)
    twice = cam_dict(net, image[None], label, scales=(1.0, 1.0))
    multi = cam_dict(net, image[None], label, scales=(1.0, 0.5))
    for k in one:
        np.testing.assert_allclose(twice[k], one[k], rtol=0, atol=1e-6)
        assert multi[k].shape == one[k].shape
        assert multi[k].min() >= 0 and multi[k].max() <= 1
        assert not np.allclose(multi[k], one[k], atol=1e-3)


@pytest.mark.slow
def test_skip_existing_and_overwrite(inferred):
    ids = toy_items(inferred).ids
    paths = [exp(inferred, "dict", i + ".npy") for i in ids]
    for p in paths:
        os.utime(p, (1e9, 1e9))
    os.remove(paths[0])
    proc = infer(inferred, "--dict")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(ids) - 1} of this process's {len(ids)} already done" in proc.stdout
    assert os.path.getmtime(paths[0]) > 1e9                       # recomputed
    assert all(os.path.getmtime(p) == 1e9 for p in paths[1:])     # skipped
    assert infer(inferred, "--dict", "--overwrite").returncode == 0
    assert all(os.path.getmtime(p) > 1e9 for p in paths)


# -------------------------------------------------------------------------- evaluation
def test_evaluation_json_agrees_with_cam_miou(evaluated):
    work, proc = evaluated
    ids = toy_items(work).ids
    th = np.round(np.arange(0.30, 0.80 - 1e-9, 0.01), 2)
    miou, class_iou = cam_miou(exp(work, "dict"), str(work / "data/SegmentationClass"), ids,
                               1 + len(TOY_CLASSES), th)
    with open(work / "out.json") as f:
        res = json.load(f)
    with open(exp(work, "eval_cam.json")) as f:
        assert json.load(f) == res
    np.testing.assert_allclose(res["thresholds"], th)
    np.testing.assert_allclose(res["miou"], miou, rtol=1e-12)
    best = int(np.argmax(miou))
    assert res["best_threshold"] == pytest.approx(th[best])
    assert res["best_miou"] == pytest.approx(miou[best])
    assert list(res["class_iou"]) == ["background", *TOY_CLASSES]
    np.testing.assert_allclose(list(res["class_iou"].values()), class_iou[best])
    assert f"best mIoU {miou[best]:.2f} at threshold {th[best]:.2f}" in proc.stdout
    assert os.path.isfile(exp(work, "miou_vs_threshold.png"))


def test_png_threshold_defaults_to_best_of_evaluation(evaluated):
    work, _ = evaluated
    with open(exp(work, "eval_cam.json")) as f:
        cam = json.load(f)
    proc = infer(work, "--png", "--overwrite")
    assert f"--png threshold {cam['best_threshold']:.2f}" in proc.stdout, proc.stderr
    proc = run_script("evaluation.py", "--name", "run", "--task", "png", *EVAL, cwd=work)
    assert proc.returncode == 0, proc.stderr
    with open(exp(work, "eval_png.json")) as f:
        png = json.load(f)
    assert png["best_miou"] == pytest.approx(cam["best_miou"], abs=1e-9)
    assert "predictions made by " + os.path.abspath(str(work / "w.pth")) in proc.stdout


def test_evaluation_does_not_import_torch(evaluated):
    """``python -X importtime`` lists every module the program imports."""
    work, _ = evaluated
    proc = python("-X", "importtime", os.path.join(ROOT, "evaluation.py"), "--name", "run",
                  *THRESHOLDS, *EVAL, cwd=work, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "numpy" in imported and "torch" not in imported


# ------------------------------------------------------------------------------ errors
def test_checkpoint_that_runs_code_is_refused(work):
    marker = work / "pwned"
    torch.save({"model": WritesMarker(str(marker))}, work / "evil.pth")
    proc = run_script("infer_PCSS.py", "--name", "evil", "--load_pretrained", "evil.pth",
                      *DATA, cwd=work)
    assert_clean_error(proc, "refusing to load evil.pth")
    assert not marker.exists()


def test_missing_checkpoint_is_a_clean_error(work):
    proc = run_script("infer_PCSS.py", "--name", "run", "--load_epo", "5", *DATA, cwd=work)
    assert_clean_error(proc, f"checkpoint not found: {RunFolder('run').epoch_checkpoint(5)} "
                             f"(no epoch checkpoints saved)")


@pytest.mark.parametrize("args,message", [
    (["--val_list", "nope.txt"], "list file not found: nope.txt"),
    (["--data-path", "no_data"], "data directory not found: no_data"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU"),
    pytest.param(["--crf"], "pip install pydensecrf2", marks=pytest.mark.skipif(
        crf_available(), reason="pydensecrf2 is installed")),
])
def test_infer_input_errors(work, args, message):
    """A clean message (no traceback, exit 2) before any image is processed."""
    proc = run_script("infer_PCSS.py", "--name", "errors", "--load_pretrained", "w.pth",
                      *DATA, *args, cwd=work)
    assert_clean_error(proc, message)
    assert proc.returncode == 2
    assert not os.path.isdir(RunFolder("errors", work).dict_dir)


def test_wrong_architecture_names_the_keys(work):
    with pytest.raises(UserError, match="checkpoint does not match"):
        load_network("deit_tiny", len(TOY_CLASSES), 96, str(work / "w.pth"),
                     torch.device("cpu"))


def test_evaluation_errors_are_clear(inferred):
    work = inferred
    (work / "empty_gt").mkdir(exist_ok=True)
    with open(work / "plus_one.txt", "w") as f:
        f.write("\n".join(toy_items(work).ids + ["toy_99999"]) + "\n")
    run = RunFolder("run")
    cases = [
        (["--name", "nothing"], f"predictions not found: {RunFolder('nothing').dict_dir}"),
        (["--name", "run", "--task", "crf"], "--task crf needs --dict_dir"),
        (["--name", "run", "--list", "nope.txt"], "list file not found: nope.txt"),
        (["--name", "run", "--list", "plus_one.txt"],
         f"1 CAM dicts in {run.dict_dir} missing: {run.dict_dir}/toy_99999.npy"),
        (["--name", "run", "--gt_dir", "empty_gt"], "6 ground-truth PNGs in empty_gt missing"),
        (["--name", "run", "--num_classes", "3"], "the ground truth has class 4 but there are "
                                                  "3 classes with background"),
    ]
    for args, message in cases:
        assert_clean_error(run_script("evaluation.py", *args, *EVAL, cwd=work), message)


def test_folder_flags_resolve_in_the_run_first(evaluated):
    """The authors' ``--dict_dir dict``: the run's folder when it is there, else the path as
    given; neither: one line naming both places."""
    work, _ = evaluated
    default = json.loads((work / "out.json").read_text())
    proc = run_script("evaluation.py", "--name", "run", "--task", "cam", "--dict_dir", "dict",
                      "--json", "dict.json", *THRESHOLDS, *EVAL, cwd=work)
    assert proc.returncode == 0, proc.stderr
    named = json.loads((work / "dict.json").read_text())
    assert named["dict_dir"] == RunFolder("run").dict_dir
    assert named["best_miou"] == default["best_miou"]
    proc = run_script("evaluation.py", "--name", "run", "--dict_dir", "nowhere", *EVAL, cwd=work)
    assert_clean_error(proc, f"--dict_dir nowhere is neither {RunFolder('run').path('nowhere')} "
                             f"(in the run's folder) nor nowhere (as given)")


@pytest.mark.parametrize("task", ["cam", "png"])
def test_a_mask_of_another_size_is_one_line_from_the_reading_threads(inferred, task):
    work = inferred
    gt = work / f"gt_{task}"
    gt.mkdir(exist_ok=True)
    ids = toy_items(work).ids
    for i in ids:
        label = np.asarray(Image.open(work / "data" / "SegmentationClass" / (i + ".png")))
        if i == ids[2]:
            label = label[:-5]                      # 5 rows short of its image
        Image.fromarray(label).save(gt / (i + ".png"))
    proc = run_script("evaluation.py", "--name", "run", "--task", task, "--gt_dir", gt.name,
                      *THRESHOLDS, *EVAL, "--num_workers", "3", cwd=work)
    assert_clean_error(proc, f"image {ids[2]}: the ")
    assert "but the ground truth is 91x96" in proc.stderr and f"gt_{task}/{ids[2]}.png" in proc.stderr
    assert proc.returncode == 2
    assert [l for l in proc.stderr.splitlines() if l.strip() and "scoring" not in l] == [
        proc.stderr.strip().splitlines()[-1]]       # one line besides the progress bar


@pytest.mark.slow
def test_torchrun_splits_the_list_and_matches_one_process(inferred):
    """Two CPU ranks (gloo) write every dict once between them, equal to one process's."""
    proc = run_script("infer_PCSS.py", "--name", "ddp", "--load_pretrained", "w.pth", *DATA,
                      cwd=inferred, nproc=2, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_dir, two_dir = RunFolder("run", inferred).dict_dir, RunFolder("ddp", inferred).dict_dir
    one = sorted(p for p in os.listdir(one_dir) if p.endswith(".npy"))
    two = sorted(p for p in os.listdir(two_dir) if p.endswith(".npy"))
    assert one == two and len(one) == 6
    for name in one:
        a = load_cam_dict(os.path.join(one_dir, name))
        b = load_cam_dict(os.path.join(two_dir, name))
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-6)
