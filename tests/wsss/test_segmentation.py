"""The segmentation stage's functions (``wsss.segmentation``, MCTformer's seg/): multi-scale
and flipped prediction against the view-by-view restatement of bench/reference.py, and the
loss that ignores label 255."""
import pytest
import torch
import torch.nn.functional as F

from bench.reference import literal_seg_predict
from models.backbones import ToySeg
from wsss.segmentation import seg_loss, seg_predict


# ---------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("scales,flip,merge", [((0.5, 1.0, 1.5), False, "max"),
                                               ((0.75, 1.25), True, "mean"),
                                               ((1.0,), True, "max")])
def test_seg_predict_matches_view_by_view(scales, flip, merge):
    torch.manual_seed(0)
    net = ToySeg(6).double().eval()
    x = torch.randn(1, 3, 53, 70, dtype=torch.float64)
    with torch.no_grad():
        got = seg_predict(net, x, scales=scales, flip=flip, merge=merge)
        want = literal_seg_predict(net, x, scales, flip, merge)
    assert got.shape == (6, 53, 70)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if merge == "mean":
        torch.testing.assert_close(got.sum(0), torch.ones(53, 70, dtype=got.dtype))


def test_seg_loss_ignores_255_and_upsamples():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 41, 41), generator=g)
    target[0, :10] = 255
    up = F.interpolate(logits, size=(41, 41), mode="bilinear", align_corners=False)
    logp = F.log_softmax(up, 1)
    keep = target != 255
    want = -logp.permute(0, 2, 3, 1)[keep].gather(1, target[keep][:, None]).mean()
    torch.testing.assert_close(seg_loss(logits, target), want)
