"""Work at real scale: the compact score files (``wsss.scorefile``), the CRF worker pool
(``engine.pool``) and the CLI paths that use them (``infer_PCSS.py --crf_workers``,
``--crf_format``, the reuse of ``dict/``), and ``infer_seg``'s ``--crf_labels present``."""
import io
import os
import struct
from functools import partial
import subprocess
import sys

import numpy as np
import pytest
import torch

from datasets.layout import TOY_CLASSES
from datasets.synthetic import GEOMETRY, synthetic_probs, synthetic_scene
from datasets.toy import make_toy
from engine.pool import WorkPool
from engine.run_folder import RunFolder
from engine.segment import LabelPngWriter, SegFinish, predict, present_classes
from helpers import WritesMarker
from models import build_arch
from wsss.crf import crf_available
from utils.errors import UserError
from wsss.metrics import cam_miou
from wsss.scorefile import load_cam_dict, save_cam_dict
from wsss.pseudo import crf_score_dict, pseudo_label, score_dict_label
from wsss.scorefile import (CAM_SCALE, CRF_SCALE, MAGIC, decode_score_dict,
                             encode_score_dict, load_score_dict, save_score_dict, score_file)

from helpers import ROOT
needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")


def npy_bytes(d) -> int:
    buf = io.BytesIO()
    np.save(buf, d)
    return len(buf.getvalue())


# ----------------------------------------------------------------------------- the codec
def test_round_trip_keys_shapes_and_tolerance():
    rng = np.random.default_rng(0)
    d = {0: rng.random((37, 53), dtype=np.float32), 4: np.zeros((37, 53), np.float32),
         19: np.ones((37, 53), np.float32)}
    for scale in (CAM_SCALE, CRF_SCALE):
        back = decode_score_dict(encode_score_dict(d, scale))
        assert sorted(back) == [0, 4, 19]
        for k in d:
            assert back[k].dtype == np.float32 and back[k].shape == (37, 53)
            err = back[k] - d[k]
            assert err.min() >= 0 and err.max() < 1 / scale     # never below, within a step
        assert np.all(back[4] == 0) and np.all(back[19] == 1)
    dithered = decode_score_dict(encode_score_dict(d, CRF_SCALE, dither=True))
    assert all(np.abs(dithered[k] - d[k]).max() < 1e-4 for k in d)     # the CRF dicts' rule
    assert np.all(dithered[4] == 0) and np.all(dithered[19] == 1)
    assert decode_score_dict(encode_score_dict({})) == {}


def test_threshold_comparisons_on_the_grid_are_kept():
    """Values compared with the thresholds 0.00, 0.01, ... (the evaluator's, pseudo labels')
    give the same answers after the compact round trip, including values a hair away."""
    t = np.float32(np.arange(0, 1.0001, 0.01)).astype(np.float32)
    near = np.concatenate([t, np.nextafter(t, np.float32(2)), np.nextafter(t, np.float32(-1)),
                           np.random.default_rng(1).random(5000, dtype=np.float32)])
    v = np.clip(near, 0, 1).astype(np.float32).reshape(1, -1)
    back = decode_score_dict(encode_score_dict({1: v}, CAM_SCALE))[1]
    for th in t:
        np.testing.assert_array_equal(back > th, v > th)


def test_dithered_codes_keep_8x8_means():
    """The CRF dicts' rounding: every value within a step, and the mean of every 8 x 8
    window (affinity training pools such blocks, wherever the crop starts) within a tenth
    of a step (plain rounding up: half a step and more)."""
    ramp = np.linspace(0, 1e-3, 40)
    v = (0.37 + ramp[None, :] + ramp[:, None] / 2).astype(np.float32)
    back = decode_score_dict(encode_score_dict({0: v}, CRF_SCALE, dither=True))[0]
    assert np.abs(back - v).max() < 1 / CRF_SCALE
    worst = max(abs(back[t:t + 8, x:x + 8].mean() - v[t:t + 8, x:x + 8].mean())
                for t in range(33) for x in range(33))
    assert worst < 0.1 / CRF_SCALE


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_score_dict({0: np.full((2, 2), 1.5, np.float32)})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_score_dict({0: np.full((2, 2), np.nan, np.float32)})


