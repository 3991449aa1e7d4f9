"""The compact score files (``wsss.scorefile``): the round trip and its tolerance, the
thresholds and pseudo labels they keep, their size at VOC scale, one reader for both
formats, and corrupt or hostile files refused with one line."""
import io
import struct

import numpy as np
import pytest

from datasets.synthetic import GEOMETRY, synthetic_scene
from utils.errors import UserError
from wsss.pseudo import crf_score_dict, pseudo_label, score_dict_label
from wsss.scorefile import (CAM_SCALE, CRF_SCALE, MAGIC, decode_score_dict, encode_score_dict,
                            load_cam_dict, load_score_dict, save_score_dict, score_file)

from helpers import WritesMarker, needs_crf


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
