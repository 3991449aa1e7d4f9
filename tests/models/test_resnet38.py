"""PSA's ResNet-38, AffinityNet and the LargeFOV segmentation net: state-dict layouts
against ../shared/fixtures/resnet38_state_dict.json, the training mode (BN and stem
frozen), the parameter groups of PSA's PolyOptimizer, fresh head initialisations and weight
loading, forward shapes on odd sizes, the affinities against a pair-by-pair
restatement, gradients and bf16 autocast. The full-width nets (about 100 M parameters) are
built once per module and run on tiny images; layouts use the meta device."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.reference_refine import ref_affinities
from models.resnet38 import build_resnet38_aff, build_resnet38_seg, load_resnet38_weights
from utils.errors import UserError
from wsss.affinity import affinity_labels, affinity_loss, pair_offsets
from wsss.segmentation import seg_loss

from helpers import shared_fixture

AFF_HEAD = ["f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"]
SEG_HEAD = ["fc8_seg_conv1.weight", "fc8_seg_conv1.bias", "fc8_seg_conv2.weight",
            "fc8_seg_conv2.bias"]


@pytest.fixture(scope="module")
def layouts():
    with open(shared_fixture("fixtures/resnet38_state_dict.json")) as f:
        return {name: {k: tuple(s) for k, s in keys.items()} for name, keys in json.load(f).items()}


@pytest.fixture(scope="module")
def aff():
    torch.manual_seed(0)
    return build_resnet38_aff(radius=5)


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(1)
    return build_resnet38_seg(num_classes=21)


def shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def classifier_state(net):
    """What PSA's res38_cls.pth holds, from a net's trunk: the trunk without
    num_batches_tracked (saved before PyTorch 0.4.1) plus the classifier fc8."""
    sd = {k: v for k, v in net.state_dict().items()
          if k.split(".")[0] not in ("f8_3", "f8_4", "f8_5", "f9", "fc8_seg_conv1",
                                     "fc8_seg_conv2") and not k.endswith("num_batches_tracked")}
    sd["fc8.weight"] = torch.zeros(20, 4096, 1, 1)
    return sd


# ---------------------------------------------------------------------- layouts
@pytest.mark.parametrize("build,name", [(lambda: build_resnet38_aff(5), "resnet38_aff"),
                                        (lambda: build_resnet38_aff(4), "resnet38_aff"),
                                        (lambda: build_resnet38_seg(21), "resnet38_seg_voc"),
                                        (lambda: build_resnet38_seg(81), "resnet38_seg_coco")])
def test_state_dict_layouts_match_the_reference(layouts, build, name):
    with torch.device("meta"):
        net = build()
    assert shapes(net) == layouts[name]
    trunk = {k: s for k, s in layouts[name].items() if k in layouts["resnet38d"]}
    assert trunk == layouts["resnet38d"] and len(trunk) == 228
    assert set(layouts["resnet38_cls"]) - set(layouts["resnet38d"]) == {"fc8.weight"}


# ------------------------------------------------------------------ training mode
def frozen_names(net):
    return {k for k, p in net.named_parameters() if not p.requires_grad}


def bn_names(net):
    return {f"{m}.{t}" for m, mod in net.named_modules() if isinstance(mod, nn.BatchNorm2d)
            for t in ("weight", "bias")}


@pytest.mark.parametrize("which,stem", [("aff", ("conv1a", "b2.", "b2_1.", "b2_2.")),
                                        ("seg", ("conv1a",))])
def test_training_mode_freezes_batchnorm_and_the_stem(which, stem, aff, seg):
    net = {"aff": aff, "seg": seg}[which]
    for mode in (True, False, True):
        net.train(mode)
        want = bn_names(net) | {k for k, _ in net.named_parameters() if k.startswith(stem)}
        assert frozen_names(net) == want
        assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
        drops = [m for m in net.modules() if isinstance(m, nn.Dropout2d)]
        assert len(drops) == 4 and all(m.training == mode for m in drops)
        assert net.training == mode
    assert "b3.conv_branch2a.weight" not in frozen_names(net)


def test_batchnorm_statistics_never_move(aff):
    aff.train()
    before = aff.b4_2.bn_branch2a.running_mean.clone()
    with torch.no_grad():
        aff(torch.randn(1, 3, 41, 75))
    assert torch.equal(aff.b4_2.bn_branch2a.running_mean, before)


# --------------------------------------------------------------- parameter groups
def test_affinity_param_groups_are_psa_four(aff):
    aff.train()
    name = {id(p): k for k, p in aff.named_parameters()}
    groups = aff.param_groups(0.01, 5e-4)
    got = [(sorted(name[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in groups]
    trunk = sorted(k for k, p in aff.named_parameters()
                   if p.requires_grad and "conv" in k and k not in AFF_HEAD)
    assert got == [(trunk, 0.01, 5e-4), ([], 0.02, 0.0), (AFF_HEAD, 0.1, 5e-4), ([], 0.2, 0.0)]
    assert len(trunk) == 35
    trainable = {k for k, p in aff.named_parameters() if p.requires_grad}
    assert set(trunk) | set(AFF_HEAD) == trainable


def test_segmentation_param_groups_split_on_fc8(seg):
    seg.train()
    name = {id(p): k for k, p in seg.named_parameters()}
    groups = seg.param_groups(7e-4, 0.0)
    assert [len(g["params"]) for g in groups] == [42, 4]
    assert sorted(name[id(p)] for p in groups[1]["params"]) == sorted(SEG_HEAD)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(7e-4, 0.0), (7e-3, 0.0)]
    assert {name[id(p)] for g in groups for p in g["params"]} == \
        {k for k, p in seg.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------ fresh heads
def test_fresh_heads_follow_the_reference_initialisation(aff, seg):
    for conv, fan_in in ((aff.f8_3, 512), (aff.f8_4, 1024), (aff.f8_5, 4096)):
        std = math.sqrt(2.0 / fan_in)                      # kaiming normal, fan-in, gain sqrt 2
        assert float(conv.weight.detach().std()) == pytest.approx(std, rel=0.1)
    bound = 4 * math.sqrt(6.0 / (448 + 448))               # xavier uniform, gain 4
    f9 = aff.f9.weight.detach()
    assert float(f9.abs().max()) <= bound * (1 + 1e-6)
    assert float(f9.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    for conv, cin, cout in ((seg.fc8_seg_conv1, 4096, 512), (seg.fc8_seg_conv2, 512, 21)):
        bound = math.sqrt(6.0 / (9 * cin + 9 * cout))
        assert float(conv.weight.detach().abs().max()) <= bound * (1 + 1e-6)
        assert float(conv.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert float(conv.bias.detach().abs().max()) <= 1 / math.sqrt(9 * cin)   # torch default
        assert float(conv.bias.detach().abs().max()) > 0


# ------------------------------------------------------------------- weight loading
def test_classifier_weights_load_into_both_nets(aff, seg):
    """res38_cls.pth into AffinityNet and the seg net (MCTformer initialises both from it):
    the trunk copied, fc8 dropped, the new head left fresh and reported."""
    cls = {k: v * 0.5 for k, v in classifier_state(aff).items()}
    head = aff.f9.weight.detach().clone()
    info = load_resnet38_weights(aff, cls)
    assert sorted(info["fresh"]) == AFF_HEAD and info["dropped"] == ["fc8.weight"]
    assert torch.equal(aff.b4_3.conv_branch2a.weight, cls["b4_3.conv_branch2a.weight"])
    assert torch.equal(aff.bn7.running_var, cls["bn7.running_var"])
    assert torch.equal(aff.f9.weight, head)
    info = load_resnet38_weights(seg, cls)
    assert sorted(info["fresh"]) == sorted(SEG_HEAD) and info["dropped"] == ["fc8.weight"]
    assert torch.equal(seg.b7.conv_branch2b2.weight, cls["b7.conv_branch2b2.weight"])


def test_weight_files_in_every_layout(aff, tmp_path):
    """A file saved from DataParallel inside {'state_dict': ...}, and {'model': ...} in
    float64: read with weights_only, unwrapped, cast, nothing fresh or dropped."""
    sd = aff.state_dict()
    path = tmp_path / "resnet38_aff.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    assert load_resnet38_weights(aff, str(path)) == {"fresh": [], "dropped": []}
    small = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
    assert load_resnet38_weights(aff, {"model": small}) == {"fresh": [], "dropped": []}
    assert aff.f9.weight.dtype == torch.float32


def test_weight_file_errors_say_what_and_how(aff, seg, tmp_path):
    cls = classifier_state(aff)
    del cls["b5.conv_branch1.weight"]
    with pytest.raises(UserError, match=r"b5\.conv_branch1\.weight.*res38_cls\.pth"):
        load_resnet38_weights(aff, cls)
    voc = seg.state_dict()
    with torch.device("meta"):
        coco = build_resnet38_seg(81)
    with pytest.raises(UserError, match=r"shape mismatch.*fc8_seg_conv2\.weight"):
        load_resnet38_weights(coco, voc)
    with pytest.raises(UserError, match="not found"):
        load_resnet38_weights(aff, str(tmp_path / "missing.pth"))
    torch.save({"model": {"f9.weight": torch.zeros(1)}, "args": {1, 2}}, tmp_path / "unsafe.pth")
    with pytest.raises(UserError):
        load_resnet38_weights(aff, str(tmp_path / "unsafe.pth"))


# ------------------------------------------------------------------- forward passes
def test_trunk_taps_and_affinities(aff):
    aff.eval()
    H, W = 41, 75
    x = torch.randn(2, 3, H, W)
    h, w = -(-H // 8), -(-W // 8)
    with torch.no_grad():
        f = aff.features(x)
        e = aff.embed(x)
        a = aff(x)
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "conv4": (2, 512, h, w), "conv5": (2, 1024, h, w), "conv6": (2, 4096, h, w)}
    assert all(bool((v >= 0).all()) for v in f.values())      # all three taps follow a ReLU
    assert e.shape == (2, 448, h, w) and bool((e > -1).all())  # after an ELU
    K, P = len(pair_offsets(5)), (h - 4) * (w - 8)
    assert a.shape == (2, K, P)
    np.testing.assert_allclose(a.double().numpy(), ref_affinities(e.double().numpy(), 5),
                               rtol=1e-5, atol=1e-7)


def test_affinity_gradients_reach_the_trunk_but_not_the_stem(aff):
    aff.train()
    aff.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 48, 80)
    y = torch.randint(0, 3, (2, 6, 10))
    L = affinity_loss(aff(x), *affinity_labels(y, 5))
    assert torch.isfinite(L["total"])
    L["total"].backward()
    for k in ("f9.weight", "f8_3.weight", "b3.conv_branch2a.weight", "b7.conv_branch1.weight"):
        g = dict(aff.named_parameters())[k].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert aff.conv1a.weight.grad is None and aff.b2_2.conv_branch2a.weight.grad is None
    assert aff.bn7.weight.grad is None
    aff.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_segmentation_logits_loss_and_gradients(seg):
    seg.train()
    H, W = 33, 50
    seg.zero_grad(set_to_none=True)
    torch.manual_seed(H)
    x = torch.randn(2, 3, H, W)
    logits = seg(x)
    assert logits.shape == (2, 21, -(-H // 8), -(-W // 8)) and torch.isfinite(logits).all()
    target = torch.randint(0, 21, (2, H, W))
    target[:, :3] = 255
    seg_loss(logits, target).backward()
    assert seg.fc8_seg_conv2.bias.grad is not None and seg.b3.conv_branch1.weight.grad is not None
    assert seg.conv1a.weight.grad is None
    seg.zero_grad(set_to_none=True)
    seg.eval()
    with torch.no_grad():
        assert torch.equal(seg(x), seg(x))                 # eval: dropout off


def test_bf16_autocast_forward(aff, seg):
    aff.eval()
    seg.eval()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = aff(x)
        y = seg(x)
    assert a.shape == (1, 34, 4) and bool(((a > 0) & (a <= 1)).all())
    assert y.shape == (1, 21, 6, 10) and torch.isfinite(y.float()).all()
