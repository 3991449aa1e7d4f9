"""The refinement and segmentation stages from the command line, on the synthetic toy set
(CPU): seeds -> CRF score dicts -> ``train_aff.py`` -> ``infer_aff.py`` -> pseudo masks ->
``train_seg.py`` -> ``infer_seg.py`` (val, and the VOC test server's layout), and the errors
and refusals of those scripts.

The seeds are synthetic so that no PCSS training is needed: per class present, the ground
truth mask eroded and blurred, normalised to max 1 (``synthetic_seeds``). Like CAMs they peak
inside the object and under-cover it; the CRF score dicts are made from them by the library
function ``infer_PCSS.py --crf`` uses (``wsss.pseudo.crf_score_dict``). The scripts run as
users run them: subprocesses with the experiment folder under their working directory.
"""
import hashlib
import json
import os
import shutil
import tarfile

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.classification import load_image
from datasets.layout import TOY_CLASSES, layout
from datasets.toy import make_toy, toy_sample
from engine.run_folder import RunFolder
from utils.checkpoint import load_training_state
from utils.io import read_label_png
from utils.lists import read_id_list
from wsss.pseudo import crf_score_dict
from wsss.scorefile import save_cam_dict

from helpers import ONE_THREAD, assert_clean_error, assert_ok, needs_crf, run_script

# every test needs the module's toy set with its CRF score dicts (about 15 s to make)
pytestmark = [needs_crf, pytest.mark.slow]

EVAL = ["--data-set", "TOY", "--data-path", "data", "--num_workers", "0"]
NET = EVAL + ["--device", "cpu"]
ALPHAS = ("1", "8")          # low alpha: confident foreground; high alpha: confident background
NUM_IMAGES = 100             # 80 train, 20 val
AFF_EPOCHS = 2
SEED_ERODE, SEED_SIGMA = 6, 6.0
# the pseudo masks must beat the seeds by this much (mIoU points). Measured on toy sets of
# seeds 0, 1, 2: seeds 72.6 / 72.6 / 72.8, masks 84.0 / 84.5 / 84.3 (+11.4 to +11.9); the
# same walk with an untrained AffinityNet gives 74.8 / - / 75.2 (+2.2, +2.4), so the margin
# checks that the affinities were learnt, not only that the walk smooths the seeds.
MIN_GAIN = 5.0
TEST_IDS = ["test_0000", "test_0001", "test_0002"]


def parsed_args(script, args, cwd):
    """The arguments ``script`` parses from ``args`` (its ``--print-args``)."""
    proc = run_script(script, *args, "--print-args", cwd=cwd, env=ONE_THREAD)
    assert_ok(proc)
    return json.loads(proc.stdout)


def synthetic_seeds(gt, num_classes, erode=SEED_ERODE, sigma=SEED_SIGMA):
    """CAM-like seeds ``{class k: H x W float32 in [0, 1]}`` from a ground-truth index map:
    the mask of each class present, eroded by ``erode`` pixels, Gaussian-blurred and
    normalised to max 1. Thresholded at 0.3 or above they miss the object's rim."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1,) * 2)
    cams = {}
    for k in range(num_classes):
        mask = (gt == k + 1).astype(np.uint8)
        if not mask.any():
            continue
        core = cv2.erode(mask, kernel)
        core = core if core.any() else mask
        blur = cv2.GaussianBlur(core.astype(np.float32), (0, 0), sigma)
        cams[k] = (blur / blur.max()).astype(np.float32)
    return cams


def exp(work, name, *parts):
    return work.joinpath(RunFolder(name, work).path(*parts))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def log_lines(folder):
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


def pngs(folder):
    return sorted(p[:-4] for p in os.listdir(folder) if p.endswith(".png"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory with ``data/`` (the toy set) and, for run ``run``, the seeds of
    the train list in ``dict/`` and their CRF score dicts in ``crf/<alpha>/``."""
    work = tmp_path_factory.mktemp("stages")
    lay = make_toy(str(work / "data"), NUM_IMAGES, seed=0)
    run = RunFolder("run", work)
    for sub in [run.dict_dir] + [run.crf_dir(float(a)) for a in ALPHAS]:
        os.makedirs(sub)
    for i in read_id_list(lay.train_list):
        cams = synthetic_seeds(read_label_png(lay.gt_path(i)), len(TOY_CLASSES))
        save_cam_dict(os.path.join(run.dict_dir, i + ".npy"), cams)
        rgb = np.asarray(load_image(lay.image_path(i)))
        for a in ALPHAS:
            save_cam_dict(os.path.join(run.crf_dir(float(a)), i + ".npy"),
                          crf_score_dict(rgb, cams, float(a)))
    return work