@needs_crf
def test_crf_dicts_at_voc_size_are_20x_smaller_and_label_alike():
    H, W = GEOMETRY["VOC"]
    rgb, cams = synthetic_scene(H, W, 2, seed=0)
    scores = crf_score_dict(rgb, {3: cams[0], 11: cams[1]}, alpha=12)   # the hardest alpha
    packed = encode_score_dict(scores, CRF_SCALE, dither=True)         # as infer_PCSS writes
    assert npy_bytes(scores) / len(packed) >= 20
    back = decode_score_dict(packed)
    assert max(np.abs(back[k] - scores[k]).max() for k in scores) <= 1e-4
    assert (score_dict_label(back) == score_dict_label(scores)).mean() >= 0.9999


def test_cam_dicts_keep_their_pseudo_labels():
    H, W = GEOMETRY["VOC"]
    _, cams = synthetic_scene(H, W, 1, seed=3)
    d = {5: cams[0]}
    back = decode_score_dict(encode_score_dict(d, CAM_SCALE))
    for th in np.arange(0.0, 1.0, 0.05):
        np.testing.assert_array_equal(pseudo_label(back, th, (H, W)),
                                      pseudo_label(d, th, (H, W)))
    assert npy_bytes(d) / len(encode_score_dict(d, CAM_SCALE)) > 10


def test_one_reader_for_both_formats(tmp_path):
    d = {0: np.full((4, 5), 0.25, np.float32), 2: np.full((4, 5), 0.75, np.float32)}
    save_score_dict(str(tmp_path / "a.npy"), d)                 # by extension: PSA's
    save_score_dict(str(tmp_path / "b.sdz"), d)                 # compact
    assert open(tmp_path / "b.sdz", "rb").read().startswith(MAGIC)
    for name in ("a.npy", "b.sdz"):
        got = load_score_dict(str(tmp_path / name))
        assert sorted(got) == [0, 2] and np.allclose(got[2], 0.75, atol=1e-4)
        assert sorted(load_cam_dict(str(tmp_path / name))) == [0, 2]
    assert score_file(str(tmp_path), "b") == str(tmp_path / "b.sdz")
    assert score_file(str(tmp_path), "a") == str(tmp_path / "a.npy")
    assert score_file(str(tmp_path), "none") == str(tmp_path / "none.npy")


