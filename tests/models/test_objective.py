"""``models.pcss.PCSSObjective``: its terms and total against ``pcss_losses``, the MPC block
default and the option checks, ``prepare``, the schedule switches, and the README's list of
the seed log's fields."""
import os
import re
from dataclasses import FrozenInstanceError

import pytest
import torch

from models import PCSSConfig, build_model, pcss_losses
from models.pcss import PCSSObjective

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small(drop_path=0.0):
    torch.manual_seed(0)
    return build_model(num_classes=3, img_size=48, embed_dim=24, depth=4, num_heads=2,
                       drop_path_rate=drop_path).double().train()


def batch():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 48, 48, dtype=torch.float64)
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.float64)
    masks = torch.rand(3, 48, 48, dtype=torch.float64)
    return x, y, masks


@pytest.mark.parametrize("epoch", [1, 5])
def test_terms_and_total_equal_pcss_losses_bit_for_bit(epoch):
    """Same drop-path draws on both sides (reseeded): every term and the total are equal,
    and the total is the terms' sum in ``TERMS`` order."""
    net = small(drop_path=0.2)
    x, y, masks = batch()
    perm = torch.tensor([2, 0, 3, 1])
    objective = PCSSObjective(w_fss=1.5, w_mpc=0.7, mpc_block=1, mpc_keep_ratio=0.4,
                              fim_start_epoch=2, mpc_cam_start_epoch=3)
    torch.manual_seed(7)
    got = objective.losses(net, x, y, epoch, masks, perm)
    torch.manual_seed(7)
    want = pcss_losses(net, x, y, epoch, masks, perm, 1.5, 0.7, 1, 0.4, 2, 3)
    assert list(got) == list(PCSSObjective.TERMS) + ["total"] == list(want)
    for k in got:
        assert torch.equal(got[k], want[k]), k
    total = got["cls"] + got["cls_fss"] + got["cam_fss"] + got["cls_mpc"] + got["cam_mpc"]
    assert torch.equal(got["total"], total)
    assert (got["cam_fss"] > 0) == (epoch > 2) and (got["cam_mpc"] > 0) == (epoch >= 3)


def test_an_objective_with_one_more_term_needs_no_other_change():
    """Adding a term is ``TERMS`` and ``losses``: the total follows."""
    class WithExtra(PCSSObjective):
        TERMS = PCSSObjective.TERMS + ("extra",)

        def losses(self, net, images, labels, epoch, masks, perm):
            L = super().losses(net, images, labels, epoch, masks, perm)
            L["extra"] = L["cls"].new_tensor(0.25)
            del L["total"]
            from models.pcss import sum_terms
            L["total"] = sum_terms(L, self.TERMS)
            return L

    net = small()
    x, y, masks = batch()
    L = WithExtra(w_fss=0, w_mpc=0).losses(net, x, y, 0, None, None)
    assert list(L) == ["cls", "cls_fss", "cam_fss", "cls_mpc", "cam_mpc", "extra", "total"]
    assert torch.equal(L["total"], L["cls"] + 0.25)


@pytest.mark.parametrize("depth,block", [(12, 7), (4, 2), (6, 4), (24, 14), (3, 1)])
def test_mpc_block_default_per_depth(depth, block):
    assert PCSSObjective.default_mpc_block(depth) == block
    assert PCSSObjective.for_network(depth).mpc_block == block
    assert PCSSObjective.for_network(depth, mpc_block=0, w_fss=1.0).mpc_block == 0


@pytest.mark.parametrize("options,message", [
    (dict(mpc_block=4), "mpc_block 4 is outside 0..3"),
    (dict(mpc_block=-1), "mpc_block -1 is outside 0..3"),
    (dict(w_fss=-1.0), "w_fss -1.0 is negative"),
    (dict(w_mpc=-0.5), "w_mpc -0.5 is negative"),
    (dict(mpc_keep_ratio=1.5), "mpc_keep_ratio 1.5 is outside 0..1"),
    (dict(fim_interval=0), "fim_interval 0 is below 1"),
    (dict(fim_start_epoch=-2), "fim_start_epoch -2 is negative"),
    (dict(mpc_cam_start_epoch=-1), "mpc_cam_start_epoch -1 is negative"),
])
def test_invalid_options_are_value_errors_that_name_them(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PCSSObjective.for_network(4, **options)


def test_options_are_frozen_and_the_old_name_still_imports():
    objective = PCSSObjective()
    with pytest.raises(FrozenInstanceError):
        objective.w_fss = 0.0
    assert PCSSConfig is PCSSObjective
    assert PCSSObjective.option_names() == (
        "w_fss", "w_mpc", "mpc_block", "mpc_keep_ratio", "fim_start_epoch", "fim_interval",
        "mpc_cam_start_epoch", "reuse_prefix")


def test_prepare_freezes_the_final_norm_only():
    net = small()
    assert PCSSObjective().prepare(net) is net
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"norm.weight", "norm.bias"}


def test_schedule_switches():
    objective = PCSSObjective(fim_start_epoch=2, fim_interval=3)
    assert [objective.uses_fss(e) for e in range(5)] == [False, False, False, True, True]
    assert [e for e in range(12) if objective.fim_due(e)] == [2, 5, 8, 11]
    off = PCSSObjective(w_fss=0.0, w_mpc=0.0)
    assert not any(off.uses_fss(e) or off.fim_due(e) for e in range(12))
    assert off.draw_perm(4) is None
    torch.manual_seed(3)
    perm = objective.draw_perm(6)
    torch.manual_seed(3)
    assert torch.equal(perm, torch.randperm(6))


def test_the_flags_give_every_option_by_name():
    """The seed parser has one flag per option whose dest is the option's name (``--W``
    sets both weights), so train_PCSS.py builds the objective without naming them."""
    from utils.args import train_parent

    args = train_parent().parse_args(["--W", "1", "0.5", "--mpc_idx", "3"])
    options = {f: getattr(args, f) for f in PCSSObjective.option_names()}
    assert options["w_fss"] == 1.0 and options["w_mpc"] == 0.5 and options["mpc_block"] == 3
    assert "W" not in vars(args)
    assert PCSSObjective.for_network(12, **options).mpc_block == 3


def test_invalid_flags_name_the_flags():
    from utils.args import from_flags, train_parent
    from utils.errors import UserError

    parser = train_parent()
    args = parser.parse_args(["--mpc_idx", "9", "--fim_interval_epo", "0"])
    with pytest.raises(UserError, match=r"--mpc_idx 9 is outside 0\.\.3"):
        from_flags(lambda **o: PCSSObjective.for_network(4, **o),
                   PCSSObjective.option_names(), args, parser)
    args = parser.parse_args(["--fim_interval_epo", "0"])
    with pytest.raises(UserError, match="--fim_interval_epo 0 is below 1"):
        from_flags(lambda **o: PCSSObjective.for_network(4, **o),
                   PCSSObjective.option_names(), args, parser)


def test_readme_lists_exactly_the_seed_log_fields():
    """The README's line on log.txt names the objective's terms, in order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    found = re.search(r"log\.txt\s+one JSON line per epoch: (.*?)\[", text, flags=re.S)
    assert found, "README.md: the log.txt line of the output layout"
    fields = [f.strip() for f in found.group(1).split(",") if f.strip()]
    assert fields == ["epoch", "lr"] + [f"loss_{t}" for t in PCSSObjective.TERMS]
