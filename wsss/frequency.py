"""Fourier-domain operations of PCSS (ECCV 2024), as the authors' code computes them.

* ``replace_magnitude`` / ``mix_magnitude``: magnitude-mixing phase concentration (MPC).
* ``suppress_frequencies``: frequency shortcut suppression (FSS) of training images.
* ``FrequencyInfluence``: the per-class frequency influence map (FIM) and its masks.

FFTs always run in float32 or wider: under autocast their inputs are promoted to float32.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

_DIMS = (-2, -1)
IMAGES_PER_FORWARD = {"cpu": 8, "cuda": 64}   # FIM forward size when not set (bench/README.md)


def _fft_dtype(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors are promoted to float32 before an FFT."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def replace_magnitude(x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """``real(ifft2(mag * exp(i*angle(fft2(x)))))`` over the last two dims, in x's dtype."""
    with _no_autocast(x.device.type):
        phase = torch.angle(torch.fft.fft2(_fft_dtype(x), dim=_DIMS))
        out = torch.fft.ifft2(_fft_dtype(mag) * torch.exp(1j * phase), dim=_DIMS).real
    return out.to(x.dtype)


def mix_magnitude(x_patch: torch.Tensor, perm: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """``r*|fft2(X)| + (1-r)*|fft2(X[perm])|.detach()`` (first term keeps its gradient;
    docs/method.md, Magnitude mixing)."""
    with _no_autocast(x_patch.device.type):
        amp = torch.fft.fft2(_fft_dtype(x_patch), dim=_DIMS).abs()
    perm = perm.to(amp.device)
    return keep_ratio * amp + (1.0 - keep_ratio) * amp[perm].detach()


def _centred_spectrum(images: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(images, dim=_DIMS), dim=_DIMS)


def _from_centred(spec: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=_DIMS), dim=_DIMS).real


