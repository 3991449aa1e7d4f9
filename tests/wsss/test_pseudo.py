"""Pseudo labels from CAM and CRF score dicts (``wsss.pseudo``): background wins ties, and
the CRF's label follows the CAM."""
import numpy as np

from wsss.pseudo import crf_score_dict, pseudo_label, score_dict_label

from helpers import needs_crf


def test_pseudo_label_background_wins_ties():
    cams = {2: np.full((3, 4), 0.4, np.float32)}
    assert (pseudo_label(cams, 0.4, (3, 4)) == 0).all()
    assert (pseudo_label(cams, 0.39, (3, 4)) == 3).all()
    assert (pseudo_label({}, 0.1, (3, 4)) == 0).all()


@needs_crf
def test_crf_label_follows_the_cam():
    rgb = np.full((40, 40, 3), 30, np.uint8)
    rgb[10:30, 10:30] = 220
    cam = np.zeros((40, 40), np.float32)
    cam[12:28, 12:28] = 0.9
    scores = crf_score_dict(rgb, {1: cam}, alpha=4)
    assert sorted(scores) == [0, 2] and all(v.dtype == np.float32 for v in scores.values())
    got = score_dict_label(scores)
    assert (got[15:25, 15:25] == 2).all() and (got[:5] == 0).all()