# the CRF score dicts of run "run", relative to the working directory
CRF_DIRS = ["--la_crf_dir", RunFolder("run").crf_dir(float(ALPHAS[0])),
            "--ha_crf_dir", RunFolder("run").crf_dir(float(ALPHAS[1]))]
AFF_ARGS = ["--name", "run", "--crop_size", "96", "--batch_size", "16", "--max_epoches",
            str(AFF_EPOCHS), "--lr", "0.05", "--momentum", "0.9", *CRF_DIRS, "--no-tensorboard",
            *NET]
SEG_ARGS = ["--name", "run", "--crop_size", "96", "--num_epochs", "1", "--no-tensorboard", *NET]


@pytest.fixture(scope="module")
def refined(work):
    """The refinement stage as a user runs it: score the seeds, train AffinityNet on the CRF
    dicts, walk the train list, score the masks. Returns the two evaluation records and the
    ``infer_aff.py`` process."""
    assert_ok(run_script("evaluation.py", "--name", "run", "--task", "cam", "--list", "train",
                         *EVAL, cwd=work, env=ONE_THREAD))
    assert_ok(run_script("train_aff.py", *AFF_ARGS, cwd=work, env=ONE_THREAD))
    walk = run_script("infer_aff.py", "--name", "run", *NET, cwd=work, env=ONE_THREAD)
    assert_ok(walk)
    assert_ok(run_script("evaluation.py", "--name", "run", "--task", "png", "--dict_dir",
                         RunFolder("run").rw_dir, "--list", "train", *EVAL,
                         cwd=work, env=ONE_THREAD))
    return {"seeds": read_json(exp(work, "run", "eval_cam.json")),
            "masks": read_json(exp(work, "run", "eval_png.json")), "walk": walk}


@pytest.fixture(scope="module")
def segmented(refined, work):
    """``train_seg.py`` (1 epoch) on the pseudo masks, ``infer_seg.py`` on the val list."""
    assert_ok(run_script("train_seg.py", *SEG_ARGS, cwd=work, env=ONE_THREAD))
    proc = run_script("infer_seg.py", "--name", "run", *NET, cwd=work, env=ONE_THREAD)
    assert_ok(proc)
    return proc


# ------------------------------------------------------------------------------ stages
def test_refinement_improves_the_seeds(work, refined):
    """Issue acceptance: seeds -> CRF dicts -> train_aff.py -> infer_aff.py -> evaluation.py
    --task png: the pseudo masks score higher than the seeds they came from."""
    seeds, masks = refined["seeds"], refined["masks"]
    train_ids = read_id_list(str(work / "data/ImageSets/Segmentation/train.txt"))
    assert seeds["num_images"] == masks["num_images"] == len(train_ids)
    assert masks["best_miou"] > seeds["best_miou"] + MIN_GAIN, (seeds["best_miou"],
                                                                 masks["best_miou"])
    # AffinityNet: the state dict infer_aff.py loaded, resume state, one log line per epoch
    aff = exp(work, "run", "aff")
    log = log_lines(aff)
    assert [entry["epoch"] for entry in log] == list(range(AFF_EPOCHS))
    assert all(np.isfinite(entry["loss_total"]) for entry in log)
    state = load_training_state(str(aff / "last.pth"))
    assert state["epoch"] == AFF_EPOCHS - 1
    # last.pth holds the arguments as parsed: the defaults the script resolved (the toy
    # backbone, the recipe) stay unset there and go to the log instead
    assert state["args"] == parsed_args("train_aff.py", AFF_ARGS, work)
    assert state["args"]["backbone"] is None
    logged = (aff / "train.log").read_text()
    assert "  backbone: toy\n" in logged and f"  epochs: {AFF_EPOCHS}\n" in logged
    # the walk: the default (train) list, the run's best seed threshold as background, a
    # mask per id, a manifest naming the AffinityNet
    assert f"background threshold {seeds['best_threshold']:.2f}" in refined["walk"].stdout
    rw = exp(work, "run", "rw")
    assert pngs(rw) == sorted(train_ids)
    manifest = read_json(rw / "manifest.json")
    assert manifest["weights"]["affinity"]["sha256"] == sha256(aff / "aff_net.pth")
    assert manifest["settings"]["bg_thr"] == pytest.approx(seeds["best_threshold"])
    assert "aff_net.pth" in masks["made_by"]


