"""``engine.run_folder``: the one place that knows a run's paths, its folder-flag rule, its
backbone-folder rule and where trained weights are found; and that the scripts' defaults come
from it (the CRF alphas)."""
import json
import os

import pytest

from engine.run_folder import CRF_ALPHAS, EXPERIMENTS, RunFolder, backbone_folder
from utils.errors import UserError

from helpers import run_script


def test_paths_relative_to_the_working_directory_or_a_root(tmp_path):
    run = RunFolder("voc")
    assert run.dir == os.path.join(EXPERIMENTS, "voc") == os.fspath(run) == str(run)
    assert RunFolder("voc", tmp_path).dir == os.path.join(str(tmp_path), EXPERIMENTS, "voc")
    assert run.epoch_checkpoint(7) == os.path.join(run.dir, "ckpt", "007net_trm.pth")
    assert run.last_checkpoint("seeds") == os.path.join(run.dir, "ckpt", "last.pth")
    assert run.crf_dir(1.0) == os.path.join(run.dir, "crf", "1")
    assert run.seed_folder("crf_png", 0.5) == os.path.join(run.dir, "crf_png", "0.5")
    assert run.eval_json("cam") == os.path.join(run.dir, "eval_cam.json")
    assert run.untrained.dict_dir == os.path.join(run.dir, "untrained", "dict")
    assert run.results_archive() == os.path.join(run.dir, "results.tar.gz")
    assert run.test_dir() == os.path.join(run.dir, "results", "VOC2012", "Segmentation",
                                          "comp6_test_cls")
    assert run.archive_name("x") == "results/VOC2012/Segmentation/comp6_test_cls/x.png"


def test_second_backbones_live_beside_the_default():
    run = RunFolder("r")
    assert run.trained_weights("affinity") == run.path("aff", "aff_net.pth")
    assert run.trained_weights("affinity", "resnet38") == run.path("aff", "aff_net.pth")
    assert run.trained_weights("affinity", "resnet50") == run.path("aff_resnet50", "aff_net.pth")
    assert run.last_checkpoint("segmentation", "deeplabv2_r101") == run.path(
        "segnet_deeplabv2_r101", "last.pth")
    assert run.seg_dir("deeplabv2_r101") == run.path("seg_deeplabv2_r101")
    assert run.results_archive("deeplabv2_r101") == run.path("results_deeplabv2_r101.tar.gz")
    # the rule takes the answer of a backbone registry when given
    assert backbone_folder("segnet", "mine", own_folder=True) == "segnet_mine"
    assert backbone_folder("segnet", "resnet50", own_folder=False) == "segnet"
    assert run.stage_dir("affinity", "mine", own_folder=True) == run.path("aff_mine")


def test_folder_flags_resolve_in_the_run_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunFolder("r")
    with pytest.raises(UserError, match=r"seed dicts not found: .*dict\. Write them with "
                                        r"`make`, or pass --cam_dir"):
        run.resolve(None, run.dict_dir, "--cam_dir", "seed dicts", "`make`")
    assert run.resolve(None, run.rw_dir, "--out_rw", "", "", must_exist=False) == run.rw_dir
    os.makedirs(run.crf_dir(1))
    os.makedirs("elsewhere")
    assert run.resolve("crf/1", run.dict_dir, "--dict_dir", "x", "y") == run.crf_dir(1)
    assert run.resolve("elsewhere", run.dict_dir, "--dict_dir", "x", "y") == "elsewhere"
    with pytest.raises(UserError, match="--dict_dir nowhere is neither"):
        run.resolve("nowhere", run.dict_dir, "--dict_dir", "x", "y")
    assert run.resolve("new", run.rw_dir, "--out_rw", "", "", must_exist=False) == "new"
    # evaluation's folder per task; crf needs one named
    with pytest.raises(UserError, match="--task crf needs --dict_dir"):
        run.predictions("crf", None)
    assert run.predictions("crf", "crf/1") == run.crf_dir(1)


def test_train_aff_reads_the_crf_folders_infer_pcss_writes(tmp_path, monkeypatch):
    """One set of default alphas: infer_PCSS.py's --alphas and train_aff.py's default
    --la_crf_dir / --ha_crf_dir."""
    proc = run_script("infer_PCSS.py", "--name", "r", "--load_epo", "1", "--print-args",
                      cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    alphas = json.loads(proc.stdout)["alphas"]
    assert alphas == list(CRF_ALPHAS)
    monkeypatch.chdir(tmp_path)
    run = RunFolder("r")
    for a in alphas:
        os.makedirs(run.crf_dir(a))
    assert run.crf_dirs(None, None) == [run.crf_dir(alphas[0]), run.crf_dir(alphas[-1])]
    os.rmdir(run.crf_dir(alphas[-1]))
    with pytest.raises(UserError, match=r"--alphas 1 12` \(for the training list\), or pass "
                                        r"--ha_crf_dir"):
        run.crf_dirs(None, None)


def test_epoch_checkpoint_names_the_epochs_saved(tmp_path):
    run = RunFolder("r", tmp_path)
    with pytest.raises(UserError, match=r"\(no epoch checkpoints saved\)"):
        run.find_epoch_checkpoint(3)
    os.makedirs(run.ckpt_dir)
    for e in (0, 1):
        open(run.epoch_checkpoint(e), "w").close()
    assert run.find_epoch_checkpoint(1) == run.epoch_checkpoint(1)
    with pytest.raises(UserError, match="saved epochs: 000, 001"):
        run.find_epoch_checkpoint(3)


def test_find_trained_weights(tmp_path):
    run = RunFolder("run1", root=tmp_path)
    with pytest.raises(UserError) as e:
        run.find_trained_weights(None, "affinity")
    msg = str(e.value)
    assert run.path("aff", "aff_net.pth") in msg
    assert "python train_aff.py --name run1" in msg and "res38_aff.pth" in msg
    with pytest.raises(UserError, match="python train_seg.py --name run1 --backbone "
                                        "deeplabv2_r101"):
        run.find_trained_weights(None, "segmentation", "deeplabv2_r101")
    path = run.trained_weights("segmentation")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"x")
    assert run.find_trained_weights(None, "segmentation") == path
    assert RunFolder("elsewhere").find_trained_weights(str(path), "affinity") == str(path)
