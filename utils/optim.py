"""PSA's ``PolyOptimizer`` (``tool/torchutils.py``; MCTformer's ``PolyOptimizer_cls`` is the
same): SGD whose every group's learning rate follows a poly schedule per step
(docs/method.md, Poly SGD)."""
from __future__ import annotations

from typing import Iterable

import torch


class PolySGD(torch.optim.SGD):
    """``torch.optim.SGD`` with the poly schedule: before step t (t = 0, 1, ...), while
    t < ``max_step``, every group's lr = its initial lr x (1 - t / max_step)^``power``;
    from ``max_step`` on the lr stays where it was. Groups carry their own ``lr`` and
    ``weight_decay`` (missing: 0).

    The reference's quirk: it passes its weight-decay argument in SGD's momentum slot, so
    reference-equivalent calls give ``momentum`` = that argument (5e-4 for AffinityNet,
    1e-5 for segmentation) and decay only through the groups that name it. Dampening 0, no
    Nesterov. ``global_step`` counts the steps taken (saved in ``state_dict``)."""

    def __init__(self, params: Iterable, max_step: int, momentum: float = 0.0,
                 power: float = 0.9):
        groups = [dict(g) for g in params]
        for g in groups:
            g.setdefault("weight_decay", 0.0)
        super().__init__(groups, lr=groups[0]["lr"] if groups else 0.0, momentum=momentum)
        self.max_step = max_step
        self.power = power
        self.global_step = 0
        self.initial_lr = [g["lr"] for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        if self.global_step < self.max_step:
            mult = (1 - self.global_step / self.max_step) ** self.power
            for g, lr in zip(self.param_groups, self.initial_lr):
                g["lr"] = lr * mult
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["poly"] = {"global_step": self.global_step, "max_step": self.max_step,
                         "power": self.power, "initial_lr": list(self.initial_lr)}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        poly = state_dict.pop("poly")
        super().load_state_dict(state_dict)
        self.global_step, self.max_step = int(poly["global_step"]), int(poly["max_step"])
        self.power, self.initial_lr = float(poly["power"]), list(poly["initial_lr"])
