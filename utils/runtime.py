"""Device choice, seeding and mixed precision (timm's one-switch habit)."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from utils.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present (the local rank's GPU under torchrun), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but no GPU is visible; "
                        f"use --device cpu (or auto)")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, amp: str = "none"):
    """``nullcontext`` for ``none``, else ``torch.autocast`` in bf16 / fp16. FFTs inside
    the model promote to float32 themselves (wsss.frequency)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise UserError(f"--amp {amp!r}: choose none, bf16 or fp16")
    if device.type == "cpu" and amp == "fp16":
        raise UserError("--amp fp16 needs a GPU; on CPU use --amp bf16 or none")
    return torch.autocast(device_type=device.type, dtype=dtype)
