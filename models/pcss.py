"""The PCSS training objective (docs/method.md, Objective) and its configuration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from wsss.cam import max_norm
from wsss.frequency import mix_magnitude, suppress_frequencies


@dataclass(frozen=True)
class PCSSConfig:
    """The objective's switches, named as ``pcss_losses`` names them; the
    reference's flags map to them in the parser (``--W`` -> ``w_fss, w_mpc``, ``--mpc_idx``
    -> ``mpc_block``, ``--mpc_org_ratio`` -> ``mpc_keep_ratio``, ``--fim_start_epo`` ->
    ``fim_start_epoch``, ``--fim_interval_epo`` -> ``fim_interval``, ``--mpc_cam_start_epo``
    -> ``mpc_cam_start_epoch``)."""
    w_fss: float = 2.0
    w_mpc: float = 2.0
    mpc_block: int = 7
    mpc_keep_ratio: float = 0.3
    fim_start_epoch: int = 2
    fim_interval: int = 3
    mpc_cam_start_epoch: int = 0
    reuse_prefix: bool = False

    def fim_due(self, epoch: int) -> bool:
        """FIM round after this epoch? (VOC: after epochs 2, 5, 8, ...)"""
        return (self.w_fss > 0 and epoch >= self.fim_start_epoch
                and epoch % self.fim_interval == self.fim_start_epoch % self.fim_interval)

    def losses(self, net, images: torch.Tensor, labels: torch.Tensor, epoch: int,
               masks: Optional[torch.Tensor], perm: Optional[torch.Tensor]
               ) -> Dict[str, torch.Tensor]:
        """``pcss_losses`` with this configuration."""
        return pcss_losses(net, images, labels, epoch, masks, perm, self.w_fss, self.w_mpc,
                           self.mpc_block, self.mpc_keep_ratio, self.fim_start_epoch,
                           self.mpc_cam_start_epoch, reuse_prefix=self.reuse_prefix)


def _mlsm(out: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Class-token and patch-head multi-label soft-margin losses, summed."""
    return (F.multilabel_soft_margin_loss(out["cls"], labels)
            + F.multilabel_soft_margin_loss(out["pcls"], labels))


def pcss_losses(net, images: torch.Tensor, labels: torch.Tensor, epoch: int,
                masks: Optional[torch.Tensor], perm: Optional[torch.Tensor],
                w_fss: float, w_mpc: float, mpc_block: int, mpc_keep_ratio: float,
                fim_start_epoch: int = 2, mpc_cam_start_epoch: int = 0,
                reuse_prefix: bool = False) -> Dict[str, torch.Tensor]:
    """All PCSS loss terms for one batch at epoch ``epoch``.

    Returns a dict of scalar tensors ``cls, cls_fss, cam_fss, cls_mpc, cam_mpc, total``
    (absent terms are 0). ``masks``: the C x S x S FIM masks (used when FSS is on);
    ``perm``: the batch permutation of MPC (``torch.randperm(B)`` in training).

    The magnitude-mixed pass repeats blocks 0..k of the first pass on the same input. As in
    the reference it draws fresh stochastic-depth masks there, but it recomputes only the
    images whose masks differ from the first pass's (``models.prefix_sharing``): the same
    values, gradients and random draws as recomputing everything, for a fraction of the
    work. ``reuse_prefix`` (default off) takes the first pass's tokens as they are, with no
    fresh masks: faster still, identical when drop path is 0, not the reference otherwise.
    """
    use_fss = w_fss > 0 and epoch > fim_start_epoch
    use_mpc = w_mpc > 0
    use_cam_mpc = use_mpc and epoch >= mpc_cam_start_epoch
    # ``net`` may be wrapped (DDP); its forward takes the same arguments.
    out = net(images, merge_block=mpc_block if use_mpc else None, need_rcams=use_cam_mpc)
    zero = out["cls"].new_zeros(())
    L = {"cls": _mlsm(out, labels), "cls_fss": zero, "cam_fss": zero,
         "cls_mpc": zero, "cam_mpc": zero}

    if use_fss:
        if masks is None:
            raise ValueError("frequency shortcut suppression is on but no FIM masks were given")
        images_s, valid = suppress_frequencies(images, labels, masks)
        out_s = net(images_s, merge_block=None, need_rcams=False)
        L["cls_fss"] = _mlsm(out_s, labels)
        diff = (max_norm(out["cams"]) - max_norm(out_s["cams"])).abs()
        L["cam_fss"] = w_fss * (diff * valid.reshape(-1, 1, 1, 1)).mean()

    if use_mpc:
        if perm is None:
            perm = torch.randperm(images.shape[0])
        mag = mix_magnitude(out["x_patch"], perm, mpc_keep_ratio)
        out_m = net(images, merge_block=mpc_block, mag=mag, need_rcams=use_cam_mpc,
                    prefix=out["state"], fresh_drop_path=not reuse_prefix)
        L["cls_mpc"] = _mlsm(out_m, labels)
        if use_cam_mpc:
            diff = (max_norm(out["rcams"]).detach() - max_norm(out_m["rcams"])).abs()
            L["cam_mpc"] = w_mpc * diff.mean()

    L["total"] = L["cls"] + L["cls_fss"] + L["cam_fss"] + L["cls_mpc"] + L["cam_mpc"]
    return L
