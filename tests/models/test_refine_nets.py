"""The refinement and segmentation layer (PSA, MCTformer's seg/) against literal restatements
(bench/reference.py) for configurations other than the fixture's: radii, sizes, class
counts, betas, logt, both background rules; the networks' layouts, freezing, shapes,
gradients and weight files; PolySGD; multi-scale prediction; the CRF."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.reference import (literal_affinity_labels, literal_label_map, literal_pairs,
                             literal_poly_sgd, literal_random_walk, literal_seg_predict)
from models.backbones import ResNet50Aff, ToyAff, ToySeg
from models.deeplab import build_deeplabv2
from models.registry import (affinity_stride, build_affinity_net, load_affinity_net,
                             load_segmentation_net)
from models.resnet38 import build_resnet38_aff, build_resnet38_seg, load_resnet38_weights
from wsss.affinity import (affinity_label_map, affinity_labels, affinity_loss, crop_window,
                            dense_affinity, pair_indices, pair_offsets, random_walk,
                            rw_background, sparse_affinity)
from wsss.crf import crf_available, crf_with_alpha, dense_crf
from utils.errors import UserError
from utils.optim import PolySGD
from wsss.segmentation import seg_loss, seg_predict

from helpers import ROOT


# ------------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("h,w,r", [(7, 9, 3), (10, 12, 4), (11, 13, 5), (9, 17, 5)])
def test_pairs_match_literal(h, w, r):
    offs, froms, tos = literal_pairs(h, w, r)
    assert pair_offsets(r) == offs
    assert len(offs) == {3: 12, 4: 22, 5: 34}[r]
    i_from, i_to = pair_indices(h, w, r)
    assert i_from.dtype == i_to.dtype == torch.int64
    np.testing.assert_array_equal(i_from.numpy(), froms)
    np.testing.assert_array_equal(i_to.numpy(), tos)


def test_grids_too_small_for_the_radius_have_no_pairs():
    """As the reference's slicing gives: no pairs, so the walk's matrix is the identity."""
    for h, w in ((4, 20), (9, 8), (3, 3)):
        i_from, i_to = pair_indices(h, w, 5)
        assert i_from.numel() == i_to.numel() == 0
        M = dense_affinity(torch.zeros(34, 0), h, w, 5)
        assert torch.equal(M, torch.eye(h * w))
        scores = torch.rand(2, 8 * h, 8 * w)
        torch.testing.assert_close(random_walk(scores, sparse_affinity(torch.zeros(34, 0), h, w,
                                                                       5)),
                                   random_walk(scores, M))


@pytest.mark.parametrize("r", [3, 4, 5])
def test_affinity_labels_match_literal_batched(r):
    g = np.random.default_rng(r)
    y = g.choice([0, 1, 2, 3, 255], size=(3, 10, 12), p=[0.4, 0.2, 0.15, 0.1, 0.15])
    got = affinity_labels(torch.from_numpy(y), r)
    for b in range(3):
        want = literal_affinity_labels(y[b], r)
        for t, u in zip(got, want):
            assert t.dtype == torch.float32
            np.testing.assert_array_equal(t[b].numpy(), u)


@pytest.mark.parametrize("S,n", [(40, 1), (44, 3), (37, 2)])
def test_label_map_matches_literal(S, n):
    g = np.random.default_rng(S)
    la = g.random((n + 1, S, S)) ** 3
    ha = g.random((n + 1, S, S)) ** 3
    la[:, :9, :9] = 0                         # a block without scores -> 255
    ha[:, :9, :9] = 0
    got = affinity_label_map(torch.from_numpy(la), torch.from_numpy(ha), stride=8)
    assert got.dtype == torch.int64 and got.shape == (-(-S // 8),) * 2
    np.testing.assert_array_equal(got.numpy(), literal_label_map(la, ha))
    assert got[0, 0] == 255


def test_crop_window_fills_outside():
    x = torch.arange(2 * 5 * 7, dtype=torch.float64).reshape(2, 5, 7)
    z = crop_window(x, 6, -2, 3, fill=-1.0)
    for i in range(6):
        for j in range(6):
            r, c = i - 2, j + 3
            want = x[:, r, c] if 0 <= r < 5 and 0 <= c < 7 else torch.full((2,), -1.0,
                                                                              dtype=x.dtype)
            torch.testing.assert_close(z[:, i, j], want)
    assert crop_window(x, 3, 10, 10).abs().sum() == 0


def test_affinity_loss_terms():
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(2, 10, 30, generator=g, dtype=torch.float64)
    bg, fg, neg = ((torch.rand(2, 10, 30, generator=g) > q).double() for q in (0.7, 0.8, 0.6))
    L = affinity_loss(aff, bg, fg, neg)
    want_bg = (-(bg * torch.log(aff + 1e-5))).sum() / (bg.sum() + 1e-5)
    want_neg = (-(neg * torch.log(1 + 1e-5 - aff))).sum() / (neg.sum() + 1e-5)
    torch.testing.assert_close(L["bg"], want_bg)
    torch.testing.assert_close(L["neg"], want_neg)
    torch.testing.assert_close(L["total"], L["bg"] / 4 + L["fg"] / 4 + L["neg"] / 2)


# --------------------------------------------------------------------------- the walk
@pytest.mark.parametrize("H,W,r,beta,logt,c,mode", [
    (45, 93, 5, 8, 6, 3, "threshold"), (40, 70, 4, 4, 3, 2, "power"),
    (33, 77, 5, 2, 4, 1, "power"), (50, 50, 4, 8, 8, 4, "threshold")])
def test_random_walk_matches_literal(H, W, r, beta, logt, c, mode):
    g = torch.Generator().manual_seed(H)
    h, w = -(-H // 8), -(-W // 8)
    K, P = len(pair_offsets(r)), (h - r + 1) * (w - 2 * r + 2)
    aff = torch.rand(K, P, generator=g, dtype=torch.float64)
    cams = torch.rand(c - 1, H, W, generator=g, dtype=torch.float64) ** 2
    bg = rw_background(cams, mode=mode, threshold=0.35, alpha=16)
    if mode == "power":
        want_bg = (1 - cams.amax(0)) ** 16 if c > 1 else torch.ones(H, W, dtype=cams.dtype)
    else:
        want_bg = torch.full((H, W), 0.35, dtype=cams.dtype)
    torch.testing.assert_close(bg, want_bg)
    scores = torch.cat([bg[None], cams])
    want = literal_random_walk(scores.numpy(), aff.numpy(), r, beta, logt)
    M = dense_affinity(aff, h, w, r)
    Ms = sparse_affinity(aff[None], h, w, r)
    torch.testing.assert_close(Ms.to_dense(), M)
    dense = random_walk(scores, M, beta=beta, logt=logt)
    sparse = random_walk(scores, Ms, beta=beta, logt=logt)
    assert dense.shape == (c, H, W)
    np.testing.assert_allclose(dense.numpy(), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sparse.numpy(), want, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(sparse.argmax(0).numpy(), want.argmax(0))


def test_sparse_walk_in_float32_agrees_with_squaring():
    g = torch.Generator().manual_seed(5)
    H, W, r = 120, 150, 5
    h, w = 15, 19
    aff = torch.rand(1, len(pair_offsets(r)), (h - 4) * (w - 8), generator=g)
    scores = torch.rand(3, H, W, generator=g)
    dense = random_walk(scores, dense_affinity(aff, h, w, r))
    sparse = random_walk(scores.half(), sparse_affinity(aff, h, w, r).half())
    assert sparse.dtype == torch.float32
    assert float((sparse - dense).norm() / dense.norm()) < 1e-3   # half-precision inputs
    full = random_walk(scores, sparse_affinity(aff, h, w, r))
    assert float((full - dense).norm() / dense.norm()) < 1e-5
    assert torch.equal(full.argmax(0), dense.argmax(0))


def test_walk_rejects_a_matrix_of_another_size():
    with pytest.raises(ValueError, match="does not fit"):
        random_walk(torch.rand(2, 30, 30), torch.eye(10))


# ------------------------------------------------------------------------- networks
@pytest.fixture(scope="module")
def r38_layout():
    path = os.path.join(os.path.dirname(ROOT), "shared", "fixtures",
                        "resnet38_state_dict.json")
    if not os.path.isfile(path):
        pytest.skip(f"reference fixture {path} not present (../shared beside the checkout)")
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def r38_aff():
    torch.manual_seed(0)
    return build_resnet38_aff(radius=4)


def test_resnet38_layouts_and_freezing(r38_layout, r38_aff):
    shapes = lambda net: {k: list(v.shape) for k, v in net.state_dict().items()}  # noqa: E731
    want_aff = dict(r38_layout["resnet38_aff"])
    got = shapes(r38_aff)
    assert got == want_aff
    for C, key in ((21, "resnet38_seg_voc"), (81, "resnet38_seg_coco")):
        seg = build_resnet38_seg(C)
        assert shapes(seg) == r38_layout[key]
        frozen = {k for k, p in seg.named_parameters() if not p.requires_grad}
        assert "conv1a.weight" in frozen and "b2.conv_branch2a.weight" not in frozen
        assert all("bn" in k or k == "conv1a.weight" for k in frozen)
        del seg
    r38_aff.train()
    frozen = {k for k, p in r38_aff.named_parameters() if not p.requires_grad}
    assert {"conv1a.weight", "b2.conv_branch1.weight", "b2_2.conv_branch2b1.weight"} <= frozen
    assert "b3.conv_branch2a.weight" not in frozen and "f9.weight" not in frozen
    assert not any(m.training for m in r38_aff.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    assert r38_aff.b6.dropout_2b1.training
    groups = r38_aff.param_groups(0.1, 5e-4)
    assert [g["lr"] for g in groups] == [0.1, 0.2, 1.0, 2.0]
    assert [len(g["params"]) for g in groups] == [len(groups[0]["params"]), 0, 4, 0]


def test_resnet38_aff_forward_matches_the_embedding(r38_aff):
    r38_aff.eval()
    x = torch.randn(1, 3, 50, 75)
    with torch.no_grad():
        e = r38_aff.embed(x)
        aff = r38_aff(x)
    h, w = 7, 10
    assert e.shape == (1, 448, h, w)
    offs, froms, tos = literal_pairs(h, w, 4)
    flat = e.reshape(448, -1)
    P = len(froms)
    want = torch.stack([torch.exp(-(flat[:, tos[k * P:(k + 1) * P]] - flat[:, froms]).abs()
                                  .mean(0)) for k in range(len(offs))])
    torch.testing.assert_close(aff[0], want)


def test_resnet38_weight_files(r38_aff, tmp_path):
    """A classifier file without num_batches_tracked, 'module.' keys and an fc8 head: fresh
    and dropped keys reported; missing trunk keys and wrong shapes refused."""
    cls = {("module." + k): v.clone() for k, v in r38_aff.state_dict().items()
           if not k.startswith("f") and not k.endswith("num_batches_tracked")}
    cls["module.fc8.weight"] = torch.zeros(20, 4096, 1, 1)
    torch.save(cls, tmp_path / "res38_cls.pth")
    net = build_resnet38_aff(radius=4)
    info = load_resnet38_weights(net, str(tmp_path / "res38_cls.pth"))
    assert sorted(info["fresh"]) == ["f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"]
    assert info["dropped"] == ["fc8.weight"]
    assert torch.equal(net.b4_3.conv_branch2a.weight, r38_aff.b4_3.conv_branch2a.weight)
    del cls["module.b5.conv_branch1.weight"]
    with pytest.raises(UserError, match="1 keys missing: b5.conv_branch1.weight"):
        load_resnet38_weights(net, cls)
    bad = {k: v for k, v in r38_aff.state_dict().items()}
    bad["f9.weight"] = torch.zeros(448, 440, 1, 1)
    with pytest.raises(UserError, match="shape mismatches: f9.weight"):
        load_resnet38_weights(net, bad)
    # a trained AffinityNet file loads strictly (also without num_batches_tracked)
    torch.save({k: v for k, v in r38_aff.state_dict().items()
                if not k.endswith("num_batches_tracked")}, tmp_path / "res38_aff.pth")
    loaded = load_affinity_net("resnet38", str(tmp_path / "res38_aff.pth"), radius=4)
    assert not loaded.training and torch.equal(loaded.f9.weight, r38_aff.f9.weight)


def test_a_torchvision_file_loads_into_the_trunk_under_the_backbone_prefix(tmp_path):
    """resnet50's ImageNet file (torchvision's keys) through the one loader: the trunk
    copied under ``body.``, the classifier's fc dropped and the new head left fresh, both
    reported; a file of another network is refused naming the keys."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    imagenet = {k: v + 1 for k, v in resnet50().state_dict().items()}
    torch.save(imagenet, tmp_path / "resnet50.pth")
    net, info = build_affinity_net("resnet50", radius=4, weights=str(tmp_path / "resnet50.pth"))
    assert info["dropped"] == ["fc.weight", "fc.bias"]
    assert sorted(info["fresh"]) == ["f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"]
    assert torch.equal(net.body.layer3[0].conv2.weight, imagenet["layer3.0.conv2.weight"])
    assert torch.equal(net.body.bn1.running_mean, imagenet["bn1.running_mean"])
    torch.save(build_resnet38_aff(radius=4).state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"does not match the model \(ResNet50Aff: .*missing"):
        build_affinity_net("resnet50", radius=4, weights=str(tmp_path / "other.pth"))


