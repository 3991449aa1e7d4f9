"""The one-pass evaluator (``wsss.metrics``) against the literal mIoU of bench/reference.py,
the default thresholds and the first peak."""
import numpy as np
from PIL import Image

from bench.reference import literal_miou
from wsss.metrics import cam_miou, default_thresholds, first_peak
from wsss.scorefile import save_cam_dict


def test_cam_miou_matches_literal(tmp_path):
    rng = np.random.default_rng(0)
    names, cams, gts = [], [], []
    for i in range(6):
        h, w = rng.integers(20, 40, 2)
        keys = sorted(rng.choice(5, size=rng.integers(0, 3), replace=False).tolist())
        d = {k: rng.random((h, w)).astype(np.float32) for k in keys}
        if keys:  # exact ties with a threshold and between classes
            d[keys[0]][0, :5] = np.float32(0.4)
        gt = rng.integers(0, 6, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        n = f"img{i}"
        save_cam_dict(str(tmp_path / f"{n}.npy"), d)
        Image.fromarray(gt).save(tmp_path / f"{n}.png")
        names.append(n); cams.append(d); gts.append(gt)
    th = [0.5, 0.4, 0.3, 0.65, 0.0]   # unsorted on purpose
    miou, ciou = cam_miou(str(tmp_path), str(tmp_path), names, num_classes=21, thresholds=th)
    want_m, want_c = literal_miou(cams, gts, th)
    np.testing.assert_allclose(miou, want_m, rtol=1e-12)
    np.testing.assert_allclose(ciou, want_c, rtol=1e-12)
    assert miou.shape == (5,) and ciou.shape == (5, 21)


def test_thresholds_and_first_peak():
    th = default_thresholds()
    assert len(th) == 30 and th[0] == 0.30 and th[-1] == 0.59
    assert first_peak([0.3, 0.31, 0.32, 0.33], [50, 52, 51, 60]) == (0.31, 52)
    assert first_peak([0.3, 0.31], [50, 50]) == (0.3, 50)
