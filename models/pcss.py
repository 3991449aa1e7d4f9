"""The PCSS training objective (docs/method.md, Objective): its options, its loss terms and
the method decisions that go with them."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from wsss.cam import max_norm
from wsss.frequency import mix_magnitude, suppress_frequencies


@dataclass(frozen=True)
class PCSSObjective:
    """The PCSS objective: its options (named as ``pcss_losses`` names them), its loss
    terms ``TERMS`` and the decisions that follow from the options.

    The reference's flags map to the options in the parser (``--W`` -> ``w_fss, w_mpc``,
    ``--mpc_idx`` -> ``mpc_block``, ``--mpc_org_ratio`` -> ``mpc_keep_ratio``,
    ``--fim_start_epo`` -> ``fim_start_epoch``, ``--fim_interval_epo`` -> ``fim_interval``,
    ``--mpc_cam_start_epo`` -> ``mpc_cam_start_epoch``); each option has a flag whose
    ``dest`` is its name, so a script builds the objective from the parsed flags by name
    (``option_names``). Adding a term is one place: ``TERMS`` and ``losses`` (plus a flag
    for a new option); the training loop logs every term ``losses`` returns.
    """
    TERMS: ClassVar[Tuple[str, ...]] = ("cls", "cls_fss", "cam_fss", "cls_mpc", "cam_mpc")

    w_fss: float = 2.0
    w_mpc: float = 2.0
    mpc_block: int = 7
    mpc_keep_ratio: float = 0.3
    fim_start_epoch: int = 2
    fim_interval: int = 3
    mpc_cam_start_epoch: int = 0
    reuse_prefix: bool = False

    def __post_init__(self):
        problems = [f"{name} {getattr(self, name)} {why}" for name, bad, why in (
            ("w_fss", self.w_fss < 0, "is negative (0 turns shortcut suppression off)"),
            ("w_mpc", self.w_mpc < 0, "is negative (0 turns phase concentration off)"),
            ("mpc_block", self.mpc_block < 0, "is negative (a block index)"),
            ("mpc_keep_ratio", not 0 <= self.mpc_keep_ratio <= 1, "is outside 0..1 (the "
             "share of an image's own magnitude in the mix)"),
            ("fim_start_epoch", self.fim_start_epoch < 0, "is negative (an epoch)"),
            ("fim_interval", self.fim_interval < 1, "is below 1 (epochs between FIM "
             "rounds)"),
            ("mpc_cam_start_epoch", self.mpc_cam_start_epoch < 0, "is negative (an epoch)"),
        ) if bad]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def option_names(cls) -> Tuple[str, ...]:
        """The options, in order: the parser ``dest`` of each one's flag."""
        return tuple(f.name for f in fields(cls))

    @staticmethod
    def default_mpc_block(depth: int) -> int:
        """The block after which magnitudes mix, for a network of ``depth`` blocks: 7 for
        the 12-block DeiTs (the paper), ``round(7 * depth / 12)`` for other depths, at
        most ``depth - 2`` so that blocks remain after the mix (2 for the 4-block toy)."""
        return min(round(7 * depth / 12), depth - 2)

    @classmethod
    def for_network(cls, depth: int, mpc_block: Optional[int] = None,
                    **options) -> "PCSSObjective":
        """The objective for a network of ``depth`` blocks: ``mpc_block`` None takes
        ``default_mpc_block(depth)``; a ``ValueError`` for a block the network lacks or an
        invalid option."""
        if mpc_block is None:
            mpc_block = cls.default_mpc_block(depth)
        if not 0 <= mpc_block < depth:
            raise ValueError(f"mpc_block {mpc_block} is outside 0..{depth - 1} for a "
                             f"network of {depth} blocks")
        return cls(mpc_block=mpc_block, **options)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The method's decision on the network before training: the final norm is never
        applied (the heads read the tokens before it, as in MCTformer), so its parameters
        stay frozen. Returns ``model``."""
        model.norm.requires_grad_(False)
        return model

    def uses_fss(self, epoch: int) -> bool:
        """Shortcut suppression in epoch ``epoch``? From the epoch after the first FIM
        round on (VOC: from epoch 3)."""
        return self.w_fss > 0 and epoch > self.fim_start_epoch

    def uses_mpc(self) -> bool:
        """Magnitude mixing (phase concentration) at all?"""
        return self.w_mpc > 0

    def fim_due(self, epoch: int) -> bool:
        """FIM round after this epoch? (VOC: after epochs 2, 5, 8, ...)"""
        return (self.w_fss > 0 and epoch >= self.fim_start_epoch
                and epoch % self.fim_interval == self.fim_start_epoch % self.fim_interval)

    def draw_perm(self, batch: int) -> Optional[torch.Tensor]:
        """The batch permutation of magnitude mixing (``torch.randperm``, drawn before the
        forward pass as the reference does), None when mixing is off."""
        return torch.randperm(batch) if self.uses_mpc() else None

    def losses(self, net, images: torch.Tensor, labels: torch.Tensor, epoch: int,
               masks: Optional[torch.Tensor], perm: Optional[torch.Tensor]
               ) -> Dict[str, torch.Tensor]:
        """Every term of ``TERMS`` for one batch at epoch ``epoch`` (absent terms 0) and
        ``total``, their sum in ``TERMS`` order (docs/method.md, Objective). ``masks``: the
        C x S x S FIM masks (used when ``uses_fss(epoch)``); ``perm``: the batch permutation
        of MPC (``draw_perm``; None draws one after the first pass).

        The magnitude-mixed pass repeats blocks 0..k of the first pass on the same input. As
        in the reference it draws fresh stochastic-depth masks there, but it recomputes only
        the images whose masks differ from the first pass's (``models.prefix_sharing``): the
        same values, gradients and random draws as recomputing everything, for a fraction of
        the work. ``reuse_prefix`` takes the first pass's tokens as they are, with no fresh
        masks: faster still, identical when drop path is 0, not the reference otherwise.
        """
        use_fss = self.uses_fss(epoch)
        use_mpc = self.uses_mpc()
        use_cam_mpc = use_mpc and epoch >= self.mpc_cam_start_epoch
        # ``net`` may be wrapped (DDP); its forward takes the same arguments.
        out = net(images, merge_block=self.mpc_block if use_mpc else None,
                  need_rcams=use_cam_mpc)
        zero = out["cls"].new_zeros(())
        L = {name: zero for name in self.TERMS}
        L["cls"] = _mlsm(out, labels)

        if use_fss:
            if masks is None:
                raise ValueError("frequency shortcut suppression is on but no FIM masks were "
                                 "given")
            images_s, valid = suppress_frequencies(images, labels, masks)
            out_s = net(images_s, merge_block=None, need_rcams=False)
            L["cls_fss"] = _mlsm(out_s, labels)
            diff = (max_norm(out["cams"]) - max_norm(out_s["cams"])).abs()
            L["cam_fss"] = self.w_fss * (diff * valid.reshape(-1, 1, 1, 1)).mean()

        if use_mpc:
            if perm is None:
                perm = torch.randperm(images.shape[0])
            mag = mix_magnitude(out["x_patch"], perm, self.mpc_keep_ratio)
            out_m = net(images, merge_block=self.mpc_block, mag=mag, need_rcams=use_cam_mpc,
                        prefix=out["state"], fresh_drop_path=not self.reuse_prefix)
            L["cls_mpc"] = _mlsm(out_m, labels)
            if use_cam_mpc:
                diff = (max_norm(out["rcams"]).detach() - max_norm(out_m["rcams"])).abs()
                L["cam_mpc"] = self.w_mpc * diff.mean()

        L["total"] = sum_terms(L, self.TERMS)
        return L


PCSSConfig = PCSSObjective


def sum_terms(terms: Dict[str, torch.Tensor], names: Tuple[str, ...]) -> torch.Tensor:
    """``terms[names[0]] + terms[names[1]] + ...``, added left to right."""
    total = terms[names[0]]
    for name in names[1:]:
        total = total + terms[name]
    return total


def _mlsm(out: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Class-token and patch-head multi-label soft-margin losses, summed."""
    return (F.multilabel_soft_margin_loss(out["cls"], labels)
            + F.multilabel_soft_margin_loss(out["pcls"], labels))


def pcss_losses(net, images: torch.Tensor, labels: torch.Tensor, epoch: int,
                masks: Optional[torch.Tensor], perm: Optional[torch.Tensor],
                w_fss: float, w_mpc: float, mpc_block: int, mpc_keep_ratio: float,
                fim_start_epoch: int = 2, mpc_cam_start_epoch: int = 0,
                reuse_prefix: bool = False) -> Dict[str, torch.Tensor]:
    """All PCSS loss terms for one batch at epoch ``epoch``: ``PCSSObjective.losses`` with
    these options. Returns a dict of scalar tensors ``cls, cls_fss, cam_fss, cls_mpc,
    cam_mpc, total`` (absent terms are 0). ``masks``: the C x S x S FIM masks (used when
    FSS is on); ``perm``: the batch permutation of MPC (``torch.randperm(B)`` in
    training)."""
    return PCSSObjective(w_fss=w_fss, w_mpc=w_mpc, mpc_block=mpc_block,
                         mpc_keep_ratio=mpc_keep_ratio, fim_start_epoch=fim_start_epoch,
                         mpc_cam_start_epoch=mpc_cam_start_epoch,
                         reuse_prefix=reuse_prefix).losses(net, images, labels, epoch, masks,
                                                           perm)