def test_corrupt_and_hostile_files_are_refused_with_one_line(tmp_path):
    good = encode_score_dict({1: np.full((8, 8), 0.5, np.float32)})
    n = struct.unpack("<I", good[len(MAGIC):len(MAGIC) + 4])[0]
    header_end = len(MAGIC) + 4 + n
    lying = good[:len(MAGIC)] + struct.pack("<I", n + 8) + good[len(MAGIC) + 4:header_end] \
        .replace(b'"shape": [8, 8]', b'"shape": [80000, 80000]') + good[header_end:]
    cases = {"truncated": good[:-10], "no magic": b"hello world" * 3,
             "bad json": MAGIC + struct.pack("<I", 3) + b"{{{",
             "huge header": MAGIC + struct.pack("<I", 1 << 30),
             "lying size": lying, "garbage data": good[:header_end] + b"\0" * 64}
    for why, data in cases.items():
        path = tmp_path / f"{why.replace(' ', '_')}.sdz"
        path.write_bytes(MAGIC + data[len(MAGIC):] if why != "no magic" else data)
        with pytest.raises(UserError) as e:
            load_score_dict(str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value), why
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", {0: WritesMarker(str(marker))}, allow_pickle=True)
    with pytest.raises(UserError, match="evil.npy is not a readable score dict"):
        load_score_dict(str(tmp_path / "evil.npy"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- the pool
def _square(path, x):
    with open(path, "a") as f:
        f.write(f"{x * x}\n")


def _fail(x):
    raise UserError(f"cannot read image number {x}")


def test_pool_runs_every_job_and_brings_errors_back(tmp_path):
    out = tmp_path / "out.txt"
    with WorkPool(2, backlog=2) as pool:
        for x in range(6):
            pool.submit(_square, str(out), x)
    assert sorted(int(v) for v in out.read_text().split()) == [x * x for x in range(6)]
    with pytest.raises(UserError, match="cannot read image number 3"):
        with WorkPool(2) as pool:
            pool.submit(_fail, 3)
    inline = WorkPool(0)
    inline.submit(_square, str(out), 7)
    assert out.read_text().split()[-1] == "49"


# ----------------------------------------------------------------------------- CLI
def run_script(script, *args, cwd, prelude=""):
    env = {**os.environ, "PYTHONPATH": ROOT}
    if prelude:      # the script as users run it, after a patch (e.g. a network that fails)
        code = (prelude + f"\nimport runpy, sys\nsys.argv = {[script, *args]!r}\n"
                f"runpy.run_path({os.path.join(ROOT, script)!r}, run_name='__main__')")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, os.path.join(ROOT, script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


DATA = ["--data-set", "TOY", "--data-path", "data", "--num_workers", "0", "--arch", "toy",
        "--device", "cpu", "--load_pretrained", "w.pth"]
NO_NETWORK = ("import models.weights as c\n"
              "def boom(*a, **k):\n    raise SystemExit('the network was loaded')\n"
              "c.load_network = boom")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    make_toy(str(d / "data"), 8, seed=0, val_fraction=0.5)
    torch.manual_seed(0)
    torch.save(build_arch("toy", len(TOY_CLASSES), img_size=96,
                          drop_path_rate=0.0).state_dict(), d / "w.pth")
    return d


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


# ----------------------------------------------------------------------------- segmentation
def test_present_classes_and_their_labels():
    probs = np.zeros((5, 4, 4), np.float32)
    probs[0] = 0.5
    probs[3, :2] = 0.9
    np.testing.assert_array_equal(present_classes(probs), [0, 3])
    got = {}
    SegFinish(lambda i, lab: got.update({i: lab}))("x", probs[[0, 3]], np.array([0, 3]))
    np.testing.assert_array_equal(got["x"], np.argmax(probs, 0))


@needs_crf
def test_crf_over_present_labels_agrees_with_the_full_crf(tmp_path):
    from PIL import Image
    H, W = 120, 160
    rgb, _ = synthetic_scene(H, W, 2, seed=1)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    probs = synthetic_probs(H, W, 21, present=(4, 9), seed=1)
    full, part = {}, {}
    finish = SegFinish(lambda i, lab: full.update({i: lab}), True, lambda i: str(tmp_path / "x.png"))
    finish("x", probs)
    finish.write = lambda i, lab: part.update({i: lab})
    classes = present_classes(probs)
    finish("x", probs[classes], classes)
    assert set(np.unique(full["x"])) <= set(classes)
    assert (full["x"] == part["x"]).mean() > 0.99


def _png_path(folder, image_id):
    return os.path.join(folder, image_id + ".png")


@needs_crf
def test_prediction_crf_in_workers_writes_the_same_files(tmp_path):
    from PIL import Image
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 5, 1)
    items = []
    for i in range(3):
        rgb, _ = synthetic_scene(60, 80, 2, seed=i)
        Image.fromarray(rgb).save(tmp_path / f"im{i}.png")
        items.append((torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1), None, f"im{i}"))
    out = {}
    for n in (0, 2):
        folder = tmp_path / f"out{n}"
        folder.mkdir()
        with WorkPool(n) as pool:
            predict(net, items, torch.device("cpu"), LabelPngWriter(str(folder)), (1.0, 0.5),
                    crf=True, image_path=partial(_png_path, str(tmp_path)),
                    progress=False, submit=pool.submit)
        out[n] = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(out[0]) == 3 and out[0] == out[2]
