"""Real inputs through the command lines, on the toy set: outputs always belong to the weights
that made them (manifests, val_dict/, --overwrite), and bad input or a diverged run ends
with a clear message, a distinct exit code and nothing half-written."""
import json
import os
from functools import partial

import pytest
from PIL import Image

from datasets.toy import make_toy
from engine.run_folder import RunFolder

from helpers import ONE_THREAD, run_script, toy_work

DATA = ["--data-set", "TOY", "--data-path", "toy", "--arch", "toy", "--num_workers", "0",
        "--device", "cpu"]


run = partial(run_script, env=ONE_THREAD)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A toy set of 20 images (16 train, 4 val) and two different weight files A and B."""
    return toy_work(tmp_path_factory.mktemp("real_inputs"), 20, seed=1, data="toy",
                    weights=("A.pth", "B.pth"))


def train(work, name, *extra):
    return run("train_PCSS.py", "--name", name, "--epochs", "1", "--batch_size", "4",
               "--finetune", "none", "--val_start_epo", "0", *DATA, *extra, cwd=work)


@pytest.mark.slow
def test_validation_does_not_leave_seeds_for_inference(work):
    """Validation writes val_dict/, never dict/: otherwise inference would take the
    validation's seeds for its own and skip every image."""
    proc = train(work, "stale")
    assert proc.returncode == 0, proc.stderr[-2000:]
    exp = work / RunFolder("stale", work).dir
    assert len(list((exp / "val_dict").glob("*.npy"))) == 4 and not (exp / "dict").exists()
    manifest = json.loads((exp / "val_dict" / "manifest.json").read_text())
    assert manifest["weights"]["path"].endswith("000net_trm.pth")
    proc = run("infer_PCSS.py", "--name", "stale", "--load_epo", "0", "--dict", *DATA, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 of this process's 4 already done" in proc.stdout and "wrote 4 images" in proc.stdout


@pytest.mark.slow
def test_a_folder_never_mixes_two_weight_files(work):
    dict_dir = work / RunFolder("two", work).dict_dir
    proc = run("infer_PCSS.py", "--name", "two", "--load_pretrained", "A.pth", *DATA, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p.name: p.stat().st_mtime_ns for p in dict_dir.glob("*.npy")}
    again = run("infer_PCSS.py", "--name", "two", "--load_pretrained", "A.pth", *DATA, cwd=work)
    assert "4 of this process's 4 already done" in again.stdout
    other = run("infer_PCSS.py", "--name", "two", "--load_pretrained", "B.pth", *DATA, cwd=work)
    assert other.returncode == 2 and "--overwrite" in other.stderr
    assert "A.pth" in other.stderr and "B.pth" in other.stderr
    assert {p.name: p.stat().st_mtime_ns for p in dict_dir.glob("*.npy")} == before
    replaced = run("infer_PCSS.py", "--name", "two", "--load_pretrained", "B.pth",
                   "--overwrite", *DATA, cwd=work)
    assert replaced.returncode == 0 and "wrote 4 images" in replaced.stdout
    manifest = json.loads((dict_dir / "manifest.json").read_text())
    assert manifest["weights"]["path"] == str(work / "B.pth")
    assert manifest["settings"] == {"scales": [1.0], "n_layers": 12, "amp": "none"}
    scored = run("evaluation.py", "--name", "two", "--data-set", "TOY", "--data-path", "toy",
                 "--thresholds", "0.3", "0.8", "0.05", cwd=work)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert f"predictions made by {work / 'B.pth'}" in scored.stdout
    with open(RunFolder("two", work).eval_json("cam")) as f:
        assert json.load(f)["made_by"].startswith(str(work / "B.pth"))


def test_outputs_of_unknown_origin_are_not_mixed_in(work):
    d = work / RunFolder("foreign", work).dict_dir
    d.mkdir(parents=True)
    (d / "toy_00016.npy").write_bytes(b"made elsewhere")
    proc = run("infer_PCSS.py", "--name", "foreign", "--load_pretrained", "A.pth", *DATA,
               cwd=work)
    assert proc.returncode == 2 and "unknown origin" in proc.stderr and "--overwrite" in proc.stderr


@pytest.mark.slow
def test_settings_are_part_of_the_producer(work):
    first = run("infer_PCSS.py", "--name", "settings", "--load_pretrained", "B.pth", *DATA,
                cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    proc = run("infer_PCSS.py", "--name", "settings", "--load_pretrained", "B.pth", "--scales",
               "1", "0.5", *DATA, cwd=work)
    assert proc.returncode == 2 and "scales [1.0, 0.5]" in proc.stderr


@pytest.mark.slow
def test_corrupt_image_during_training_is_a_clean_message(work, tmp_path):
    make_toy(str(tmp_path / "toy"), 12, seed=2)
    bad = sorted((tmp_path / "toy" / "JPEGImages").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])                      # truncated JPEG
    proc = run("train_PCSS.py", "--name", "corrupt", "--epochs", "1", "--batch_size", "4",
               "--finetune", "none", "--data-set", "TOY", "--data-path", "toy", "--arch",
               "toy", "--num_workers", "1", "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"\nerror: cannot read image toy/JPEGImages/{bad.name}" in proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr
    assert not os.path.exists(RunFolder("corrupt", tmp_path).ckpt_dir)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--batch_size", "64"], "--batch_size 64 x 1 process(es) is more than the 16 images"),
    (["--epochs", "0"], "--epochs 0: nothing to train"),
])
def test_training_arguments_that_cannot_work(work, args, message):
    proc = run("train_PCSS.py", "--name", "bad_args", "--finetune", "none", *DATA, *args,
               cwd=work)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(RunFolder("bad_args", work).ckpt_dir)


@pytest.mark.slow
def test_diverged_training_has_its_own_exit_code(work):
    proc = train(work, "diverge", "--lr", "1e30", "--warmup-epochs", "0", "--epochs", "2",
                 "--W", "0", "0")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "training diverged: the loss became" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_torchrun_manifest_and_outputs(work):
    """Two ranks agree on the folder's state before anyone writes (gloo, CPU)."""
    proc = run("infer_PCSS.py", "--name", "ranks", "--load_pretrained", "A.pth", "--png",
               "--threshold", "0.5", *DATA, cwd=work, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = work / RunFolder("ranks", work).seed_folder("png")
    assert len(list(png.glob("*.png"))) == 4
    assert json.loads((png / "manifest.json").read_text())["settings"]["threshold"] == 0.5
    with Image.open(next(png.glob("*.png"))) as im:
        assert im.mode == "P"
