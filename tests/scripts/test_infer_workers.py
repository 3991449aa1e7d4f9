"""infer_PCSS.py's CPU work at scale, from the command line: the CRF in worker processes
writes what the inline CRF writes, the score dicts of a run are reused without the network,
compact dicts score as the PSA ones, a worker's error is the script's one-line error, and
an inference process starts without torch._dynamo or torchvision."""
import os

import numpy as np
import pytest

from datasets.layout import TOY_CLASSES
from datasets.toy import make_toy
from engine.run_folder import RunFolder
from wsss.metrics import cam_miou
from wsss.scorefile import decode_score_dict, load_score_dict

from helpers import needs_crf, run_script, toy_work


DATA = ["--data-set", "TOY", "--data-path", "data", "--num_workers", "0", "--arch", "toy",
        "--device", "cpu", "--load_pretrained", "w.pth"]
NO_NETWORK = ("import models.weights as c\n"
              "def boom(*a, **k):\n    raise SystemExit('the network was loaded')\n"
              "c.load_network = boom")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """8 toy images (4 of them in val.txt) and ``w.pth``, a toy network's state dict."""
    return toy_work(tmp_path_factory.mktemp("scale"), 8, val_fraction=0.5)


def outputs(work, name):
    root = work / RunFolder(name, work).dir
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@needs_crf
@pytest.mark.slow
def test_crf_workers_write_the_same_bytes_and_dicts_are_reused(work):
    args = ["--dict", "--crf", "--crf_png", "--alphas", "1", "12"]
    for name, n in (("inline", "0"), ("pool", "2")):
        proc = run_script("infer_PCSS.py", "--name", name, *DATA, *args, "--crf_workers", n,
                          cwd=work)
        assert proc.returncode == 0, proc.stderr
    inline = outputs(work, "inline")
    assert any(k.startswith("crf/12/") and k.endswith(".sdz") for k in inline)
    assert inline == outputs(work, "pool")
    # work done once: dict/ of the same weights and settings feeds --crf without the network
    proc = run_script("infer_PCSS.py", "--name", "pool", *DATA, "--crf", "--crf_png",
                      "--alphas", "1", "12", "--crf_format", "psa", "--overwrite", cwd=work,
                      prelude=NO_NETWORK)
    assert proc.returncode == 0, proc.stderr
    assert "CAMs read from" in proc.stdout
    psa = outputs(work, "pool")
    for k, v in inline.items():
        if k.startswith("crf/"):
            npy = k[:-4] + ".npy"
            back, ref = load_score_dict(RunFolder("pool", work).path(npy)), None
            ref = decode_score_dict(v)
            assert max(np.abs(back[c] - ref[c]).max() for c in ref) <= 1e-4
            assert npy in psa and k not in psa            # --overwrite replaced the format
        elif k.startswith("crf_png/"):
            assert psa[k] == v
    # compact CAM dicts score as the PSA ones
    proc = run_script("infer_PCSS.py", "--name", "compact", *DATA, "--dict", "--dict_format",
                      "compact", cwd=work)
    assert proc.returncode == 0, proc.stderr
    names = os.listdir(RunFolder("compact", work).dict_dir)
    assert {os.path.splitext(n)[1] for n in names} == {".sdz", ".json"}
    ids = [k[len("dict/"):-4] for k in inline if k.startswith("dict/")]
    scores = [cam_miou(RunFolder(n, work).dict_dir, str(work / "data" /
                       "SegmentationClass"), ids, len(TOY_CLASSES) + 1,
                       np.arange(0.0, 1.0, 0.01))[0] for n in ("inline", "compact")]
    np.testing.assert_array_equal(*scores)
    # a worker's error comes back as the script's one-line error
    (work / "data" / "JPEGImages" / "toy_00004.jpg").write_bytes(b"not a JPEG")
    try:
        proc = run_script("infer_PCSS.py", "--name", "pool", *DATA, "--crf", "--alphas", "4",
                          "--crf_workers", "2", cwd=work, prelude=NO_NETWORK)
    finally:
        make_toy(str(work / "data"), 8, seed=0, val_fraction=0.5)
    assert proc.returncode == 2 and "cannot read image" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_inference_starts_without_dynamo_or_torchvision(work):
    """Start-up of every inference process: the eager network and the infer transform
    import neither torch._dynamo nor torchvision (1-1.5 s of CPU each run)."""
    check = ("import atexit, sys\n"
             "atexit.register(lambda: print('loaded:', sorted(m for m in ('torch._dynamo', "
             "'torchvision') if m in sys.modules)))")
    proc = run_script("infer_PCSS.py", "--name", "startup", *DATA, "--dict", cwd=work,
                      prelude=check)
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout, proc.stdout