def test_segmentation_trains_on_the_masks_and_predicts_val(work, segmented):
    lay = layout("TOY", str(work / "data"))
    val_ids = read_id_list(lay.seg_val_list)
    segnet = exp(work, "run", "segnet")
    assert [entry["epoch"] for entry in log_lines(segnet)] == [0]
    assert f"pseudo masks of {RunFolder('run').rw_dir}" in (segnet / "train.log").read_text()
    args = load_training_state(str(segnet / "last.pth"))["args"]
    assert args == parsed_args("train_seg.py", SEG_ARGS, work)
    assert args["backbone"] is None and args["lr"] is None and args["batch_size"] is None
    seg = exp(work, "run", "seg")
    assert pngs(seg) == sorted(val_ids)
    for i in val_ids:
        with Image.open(seg / (i + ".png")) as im:
            assert im.mode == "P"
            assert im.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]   # VOC palette
            label = np.asarray(im)
        assert label.shape == read_label_png(lay.gt_path(i)).shape
        assert label.max() <= len(TOY_CLASSES)
    manifest = read_json(seg / "manifest.json")
    assert manifest["weights"]["sha256"] == sha256(segnet / "seg_net.pth")
    assert manifest["settings"]["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert f"wrote {len(val_ids)} predictions" in segmented.stdout


def test_training_on_the_ground_truth_is_refused(work):
    proc = run_script("train_seg.py", "--name", "gt", "--seg_pgt_path",
                      str(work / "data" / "SegmentationClass"), "--crop_size", "96",
                      "--num_epochs", "1", *NET, cwd=work, env=ONE_THREAD)
    assert_clean_error(proc, "is the dataset's ground truth")
    assert "not weakly supervised" in proc.stderr
    assert not exp(work, "gt").exists()


def test_test_split_writes_the_server_layout_and_archive(work):
    """``--split test``: class-index PNGs in results/VOC2012/Segmentation/comp6_test_cls/
    and results.tar.gz holding exactly those. VOC's test set is images and
    ImageSets/Segmentation/test.txt, without labels or ground truth: the same is added to
    the toy folder and read as --data-set VOC12 (--split test finds test.txt by itself only
    for VOC12; for the toy set it asks for --infer_list). The network is a randomly
    initialised 21-class toy net (varied labels), checked against the library's
    prediction."""
    from datasets.classification import WSSSDataset, build_transform
    from models.registry import build_segmentation_net, load_segmentation_net
    from wsss.segmentation import seg_predict

    data = work / "data"
    for n, i in enumerate(TEST_IDS):
        image, _ = toy_sample(seed=99, index=n)
        Image.fromarray(image).save(data / "JPEGImages" / (i + ".jpg"), quality=95)
    (data / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(TEST_IDS) + "\n")
    torch.manual_seed(0)
    torch.save(build_segmentation_net("toy", 21)[0].state_dict(), work / "seg21.pth")

    proc = run_script("infer_seg.py", "--name", "test", "--split", "test", "--weights",
                      "seg21.pth", *NET, cwd=work, env=ONE_THREAD)
    assert_clean_error(proc, "for other datasets pass --infer_list")

    voc = ["--data-set", "VOC12", "--data-path", "data", "--backbone", "toy"]
    scales = [1.0, 0.5]
    proc = run_script("infer_seg.py", "--name", "test", "--split", "test", "--weights",
                      "seg21.pth", "--scales", *map(str, scales), *NET, *voc,
                      cwd=work, env=ONE_THREAD)
    assert_ok(proc)
    out = work / RunFolder("test", work).test_dir()
    assert pngs(out) == TEST_IDS
    net = load_segmentation_net("toy", str(work / "seg21.pth"), 21)
    items = WSSSDataset(layout("VOC12", str(data)), TEST_IDS, build_transform("infer"),
                        return_id=True, require_labels=False)
    for image, _, i in items:
        with Image.open(out / (i + ".png")) as im:
            assert im.mode in ("P", "L")     # class indices, not colours
            got = np.asarray(im)
        assert got.shape == image.shape[1:] and got.max() <= 20
        want = seg_predict(net, image[None], scales=scales).argmax(0).numpy()
        assert (got == want).mean() > 0.99
        assert len(np.unique(got)) > 1
    with tarfile.open(RunFolder("test", work).results_archive()) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    prefix = "results/VOC2012/Segmentation/comp6_test_cls/"
    assert sorted(files) == [prefix + i + ".png" for i in TEST_IDS]
    for i in TEST_IDS:
        assert files[prefix + i + ".png"] == (out / (i + ".png")).read_bytes()

    # another list into another folder (--out): the archive holds exactly that list's
    # predictions, from that folder, not what an earlier run left in results/
    one = work / "one_test_id.txt"
    one.write_text(TEST_IDS[0] + "\n")
    elsewhere = work / "elsewhere"
    assert_ok(run_script("infer_seg.py", "--name", "test2", "--split", "test", "--weights",
                         "seg21.pth", "--scales", "1.0", "--infer_list", str(one), "--out",
                         str(elsewhere), *NET, *voc, cwd=work, env=ONE_THREAD))
    with tarfile.open(RunFolder("test2", work).results_archive()) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        member = tar.extractfile(prefix + TEST_IDS[0] + ".png").read()
    assert names == [prefix + TEST_IDS[0] + ".png"]
    assert member == (elsewhere / (TEST_IDS[0] + ".png")).read_bytes()


# ------------------------------------------------------------------- refusals, errors
def test_stale_masks_are_refused_without_overwrite(work, refined):
    """A mask folder written by one AffinityNet; a walk with other weights into it is
    refused with a message naming --overwrite (nothing changes); with --overwrite it
    replaces the folder's masks."""
    rw, stale = exp(work, "run", "rw"), exp(work, "run", "rw_stale")
    shutil.copytree(rw, stale)
    before = {p: (stale / p).read_bytes() for p in os.listdir(stale)}
    state = torch.load(exp(work, "run", "aff", "aff_net.pth"), weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-3
    other = work / "other_aff.pth"
    torch.save(state, other)
    few = work / "few.txt"
    ids = read_id_list(str(work / "data/ImageSets/Segmentation/train.txt"))[:3]
    few.write_text("\n".join(ids) + "\n")
    args = ["infer_aff.py", "--name", "run", "--weights", str(other), "--out_rw", str(stale),
            "--infer_list", str(few), *NET]

    proc = run_script(*args, cwd=work, env=ONE_THREAD)
    assert_clean_error(proc, "--overwrite")
    assert "aff_net.pth" in proc.stderr and "other_aff.pth" in proc.stderr
    assert {p: (stale / p).read_bytes() for p in os.listdir(stale)} == before

    assert_ok(run_script(*args, "--overwrite", cwd=work, env=ONE_THREAD))
    assert pngs(stale) == sorted(ids)          # the other weights' masks are gone
    assert read_json(stale / "manifest.json")["weights"]["affinity"]["sha256"] == sha256(other)


def test_missing_crf_dicts_fail_before_training(work):
    lay = layout("TOY", str(work / "data"))
    val_id = read_id_list(lay.val_list)[0]                  # no seeds, no CRF dicts
    listed = work / "with_val.txt"
    listed.write_text("\n".join(read_id_list(lay.train_list)[:20] + [val_id]) + "\n")
    proc = run_script("train_aff.py", "--name", "missing", "--train_list", str(listed),
                      "--crop_size", "96", "--batch_size", "4", "--max_epoches", "1",
                      *CRF_DIRS, "--no-tensorboard", *NET, cwd=work, env=ONE_THREAD)
    assert_clean_error(proc, "1 low-alpha CRF score dicts missing")
    assert val_id + ".npy" in proc.stderr and "(of 21 listed)" in proc.stderr
    assert "--crf" in proc.stderr
    assert not exp(work, "missing").exists()


def test_torchrun_two_cpu_processes(work):
    lay = layout("TOY", str(work / "data"))
    listed = work / "ddp_ids.txt"
    listed.write_text("\n".join(read_id_list(lay.train_list)[:32]) + "\n")
    proc = run_script("train_aff.py", "--name", "ddp", "--train_list", str(listed),
                      "--crop_size", "96", "--batch_size", "4", "--max_epoches", "1",
                      "--lr", "0.05", "--momentum", "0.9", *CRF_DIRS,
                      "--no-tensorboard", *NET, cwd=work, nproc=2, timeout=300, env=ONE_THREAD)
    assert_ok(proc)
    aff = exp(work, "ddp", "aff")
    state = torch.load(aff / "aff_net.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state)   # the bare net, not DDP's wrapper
    from models.registry import load_affinity_net
    load_affinity_net("toy", str(aff / "aff_net.pth"))        # loads strictly
    assert [entry["epoch"] for entry in log_lines(aff)] == [0]   # logged once, by rank 0
    assert "32 images, 4 steps per epoch" in (aff / "train.log").read_text()
