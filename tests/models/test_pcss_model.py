"""The network, DeiT initialisation and the PCSS objective, timm-style:
shapes, no NaN, backward, checkpoint round-trip, and equality with literal re-statements
(bench/reference.py) for configurations other than the shared fixtures'."""
import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from bench.reference import literal_forward, prefix_sharing_case, ref_losses
from models import build_model, init_from_deit, load_model_weights, pcss_losses
from models.weights import load_state_dict_file
from utils.errors import UserError
from wsss.cam import cam_dict

from helpers import ROOT


HERE = os.path.join(ROOT, "tests")


def small(C=3, S=64, D=32, depth=3, heads=2, dpr=0.0, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return build_model(num_classes=C, img_size=S, embed_dim=D, depth=depth, num_heads=heads,
                       drop_path_rate=dpr).to(dtype)


@pytest.mark.parametrize("C,S,D,depth,heads,hw", [(3, 64, 32, 3, 2, (64, 64)),
                                                 (7, 48, 24, 2, 3, (80, 56)),
                                                 (2, 32, 16, 5, 4, (35, 50))])
def test_forward_matches_literal_spec(C, S, D, depth, heads, hw):
    net = small(C, S, D, depth, heads).eval()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    with torch.no_grad():
        out = net(x, merge_block=1)
        ref = literal_forward(net, x)
        cls, pcls = net.logits(x)
        r = net.rcams(x, n_layers=2)
        ref2 = literal_forward(net, x, n_layers=2)
    for got, want in zip((out["cls"], out["pcls"], out["cams"], out["rcams"]), ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cls, ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pcls, ref[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r, ref2[3], rtol=1e-10, atol=1e-12)
    h, w = hw[0] // 16, hw[1] // 16
    assert out["cams"].shape == (2, C, h, w) and out["x_patch"].shape == (2, D, h, w)
    assert (out["cams"] >= 0).all()


def test_outputs_shapes_float32_and_backward():
    net = small(C=4, dtype=torch.float32).train()
    x = torch.randn(3, 3, 64, 64)
    out = net(x, merge_block=1)
    for k in ("cls", "pcls", "cams", "rcams", "x_patch"):
        assert torch.isfinite(out[k]).all(), k
        assert out[k].dtype == torch.float32
    assert net(x)["x_patch"] is None
    (out["cls"].sum() + out["rcams"].sum()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None and not n.startswith("norm.")]
    assert missing == []
    assert net.norm.weight.grad is None  # the final norm is not applied


def test_mix_hook_replaces_magnitude_keeps_phase():
    net = small().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        base = net(x, merge_block=0)
        same = net(x, merge_block=0, mag=torch.fft.fft2(base["x_patch"]).abs())
        other = net(x, merge_block=0, mag=torch.ones_like(base["x_patch"]))
    torch.testing.assert_close(same["cls"], base["cls"], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(other["cls"], base["cls"])


def test_state_dict_layout_matches_reference():
    layout = json.load(open(os.path.join(HERE, "fixtures", "deit_small_mct_state_dict.json")))
    for C in (20, 80):
        net = build_model(num_classes=C)
        got = {k: list(v.shape) for k, v in net.state_dict().items()}
        assert got == layout[str(C)]
        net.load_state_dict({k: torch.zeros(s) for k, s in layout[str(C)].items()}, strict=True)


def test_checkpoint_round_trip_and_strict_errors(tmp_path):
    net = small(dtype=torch.float32)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    other = small(dtype=torch.float32, seed=1)
    load_model_weights(other, str(path))
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    sd = net.state_dict()
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="head.bias.*extra.weight|extra.weight"):
        load_model_weights(other, sd)


@pytest.mark.parametrize("wrap,how", [
    (lambda sd: sd, None),
    (lambda sd: {"model": sd, "epoch": 3}, "took its 'model' entry"),
    (lambda sd: {"state_dict": sd}, "took its 'state_dict' entry"),
    (lambda sd: {"module." + k: v for k, v in sd.items()}, "removed the 'module.' prefix of its keys"),
    (lambda sd: {"model": {"module." + k: v for k, v in sd.items()}},
     "took its 'model' entry and removed the 'module.' prefix of its keys"),
])
def test_checkpoint_layouts_researchers_have(tmp_path, wrap, how):
    net = small(dtype=torch.float32)
    torch.save(wrap(net.state_dict()), tmp_path / "w.pth")
    other, said = small(dtype=torch.float32, seed=1), []
    load_model_weights(other, str(tmp_path / "w.pth"), report=said.append)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 other.state_dict().values()))
    assert said == ([] if how is None else [f"{tmp_path / 'w.pth'}: {how}"])


def test_other_checkpoint_layouts_stay_strict_named_errors(tmp_path):
    net = small(dtype=torch.float32)
    torch.save({"weights": net.state_dict(), "epoch": 1}, tmp_path / "a.pth")
    with pytest.raises(UserError, match="not a state dict.*keys weights, epoch"):
        load_model_weights(net, str(tmp_path / "a.pth"))
    torch.save({"backbone." + k: v for k, v in net.state_dict().items()}, tmp_path / "b.pth")
    with pytest.raises(UserError, match="checkpoint does not match the model.*missing"):
        load_model_weights(net, str(tmp_path / "b.pth"))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(UserError, match="refusing to load"):
        load_state_dict_file(str(path))


