"""The dense CRF (``wsss.crf``, PSA's ``crf_inference``): shapes, many labels and the
background's alpha."""
import numpy as np
import pytest

from wsss.crf import crf_with_alpha, dense_crf

from helpers import needs_crf


# -------------------------------------------------------------------------------- CRF
@needs_crf
def test_crf_shapes_many_labels_and_alpha():
    g = np.random.default_rng(0)
    rgb = g.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    probs = g.random((81, 30, 40)).astype(np.float32)
    q = dense_crf(rgb, probs / probs.sum(0), kind="seg")
    assert q.shape == (81, 30, 40) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1, rtol=1e-4)
    cams = g.random((2, 30, 40))
    s = crf_with_alpha(rgb, cams, 4)
    assert s.shape == (3, 30, 40) and s.dtype == np.float32
    low, high = crf_with_alpha(rgb, cams, 1)[0].mean(), crf_with_alpha(rgb, cams, 32)[0].mean()
    assert low > high           # a higher alpha leaves less background
    with pytest.raises(ValueError, match="kind"):
        dense_crf(rgb, probs[:3], kind="other")