@pytest.mark.parametrize("make", [lambda: ToyAff(radius=5), lambda: ResNet50Aff(radius=4)])
def test_other_affinity_backbones_shapes_and_gradients(make):
    torch.manual_seed(0)
    net = make()
    net.train()
    x = torch.randn(2, 3, 96, 104)
    aff = net(x)
    r, s = net.radius, net.stride
    assert s == affinity_stride({ToyAff: "toy", ResNet50Aff: "resnet50"}[type(net)])
    h, w = -(-96 // s), -(-104 // s)           # the walk's grid at the net's stride
    K, P = len(pair_offsets(r)), (h - r + 1) * (w - 2 * r + 2)
    assert aff.shape == (2, K, P) and torch.isfinite(aff).all()
    assert ((aff > 0) & (aff <= 1)).all()
    y = torch.randint(0, 3, (2, h, w))
    L = affinity_loss(aff, *affinity_labels(y, r))
    L["total"].backward()
    assert net.f9.weight.grad is not None and torch.isfinite(net.f9.weight.grad).all()
    groups = net.param_groups(0.01, 5e-4)
    assert len(groups) == 4 and len(groups[2]["params"]) == 4


@pytest.mark.parametrize("make,C", [(lambda C: ToySeg(C), 5), (lambda C: build_deeplabv2(C), 7)])
def test_segmentation_backbones_shapes_gradients_round_trip(make, C, tmp_path):
    torch.manual_seed(0)
    net = make(C)
    net.train()
    x = torch.randn(2, 3, 65, 80)
    logits = net(x)
    s = 4 if isinstance(net, ToySeg) else 8     # output stride: toy 4, DeepLabV2 8
    assert logits.shape == (2, C, -(-65 // s), -(-80 // s)) and torch.isfinite(logits).all()
    target = torch.randint(0, C, (2, 65, 80))
    target[:, :5] = 255
    seg_loss(logits, target).backward()
    assert any(p.grad is not None for p in net.parameters())
    torch.save(net.state_dict(), tmp_path / "seg.pth")
    backbone = "toy" if isinstance(net, ToySeg) else "deeplabv2_r101"
    loaded = load_segmentation_net(backbone, str(tmp_path / "seg.pth"), C)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    with pytest.raises(UserError, match="does not match"):
        load_segmentation_net(backbone, str(tmp_path / "seg.pth"), C + 1)


def test_deeplabv2_layout_groups_and_frozen_bn():
    net = build_deeplabv2(21)
    keys = list(net.state_dict())
    assert "backbone.conv1.weight" in keys and "backbone.layer4.2.bn3.running_var" in keys
    assert [k for k in keys if k.startswith("aspp")] == [f"aspp.{i}.{t}" for i in range(4)
                                                         for t in ("weight", "bias")]
    assert not any(k.startswith("backbone.fc") for k in keys)
    assert net.backbone.layer3[1].conv2.dilation == (2, 2)      # torchvision's rule: the
    assert net.backbone.layer4[1].conv2.dilation == (4, 4)      # first block keeps the last
    groups = net.param_groups(2.5e-4, 5e-4)
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3, 5e-3]
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    assert not any(p.requires_grad for n, p in net.named_parameters() if ".bn" in n)
    assert abs(float(net.aspp[0].weight.std()) - 0.01) < 1e-3


# --------------------------------------------------------------------------- PolySGD
@pytest.mark.parametrize("momentum,max_step", [(5e-4, 5), (1e-5, 3), (0.9, 10)])
def test_poly_sgd_matches_literal_and_resumes(momentum, max_step):
    g = torch.Generator().manual_seed(1)
    p0 = [torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2)]
    grads = [[torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2)]
             for _ in range(7)]
    params = [torch.nn.Parameter(p.clone()) for p in p0]
    opt = PolySGD([{"params": [params[0]], "lr": 0.1, "weight_decay": 0.01},
                   {"params": [params[1]], "lr": 1.0}], max_step, momentum=momentum)
    history, lrs = literal_poly_sgd(p0, grads, [0.1, 1.0], [0.01, 0.0], max_step, momentum)
    for t, gs in enumerate(grads):
        for p, d in zip(params, gs):
            p.grad = d.clone()
        opt.step()
        assert [grp["lr"] for grp in opt.param_groups] == pytest.approx(lrs[t], rel=1e-12)
        for p, want in zip(params, history[t]):
            torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)
        if t == 3:   # a resumed optimiser continues identically
            state = opt.state_dict()
            opt = PolySGD([{"params": [params[0]], "lr": 0.1, "weight_decay": 0.01},
                           {"params": [params[1]], "lr": 1.0}], max_step, momentum=momentum)
            opt.load_state_dict(state)
            assert opt.global_step == 4
    assert opt.global_step == 7


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


# -------------------------------------------------------------------------------- CRF
@pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")
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
