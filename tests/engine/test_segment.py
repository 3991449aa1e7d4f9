"""``infer_seg``'s prediction loop (``engine.segment``): the present classes and their labels,
the CRF over the present labels only, and the CRF in worker processes writing the same
files."""
import os
from functools import partial

import numpy as np
import torch

from datasets.synthetic import synthetic_probs, synthetic_scene
from engine.pool import WorkPool
from engine.segment import LabelPngWriter, SegFinish, predict, present_classes

from helpers import needs_crf


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