def suppress_frequencies(images: torch.Tensor, labels: torch.Tensor,
                         masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """FSS images (docs/method.md, Frequency shortcut suppression): for image b, the mean
    over its classes c of the image with the frequencies ``masks[c]`` (centred spectrum)
    removed. Images without any label pass unchanged. Returns ``(images2, valid)`` with
    ``valid`` B floats (0 for no label).

    The mean over classes is taken on the spectral filter (the operation is linear), so
    one FFT pair per image suffices, for the whole batch at once.
    """
    B, _, H, W = images.shape
    if masks.shape[-2:] != (H, W):
        raise ValueError(f"masks are {tuple(masks.shape[-2:])} but images are {(H, W)}")
    with _no_autocast(images.device.type):
        x = _fft_dtype(images)
        present = (labels > 0).to(x.dtype)                           # B x C
        count = present.sum(1)                                        # B
        valid = (count > 0).to(x.dtype)
        keep = (1.0 - masks.to(device=x.device, dtype=x.dtype)).reshape(masks.shape[0], -1)
        filt = (present @ keep) / count.clamp(min=1).unsqueeze(1)     # B x HW
        filtered = _from_centred(_centred_spectrum(x) * filt.reshape(B, 1, H, W))
        out = torch.where(valid.reshape(B, 1, 1, 1) > 0, filtered, x)
    return out.to(images.dtype), valid.to(images.dtype)


def influence_cells(grid: int) -> List[Tuple[Tuple[int, int], Optional[Tuple[int, int]]]]:
    """The FIM loop: cells (r, c), r in 0..G-1, c in 0..G//2, each with its conjugate
    partner block (None in column 0)."""
    cells = []
    for r in range(grid):
        for c in range(grid // 2 + 1):
            if c == 0:
                partner = None
            elif r == 0:
                partner = (0, grid - c)
            else:
                partner = (grid - r, grid - c)
            cells.append(((r, c), partner))
    return cells


class FrequencyInfluence:
    """Per-class frequency influence map (docs/method.md, Frequency influence maps).

    Usage per round: ``start_round()``; ``accumulate(net, images, labels)`` per batch until
    it returns True (every class used its budget) or the data runs out; ``finish_round()``
    returns the C x S x S masks.

    Masked variants of the needed images go through the network together:
    ``cells_per_forward`` cells per forward, or by default as many cells as keep a forward
    near ``images_per_forward`` images (8 on CPU, where bigger batches only add memory
    traffic; 64 on GPU). ``shard=(rank, world)`` lets several processes share a round: each
    computes the losses of its share of the cells and ``reduce`` (e.g. an all-reduce sum)
    combines them, so every process ends with the same masks.
    """

    def __init__(self, num_classes: int, image_size: int, patch_size: int = 16,
                 images_per_class: int = 100, cells_per_forward: Optional[int] = None,
                 shard: Tuple[int, int] = (0, 1),
                 reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of {patch_size}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.images_per_class = images_per_class
        self.cells_per_forward = cells_per_forward
        self.shard = shard
        self.reduce = reduce
        self.cells = influence_cells(self.grid)
        self.writer = self._last_writer()
        C, S, G = num_classes, image_size, self.grid
        self.masks = torch.zeros(C, S, S, dtype=torch.float64)
        self.max_loss = torch.zeros(C, dtype=torch.float64)
        self.loss_matrix = torch.zeros(C, G, G, dtype=torch.float64)
        self.rounds = 0
        self.budget = torch.zeros(C, dtype=torch.long)
        self.used = torch.zeros(C, dtype=torch.long)

    # ------------------------------------------------------------------ cell geometry
    def _last_writer(self) -> torch.Tensor:
        """G*G index of the cell whose loss ends in each matrix position (later writes
        in loop order overwrite earlier ones); -1 where nothing writes."""
        G = self.grid
        writer = torch.full((G * G,), -1, dtype=torch.long)
        for i, ((r, c), partner) in enumerate(self.cells):
            writer[r * G + c] = i
            if partner is not None:
                writer[partner[0] * G + partner[1]] = i
        return writer

    def cell_mask(self, i: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """S x S mask of cell ``i``: ones with zeros on the block and its partner."""
        S, p = self.image_size, self.patch_size
        m = torch.ones(S, S, dtype=dtype, device=device)
        (r, c), partner = self.cells[i]
        m[p * r:p * (r + 1), p * c:p * (c + 1)] = 0
        if partner is not None:
            pr, pc = partner
            m[p * pr:p * (pr + 1), p * pc:p * (pc + 1)] = 0
        return m

    # ------------------------------------------------------------------------ rounds
    def start_round(self) -> None:
        self.budget = torch.full((self.num_classes,), self.images_per_class, dtype=torch.long)
        self.used = torch.zeros(self.num_classes, dtype=torch.long)
        self.loss_matrix = torch.zeros_like(self.loss_matrix)

    @property
    def done(self) -> bool:
        return bool((self.budget <= 0).all())

    def _selection(self, labels: torch.Tensor) -> torch.Tensor:
        """B x C bool: image b counts for class k (first ``budget[k]`` holders of k)."""
        has = labels.detach().cpu() > 0
        rank = has.long().cumsum(0)                      # 1-based rank among holders
        return has & (rank <= self.budget.unsqueeze(0))

    @torch.no_grad()
    def accumulate(self, net, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """Add one batch (deterministically transformed images, B x C labels) to the
        round. Returns True once every class has used its budget."""
        if self.done:
            return True
        sel = self._selection(labels)                    # B x C (cpu)
        need = sel.any(1).nonzero().flatten()            # images some class still needs
        if need.numel():
            self.loss_matrix += self._batch_matrix(net, images[need.to(images.device)],
                                                   sel[need])
        n = sel.sum(0)
        self.used += n
        self.budget -= n
        return self.done

    def _batch_matrix(self, net, images: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        """C x G x G loss matrix of one batch (only the needed images, ``sel`` n x C)."""
        n = images.shape[0]
        ncell = len(self.cells)
        rank, world = self.shard
        mine = list(range(rank, ncell, world))
        losses = torch.zeros(self.num_classes, ncell, dtype=torch.float64)
        weights = sel.to(torch.float64)                  # n x C
        with _no_autocast(images.device.type):
            x = _fft_dtype(images)
            spec = _centred_spectrum(x)
        target = IMAGES_PER_FORWARD.get(images.device.type, 8)
        step = self.cells_per_forward or max(1, target // n)
        for start in range(0, len(mine), step):
            chunk = mine[start:start + step]
            masks = torch.stack([self.cell_mask(i, x.dtype, x.device) for i in chunk])
            with _no_autocast(images.device.type):
                variants = _from_centred(spec.unsqueeze(0) * masks[:, None, None])
            variants = variants.reshape(len(chunk) * n, *images.shape[1:]).to(images.dtype)
            cls, pcls = net.logits(variants)
            per_image = (F.softplus(-cls.double()) + F.softplus(-pcls.double()))
            per_image = per_image.reshape(len(chunk), n, -1).cpu()   # cells x n x C
            losses[:, chunk] = torch.einsum("inc,nc->ci", per_image, weights)
        if self.reduce is not None and world > 1:
            losses = self.reduce(losses)
        G = self.grid
        matrix = torch.zeros(self.num_classes, G * G, dtype=torch.float64)
        written = self.writer >= 0
        matrix[:, written] = losses[:, self.writer[written]]
        return matrix.reshape(self.num_classes, G, G)

    def finish_round(self) -> torch.Tensor:
        """Turn the round's loss matrix into masks (C x S x S, float64) and return them."""
        S = self.image_size
        lmap = F.interpolate(self.loss_matrix.unsqueeze(0), size=(S, S), mode="bicubic",
                             align_corners=False)[0]
        flat = lmap.reshape(self.num_classes, -1)
        top, low = flat.max(1).values, flat.min(1).values
        self.max_loss = top if self.rounds == 0 else torch.maximum(self.max_loss, top)
        denom = (self.max_loss - low).reshape(-1, 1, 1)
        safe = torch.where(denom == 0, torch.ones_like(denom), denom)
        new = torch.where(denom == 0, torch.zeros_like(lmap), (lmap - low.reshape(-1, 1, 1)) / safe)
        got = (self.used > 0).reshape(-1, 1, 1)
        self.masks = torch.where(got, new, self.masks)
        self.rounds += 1
        return self.masks

    # -------------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"masks": self.masks, "max_loss": self.max_loss, "loss_matrix": self.loss_matrix,
                "rounds": torch.tensor(self.rounds)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        C, S = self.num_classes, self.image_size
        if tuple(state["masks"].shape) != (C, S, S):
            raise ValueError(f"FIM masks in the checkpoint are {tuple(state['masks'].shape)}, "
                             f"this run needs {(C, S, S)} (other --input-size or classes?)")
        self.masks = state["masks"].double().cpu()
        self.max_loss = state["max_loss"].double().cpu()
        self.loss_matrix = state["loss_matrix"].double().cpu()
        self.rounds = int(state["rounds"])
