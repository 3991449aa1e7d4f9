"""train_PCSS.py end to end on the synthetic toy set: checkpoints, the JSON log,
the FIM schedule, resume, torchrun with two CPU processes, and the up-front errors."""
import json
import os

import pytest
import torch

from engine.run_folder import RunFolder

from helpers import ONE_THREAD, run_script


def run(args, cwd, timeout=300, nproc=0):
    """``train_PCSS.py ARGS`` in ``cwd``, one thread per process."""
    return run_script("train_PCSS.py", *args, cwd=cwd, nproc=nproc, env=ONE_THREAD,
                      timeout=timeout)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from datasets.toy import make_toy
    root = tmp_path_factory.mktemp("toy")
    make_toy(str(root / "toy"), num_images=40, seed=0)
    return root


def base_args(name, toy, epochs):
    """A short training run on the toy set."""
    return ["--name", name, "--data-set", "TOY", "--data-path", str(toy / "toy"),
            "--arch", "toy", "--epochs", str(epochs), "--batch_size", "8",
            "--num_workers", "0", "--finetune", "none", "--val_start_epo", "3",
            "--device", "cpu"]


def run_dir(toy, name):
    """The run ``name`` in the working directory ``toy``, as a path."""
    return toy / RunFolder(name, toy).dir


def log_lines(toy, name):
    with open(run_dir(toy, name) / "log.txt") as f:
        return [json.loads(l) for l in f]


@pytest.fixture(scope="module")
def full_run(toy):
    res = run(base_args("full", toy, 4), toy)
    assert res.returncode == 0, res.stderr[-3000:]
    return log_lines(toy, "full")


@pytest.mark.slow
def test_four_epochs_write_checkpoints_and_log(toy, full_run):
    ckpt = run_dir(toy, "full") / "ckpt"
    for e in range(4):
        sd = torch.load(ckpt / f"{e:03d}net_trm.pth", weights_only=True)
        assert "head.weight" in sd and sd["cls_token"].shape[1] == 4
    assert [l["epoch"] for l in full_run] == [0, 1, 2, 3]
    keys = {"epoch", "lr", "loss_cls", "loss_cls_fss", "loss_cam_fss", "loss_cls_mpc",
            "loss_cam_mpc"}
    assert all(keys <= set(l) for l in full_run)
    # FIM round after epoch 2 -> FSS from epoch 3 on
    assert [l["loss_cam_fss"] == 0 for l in full_run] == [True, True, True, False]
    assert full_run[3]["loss_cam_fss"] > 0
    assert ["miou" in l for l in full_run] == [False, False, False, True]
    assert 0 <= full_run[3]["miou"] <= 100 and 0.3 <= full_run[3]["threshold"] < 0.6
    assert os.path.isfile(RunFolder("full", toy).fim_masks(2))
    assert list((run_dir(toy, "full") / "tb").glob("events.out.tfevents*"))
    text = (run_dir(toy, "full") / "train.log").read_text()
    assert "git revision" in text and "mpc_keep_ratio" in text
    # last.pth holds the arguments as parsed; the defaults resolved from other flags (the
    # toy set's input size, the toy depth's MPC block) are in the log only
    args = torch.load(RunFolder("full", toy).last_checkpoint("seeds"), weights_only=True)["args"]
    assert args["input_size"] is None and args["mpc_block"] is None
    assert args["epochs"] == 4 and args["name"] == "full"
    assert "  input_size: 96\n" in text and "  mpc_block: 2\n" in text


@pytest.mark.slow
def test_resume_gives_the_same_log(toy, full_run):
    res = run(base_args("resumed", toy, 2), toy)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(base_args("resumed", toy, 4) + ["--resume"], toy)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = log_lines(toy, "resumed")
    assert len(resumed) == 4
    for a, b in zip(resumed, full_run):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), (a["epoch"], k)


@pytest.mark.slow
def test_a_second_fresh_run_is_refused_and_overwrite_starts_over(toy, full_run):
    ckpt = run_dir(toy, "full") / "ckpt"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    res = run(base_args("full", toy, 1), toy)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--resume" in res.stderr and "--overwrite" in res.stderr
    assert RunFolder("full").last_checkpoint("seeds") in res.stderr
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before     # unchanged
    assert len(log_lines(toy, "full")) == 4
    res = run(base_args("over", toy, 2), toy)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(base_args("over", toy, 1) + ["--overwrite"], toy)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [l["epoch"] for l in log_lines(toy, "over")] == [0]           # started over
    assert sorted(os.listdir(RunFolder("over", toy).ckpt_dir)) == [
        "000net_trm.pth", "last.pth"]
    text = (run_dir(toy, "over") / "train.log").read_text()
    assert text.count("arguments:") == 1 and "  finetune: none" in text


@pytest.mark.slow
def test_torchrun_two_cpu_processes(toy):
    args = base_args("ddp", toy, 4) + ["--num_workers", "1", "--fim_ipc", "4"]
    res = run(args, toy, nproc=2, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    lines = log_lines(toy, "ddp")
    assert [l["epoch"] for l in lines] == [0, 1, 2, 3]   # each epoch logged once
    assert lines[3]["loss_cam_fss"] > 0 and "miou" in lines[3]


def test_missing_data_and_weights_fail_fast(tmp_path):
    res = run(["--name", "x", "--data-set", "TOY", "--data-path", str(tmp_path / "nope"),
               "--device", "cpu"], tmp_path, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "data directory not found" in res.stderr and "datasets.toy" in res.stderr
    os.makedirs(tmp_path / "voc")
    res = run(["--name", "x", "--data-path", str(tmp_path / "voc"), "--device", "cpu",
               "--finetune", str(tmp_path / "missing.pth")], tmp_path, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "pretrained weights not found" in res.stderr and "--finetune none" in res.stderr
    assert not os.path.exists(os.path.dirname(RunFolder("x", tmp_path).dir))


@pytest.mark.slow
def test_toy_pretraining_saves_deit_format_that_init_from_deit_loads(toy):
    from models import build_arch, init_from_deit
    proc = run_script("pretrain_toy.py", "--name", "pt", "--data-path", str(toy / "toy"),
                      "--epochs", "1", "--batch_size", "8", "--num_workers", "0", "--device",
                      "cpu", cwd=toy, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = RunFolder("pt", toy).pretrained("toy")
    state = torch.load(path, weights_only=True)["model"]
    assert state["cls_token"].shape == (1, 1, 128) and state["pos_embed"].shape == (1, 37, 128)
    net = build_arch("toy", 4, 96)
    init_from_deit(net, path)
    assert torch.equal(net.blocks[3].mlp.fc1.weight, state["blocks.3.mlp.fc1.weight"])
    assert torch.equal(net.cls_token[0, 2], state["cls_token"][0, 0])
