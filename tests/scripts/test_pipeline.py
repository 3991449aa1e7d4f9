"""pipeline.py: the plan (commands in order), the preflight's refusals (nothing written),
flag routing, and skipping / resuming / redoing stages on a small toy run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.pipeline import read_state
from engine.run_folder import RunFolder

from helpers import ROOT, run_script

ENV = {**os.environ, "PYTHONPATH": ROOT}
DEIT = "deit_small_patch16_224-cd65a155.pth"


def pipeline(*args, patch_free=None, timeout=600):
    """``python pipeline.py ARGS`` from the repository root; with ``patch_free`` the
    free-space function reports that many bytes."""
    prelude = ("" if patch_free is None else
               f"import engine.pipeline as P\nP.free_bytes = lambda path: {patch_free}")
    return run_script("pipeline.py", *args, prelude=prelude, timeout=timeout)


def voc_folder(root, lists=True):
    """A folder in the VOC layout (images, masks, lists, labels; contents are not read)."""
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug",
              "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    if lists:
        ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"],
               "train_aug": ["2007_000032", "2007_000039", "2008_000002"]}
        for split, names in ids.items():
            with open(os.path.join(root, "ImageSets/Segmentation", split + ".txt"), "w") as f:
                f.write("\n".join(names) + "\n")
        np.save(os.path.join(root, "cls_labels.npy"), {})
    return str(root)


@pytest.fixture
def run_name():
    name = f"test_pipeline_{os.getpid()}_{time.time_ns()}"
    yield name
    shutil.rmtree(RunFolder(name, ROOT).dir, ignore_errors=True)


def stage_lines(stdout):
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("    python ")]


def test_dry_run_prints_the_stages_commands_in_order(tmp_path, run_name):
    data = voc_folder(tmp_path / "VOC2012")
    proc = pipeline("--name", run_name, "--data-set", "VOC12", "--data-path", data,
                    "--dry-run", "--test")
    assert proc.returncode == 0, proc.stderr
    assert stage_lines(proc.stdout) == [
        "train_PCSS.py", "infer_PCSS.py", "evaluation.py", "train_aff.py", "infer_aff.py",
        "evaluation.py", "infer_aff.py", "train_seg.py", "infer_seg.py", "evaluation.py",
        "infer_seg.py", "infer_seg.py"]
    out = proc.stdout
    assert "--load_epo 59 --dict --crf --alphas 1 12" in out
    assert f"--out_rw {RunFolder(run_name).rw_train_dir} " in out
    assert "--use_crf --split test" in out
    assert "GB" in out and "to run: 12 of 12 stages" in out     # estimates
    assert not os.path.exists(RunFolder(run_name, ROOT).dir)


def test_other_backbones_train_and_predict_in_their_own_folders(tmp_path, run_name):
    data = voc_folder(tmp_path / "VOC2012")
    proc = pipeline("--name", run_name, "--data-path", data, "--dry-run", "--device", "cpu",
                    "--aff.backbone", "resnet50", "--seg.backbone", "deeplabv2_r101")
    assert proc.returncode == 0, proc.stderr
    assert f"--dict_dir {RunFolder(run_name).seg_dir('deeplabv2_r101')} " in proc.stdout
    assert "problem: aff_train: initial weights pretrained/resnet50-0676ba61.pth" in proc.stdout
    assert "problem: seg_train: initial weights pretrained/resnet101-63fe2227.pth" in proc.stdout


def test_coco_plan_uses_the_coco_script_and_one_walk(tmp_path, run_name):
    proc = pipeline("--name", run_name, "--data-set", "COCO", "--data-path",
                    str(tmp_path / "nowhere"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = stage_lines(proc.stdout)
    assert lines[0] == "train_PCSS_coco.py" and lines.count("infer_aff.py") == 1
    assert "problem: data directory not found" in proc.stdout


@pytest.mark.skipif(os.path.isfile(os.path.join(ROOT, "pretrained", DEIT)),
                    reason="the DeiT weights are present in pretrained/")
def test_missing_deit_weights_stop_the_run_before_any_work(tmp_path, run_name):
    data = voc_folder(tmp_path / "VOC2012")
    proc = pipeline("--name", run_name, "--data-path", data, "--device", "cpu")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines)
    assert len([line for line in lines if DEIT in line]) == 1
    assert not os.path.exists(RunFolder(run_name, ROOT).dir)


def test_bad_data_layout_is_one_line_per_problem(tmp_path, run_name):
    proc = pipeline("--name", run_name, "--data-path", str(tmp_path / "absent"),
                    "--seeds_train.finetune", "none", "--train_aff.weights", "none",
                    "--seg_train.weights", "none", "--device", "cpu", patch_free=10 ** 15)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data directory not found: {tmp_path / 'absent'}. Download PASCAL VOC 2012 "
        "(+ SBD's SegmentationClassAug) and pass its VOC2012 folder, e.g. --data-path "
        "data/VOC2012 (see README)."]
    data = voc_folder(tmp_path / "VOC2012", lists=False)
    proc = pipeline("--name", run_name, "--data-path", data, "--seeds_train.finetune",
                    "none", "--train_aff.weights", "none", "--seg_train.weights", "none",
                    "--device", "cpu", patch_free=10 ** 15)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4 and all("python -m datasets.prepare --data-set VOC12" in line
                                   for line in lines), lines
    assert not os.path.exists(RunFolder(run_name, ROOT).dir)


def test_too_little_disk_is_refused(tmp_path, run_name):
    data = voc_folder(tmp_path / "VOC2012")
    args = ("--name", run_name, "--data-path", data, "--seeds_train.finetune", "none",
            "--train_aff.weights", "none", "--seg_train.weights", "none", "--device", "cpu")
    proc = pipeline(*args, patch_free=10 ** 6)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: not enough free disk: the stages to run write ~")
    assert "1 MB are free" in proc.stderr and "--until STAGE" in proc.stderr
    assert not os.path.exists(RunFolder(run_name, ROOT).dir)


def test_flags_reach_the_stages_that_take_them(tmp_path):
    proc = pipeline("--name", "x", "--print-args", "--amp", "bf16", "--train_aff.weights",
                    "w.pth", "--seg.backbone", "deeplabv2_r101", "--seg_val.scales=1.0",
                    "--seeds_eval.thresholds", "0.2", "0.5", "0.01", "--no-compile")
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(proc.stdout)["stages"]
    assert stages["seeds_train"] == ["--amp", "bf16", "--no-compile"]
    assert stages["aff_train"] == [
        "--amp", "bf16", "--weights", "w.pth", "--no-compile"]
    assert stages["seg_train"] == ["--amp", "bf16", "--backbone", "deeplabv2_r101",
                                   "--no-compile"]
    assert stages["seg_val"] == ["--amp", "bf16", "--backbone", "deeplabv2_r101", "--scales",
                                 "1.0", "--no-compile"]
    assert stages["rw"] == ["--amp", "bf16", "--no-compile"]
    assert stages["seeds_eval"] == ["--thresholds", "0.2", "0.5", "0.01"]
    assert "--amp" not in stages["masks_eval"]


def test_reference_flag_names_route_beside_the_internal_ones(tmp_path, run_name):
    """Flags reach the stages by any of their names (--max_epoches / --epochs, ...), and the
    plan reads them under the one internal name."""
    proc = pipeline("--name", "x", "--print-args", "--aff_train.max_epoches", "3",
                    "--seg_train.epochs", "2", "--wt_dec", "1e-4", "--seeds.infer_list", "l.txt")
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(proc.stdout)["stages"]
    assert stages["aff_train"] == ["--max_epoches", "3", "--wt_dec", "1e-4"]
    assert stages["seg_train"] == ["--epochs", "2", "--wt_dec", "1e-4"]
    assert stages["seeds"] == ["--infer_list", "l.txt"]
    data = voc_folder(tmp_path / "VOC2012")
    slow = pipeline("--name", run_name, "--data-path", data, "--dry-run", "--device", "cpu",
                    "--aff_train.max_epoches", "50", "--seg_train.num_epochs", "300")
    fast = pipeline("--name", run_name, "--data-path", data, "--dry-run", "--device", "cpu",
                    "--aff_train.epochs", "1", "--seg_train.epochs", "1")
    assert slow.returncode == fast.returncode == 0, slow.stderr + fast.stderr

    def estimate(out, stage):
        return next(line for line in out.splitlines() if f". {stage} [" in line)
    for stage in ("aff_train", "seg_train"):
        assert estimate(slow.stdout, stage) != estimate(fast.stdout, stage)


@pytest.mark.parametrize("flags, message", [
    (["--nonsense", "1"], "no stage of this pipeline takes --nonsense"),
    (["--weights", "w.pth"], "--weights means different things in infer_aff.py"),
    (["--overwrite"], "the pipeline sets --overwrite itself"),
    (["--nostage.amp", "bf16"], "no stage or script 'nostage'"),
    (["--seeds_eval.amp", "bf16"], "no stage of this pipeline takes --amp"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_flags_no_stage_takes_are_refused(flags, message):
    proc = pipeline("--name", "x", "--print-args", *flags)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- toy runs
SMALL = ("--preset", "toy", "--toy_data.num-images", "100", "--pretrain.epochs", "1",
         "--seeds_train.epochs", "2", "--seeds_train.batch_size", "16",
         "--aff_train.max_epoches", "2", "--aff_train.batch_size", "8",
         "--seg_train.num_epochs", "1", "--seg_val.scales", "1.0", "--figure.scales", "1.0",
         "--baseline-images", "20")
FIGURES = ("miou", "threshold", "untrained_miou", "mask_miou", "seg_miou", "class_iou",
           "mask_class_iou", "seg_class_iou")


def summary(name):
    with open(RunFolder(name, ROOT).summary) as f:
        return json.load(f)


def run_and_kill(name, stage, ready):
    """Start the small pipeline and kill it (its whole process group) once ``stage`` is
    running and ``ready()`` holds; returns when it is dead."""
    proc = subprocess.Popen([sys.executable, "pipeline.py", "--name", name, *SMALL], cwd=ROOT,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run = RunFolder(name, ROOT)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            rec = read_state(run)["stages"].get(stage, {})
            if rec.get("state") == "started" and ready():
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before {stage} could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert read_state(run)["stages"][stage]["state"] == "started"


@pytest.mark.slow
def test_killed_runs_finish_with_the_uninterrupted_figures_and_reruns_skip(run_name):
    run = RunFolder(run_name, ROOT)
    ref = run_name + "_ref"
    try:
        proc = pipeline("--name", ref, *SMALL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        expected = summary(ref)
        # killed half-way through a training stage (after its first epoch's checkpoint) ...
        run_and_kill(run_name, "aff_train",
                     lambda: os.path.isfile(run.last_checkpoint("affinity")))
        # ... then half-way through an inference stage
        rw = run.rw_dir
        run_and_kill(run_name, "rw", lambda: os.path.isdir(rw) and len(os.listdir(rw)) > 10)
        done_before = len(os.listdir(rw)) - 1                   # the manifest aside
        proc = pipeline("--name", run_name, *SMALL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "=== seeds_train: done earlier, skipped" in proc.stdout
        assert "=== rw (continue)" in proc.stdout
        assert f"{done_before} of this process's 80 already done" in proc.stdout
        got = summary(run_name)
        assert {k: got[k] for k in FIGURES} == {k: expected[k] for k in FIGURES}
        # a rerun recomputes nothing
        t0 = time.time()
        proc = pipeline("--name", run_name, *SMALL)
        assert proc.returncode == 0 and time.time() - t0 < 60
        assert proc.stdout.count("done earlier, skipped") == 14
        assert {k: summary(run_name)[k] for k in FIGURES} == {k: got[k] for k in FIGURES}
        # other settings of one stage redo it and the stages after it, not those before
        proc = pipeline("--name", run_name, *SMALL, "--seg_train.lr", "0.001", "--dry-run")
        actions = dict(line.split()[1:3] for line in proc.stdout.splitlines()
                       if line[:3].strip().rstrip(".").isdigit())
        assert actions["rw"] == actions["masks_eval"] == "[skip]"
        assert actions["seg_train"] == actions["seg_val"] == actions["figure"] == "[redo]"
        assert "--overwrite" in proc.stdout.split("seg_val [redo]")[1].splitlines()[1]
    finally:
        shutil.rmtree(RunFolder(ref, ROOT).dir, ignore_errors=True)
