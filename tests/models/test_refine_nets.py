"""The refinement and segmentation networks (PSA's AffinityNet, MCTformer's seg/): ResNet-38's
layouts (against ../shared/fixtures/resnet38_state_dict.json), freezing and weight files,
the affinities against the embedding, torchvision's ResNet-50 file, the other backbones'
shapes and gradients, DeepLabV2's layout and parameter groups."""
import json

import pytest
import torch

from bench.reference import literal_pairs
from models.backbones import ResNet50Aff, ToyAff, ToySeg
from models.deeplab import build_deeplabv2
from models.registry import (affinity_stride, build_affinity_net, load_affinity_net,
                             load_segmentation_net)
from models.resnet38 import build_resnet38_aff, build_resnet38_seg, load_resnet38_weights
from utils.errors import UserError
from wsss.affinity import affinity_labels, affinity_loss, pair_offsets
from wsss.segmentation import seg_loss

from helpers import shared_fixture


# ------------------------------------------------------------------------- networks
@pytest.fixture(scope="module")
def r38_layout():
    with open(shared_fixture("fixtures/resnet38_state_dict.json")) as f:
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


@pytest.mark.slow
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


@pytest.mark.parametrize("make,C", [(lambda C: ToySeg(C), 5), pytest.param(
    lambda C: build_deeplabv2(C), 7, marks=pytest.mark.slow)])
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
    assert abs(float(net.aspp[0].weight.detach().std()) - 0.01) < 1e-3