def test_init_from_deit_repeats_tokens_and_resamples(tmp_path):
    net = small(C=5, S=96, D=32, depth=2, heads=2)
    src = small(C=1, S=224, D=32, depth=2, heads=2)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    sd["head.weight"] = torch.zeros(1000, 32)
    sd["head.bias"] = torch.zeros(1000)
    head_before = net.head.weight.detach().clone()
    init_from_deit(net, {"model": sd})
    assert torch.equal(net.cls_token[0, 3], sd["cls_token"][0, 0])
    assert torch.equal(net.pos_embed[0, :5], sd["pos_embed"][0, :1].expand(5, -1))
    grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(net.pos_embed[0, 5:], want.flatten(2)[0].T)
    assert torch.equal(net.head.weight, head_before)
    assert torch.equal(net.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    bad = dict(sd)
    bad.pop("blocks.0.attn.qkv.weight")
    bad["dist_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(UserError, match="blocks.0.attn.qkv.weight.*dist_token"):
        init_from_deit(net, bad)


@pytest.mark.parametrize("reuse", [False, True])
def test_pcss_losses_match_literal_and_gradients(reuse):
    net = small(C=4, S=48, D=24, depth=3, heads=3).train()
    torch.manual_seed(3)
    x = torch.randn(5, 3, 48, 48, dtype=torch.float64)
    y = (torch.rand(5, 4) > 0.5).double()
    y[2] = 0  # an image without labels passes FSS unchanged
    masks = torch.rand(4, 48, 48, dtype=torch.float64)
    perm = torch.tensor([4, 0, 3, 1, 2])
    L = pcss_losses(net, x, y, 5, masks, perm, 1.5, 0.7, 1, 0.4, reuse_prefix=reuse)
    L["total"].backward()
    got = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    ref = ref_losses(net, x, y, masks, perm, 1.5, 0.7, 1, 0.4)
    ref.pop("total").backward()
    for k in ref:
        torch.testing.assert_close(L[k], ref[k], rtol=1e-10, atol=1e-13)
    for n, p in net.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-8, atol=1e-12)


def test_pcss_loss_schedule_switches():
    net = small(C=3).train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1]], dtype=torch.float64)
    masks = torch.rand(3, 64, 64, dtype=torch.float64)
    early = pcss_losses(net, x, y, 2, masks, None, 2.0, 2.0, 1, 0.3, fim_start_epoch=2,
                        mpc_cam_start_epoch=3)
    assert early["cam_fss"] == 0 and early["cls_fss"] == 0 and early["cam_mpc"] == 0
    assert early["cls_mpc"] > 0
    late = pcss_losses(net, x, y, 3, masks, None, 2.0, 2.0, 1, 0.3, fim_start_epoch=2,
                       mpc_cam_start_epoch=3)
    assert late["cam_fss"] > 0 and late["cam_mpc"] > 0
    off = pcss_losses(net, x, y, 9, masks, None, 0.0, 0.0, 1, 0.3)
    assert float(off["total"].detach()) == pytest.approx(float(off["cls"].detach()))


def test_cam_dict_keys_range_and_dtype():
    net = small(C=4, dtype=torch.float32).eval()
    d = cam_dict(net, torch.randn(1, 3, 50, 70), torch.tensor([0.0, 1, 0, 1]))
    assert sorted(d) == [1, 3]
    for m in d.values():
        assert m.shape == (50, 70) and m.dtype.name == "float32"
        assert m.min() >= 0 and m.max() <= 1
    assert cam_dict(net, torch.randn(1, 3, 32, 32), torch.zeros(4)) == {}


def test_pcss_losses_under_bf16_autocast_keep_ffts_in_float32():
    net = small(C=3, dtype=torch.float32).train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    masks = torch.rand(3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L = pcss_losses(net, x, y, 3, masks, torch.tensor([1, 0]), 2.0, 2.0, 1, 0.3)
    ref = pcss_losses(net, x, y, 3, masks, torch.tensor([1, 0]), 2.0, 2.0, 1, 0.3)
    assert all(torch.isfinite(v) for v in L.values())
    assert abs(float(L["cls"].detach()) - float(ref["cls"].detach())) < 0.05
    L["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_shared_prefix_equals_full_recompute_with_drop_path():
    """Default mixed pass: fresh stochastic-depth masks in blocks 0..k like the reference,
    only the rows they change recomputed -> same losses, gradients and RNG stream."""
    net = small(C=4, S=48, D=24, depth=4, heads=3, dpr=0.5).train()
    L, got, ref, ref_grads, same_draws = prefix_sharing_case(net)
    assert same_draws                           # the same number of random draws
    for k in ref:
        torch.testing.assert_close(L[k], ref[k], rtol=1e-10, atol=1e-13)
    assert set(got) == set(ref_grads)
    for n in ref_grads:
        torch.testing.assert_close(got[n], ref_grads[n], rtol=1e-8, atol=1e-12)
    # and the shortcut differs from the reference when drop path is on
    net.zero_grad(set_to_none=True)
    fast, _, ref, _, _ = prefix_sharing_case(net, reuse_prefix=True)
    assert not torch.allclose(fast["cls_mpc"], ref["cls_mpc"])
