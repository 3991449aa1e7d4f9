"""DeiT with C class tokens (MCTformer-V2 style), as PCSS uses it (docs/method.md, Network).

Layout follows timm's ``vision_transformer.py``: the blocks (``PatchEmbed``, ``Mlp``,
``Attention``, ``Block``), then the model, then the constructors. The model's paths:

- ``forward_features(x)``: patch embedding + class tokens + positions, all blocks; returns
  a ``TokenState`` (tokens, grid size, per-block head-averaged attention when asked). There
  is no final norm (MCTformer never applies it); ``norm`` exists only so state dicts match.
- ``forward_head(tokens)``: class-token logits ``cls``, the 3x3 conv head's CAMs ``cams``
  and their spatial mean ``pcls``; ``refine`` turns CAMs + attention into ``rcams``.
- ``forward(x, merge_block, mag)``: the training pass with the magnitude-mixing hook after
  block ``merge_block`` (docs/method.md, Magnitude mixing); ``logits(x)`` and ``rcams(x)``:
  the FIM and inference paths.

Attention probabilities are materialised only where something reads them (``rcams``); the
other paths use ``F.scaled_dot_product_attention``. The machinery that lets the mixed pass
share blocks 0..k with the first pass lives in ``models.prefix_sharing``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.prefix_sharing import BlockTrace, DropPath, rerun_prefix, traced_block_forward
from models.registry import ARCHS
from wsss.frequency import replace_magnitude


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm's ``trunc_normal_(t, std=std)``: truncation at +-2 (absolute), not +-2 std."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0, b=2.0)


class PatchEmbed(nn.Module):
    """16x16 stride-16 convolution; a border of fewer than 16 pixels is dropped."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # B x D x h x w


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _attention_with_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(q kᵀ scale) v, head mean of the softmax)`` without gradients on CPU.

    Scaling q (N x d) instead of the scores (N x N) is less work, and bit-identical when the
    scale is a power of two (head size 64). The softmax runs in place (a private aten op:
    the public softmax has no out= form): not touching a fresh 13 MB buffer per block saves
    page faults, so cam_dict on a 375x500 image with flip takes 0.34 s instead of 0.42 s
    (1.21x; 2-core Xeon with AMX, float32; bench/bench_core.py softmax).
    """
    attn = (q * scale) @ k.transpose(-2, -1)
    torch.ops.aten._softmax.out(attn, -1, False, out=attn)
    return attn @ v, attn.mean(dim=1)


# The same kernels as a custom op, for compiled code (models.compile): it calls this kernel
# sequence as it is instead of re-deriving the softmax (which ran 7 % slower per block
# there). Eager code calls the function itself: the op's dispatcher imports torch._dynamo
# on its first call, 1-1.5 s of start-up for every inference process.
cpu_attention_with_weights = torch.library.custom_op(
    "pcss::cpu_attention_with_weights", _attention_with_weights, mutates_args=())


@cpu_attention_with_weights.register_fake
def _(q, k, v, scale):
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1]), q.new_empty(B, N, k.shape[-2])


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """Returns ``(out, weights)``; ``weights`` is the head-averaged softmax (B x N x N)
        when ``need_weights``, else None (and the fused SDPA kernel is used)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if need_weights and x.device.type == "cpu" and not torch.is_grad_enabled():
            attend = (cpu_attention_with_weights if torch.compiler.is_compiling()
                      else _attention_with_weights)
            out, weights = attend(q, k, v, self.scale)
        elif need_weights:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
            weights = attn.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
            weights = None
        out = out.transpose(1, 2).reshape(B, N, D)
        return self.proj(out), weights


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attn_branch(self, x: torch.Tensor, need_weights: bool = False):
        """``(attn(norm1(x)), weights)``: the attention branch before drop path."""
        return self.attn(self.norm1(x), need_weights)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``mlp(norm2(x))``: the MLP branch before drop path."""
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """``(x, weights)``: weights are the head-averaged attention when asked, else None.
        (``models.prefix_sharing.traced_block_forward`` is the same computation, recorded;
        ``models.compile`` compiles the two branches, drop path staying outside.)"""
        fa, weights = self.attn_branch(x, need_weights)
        x = x + self.drop_path(fa)
        x = x + self.drop_path(self.mlp_branch(x))
        return x, weights


@dataclass
class TokenState:
    """The tokens after some block, with what ``rcams`` needs from the blocks so far.

    ``attn`` holds the head-averaged attention of every block run so far (None entries
    when weights were not requested). ``embedded`` (the tokens entering block 0) and
    ``trace`` (one ``BlockTrace`` per block run, when traced) let a second pass over the
    same input share blocks 0..k with this one (``MCTViT.forward(..., prefix=state)``).
    """
    tokens: torch.Tensor
    h: int
    w: int
    next_block: int
    attn: List[Optional[torch.Tensor]] = field(default_factory=list)
    embedded: Optional[torch.Tensor] = None
    trace: Optional[List[BlockTrace]] = None


class MCTViT(nn.Module):
    """DeiT with ``num_classes`` class tokens and a 3x3 conv head on the patch tokens."""

    def __init__(self, num_classes: int = 20, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.1):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, num_classes, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_classes + self.grid ** 2, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, drop_path=dpr[i]) for i in range(depth)])
        # Unused (no final norm is applied) but kept so state dicts match the reference.
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Conv2d(embed_dim, num_classes, kernel_size=3, stride=1, padding=1)
        self._init_weights()

    # ----------------------------------------------------------------------------- init
    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # the conv head keeps PyTorch's default Conv2d initialisation

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    # ------------------------------------------------------------------------ features
    def interpolate_pos_encoding(self, npatch: int, H: int, W: int) -> torch.Tensor:
        C, G = self.num_classes, self.grid
        if npatch == G * G and H == W:
            return self.pos_embed
        cls_pos = self.pos_embed[:, :C]
        grid = self.pos_embed[:, C:].reshape(1, G, G, -1).permute(0, 3, 1, 2)
        h0, w0 = H // self.patch_size + 0.1, W // self.patch_size + 0.1
        grid = F.interpolate(grid, scale_factor=(h0 / G, w0 / G), mode="bicubic",
                             align_corners=False)
        if grid.shape[-2:] != (int(h0), int(w0)):
            raise RuntimeError(f"positional grid resampled to {tuple(grid.shape[-2:])}, "
                               f"expected {(int(h0), int(w0))}")
        return torch.cat([cls_pos, grid.flatten(2).transpose(1, 2)], dim=1)

    def embed(self, x: torch.Tensor) -> TokenState:
        B, _, H, W = x.shape
        p = self.patch_embed(x)
        h, w = p.shape[-2:]
        p = p.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), p], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h * w, H, W)
        return TokenState(tokens, h, w, 0, embedded=tokens)

    def tokens_to_map(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Patch tokens B x (C+P) x D -> B x D x h x w (row-major token order)."""
        B, _, D = tokens.shape
        return tokens[:, self.num_classes:].transpose(1, 2).reshape(B, D, h, w)

    def run_blocks(self, state: TokenState, stop: Optional[int] = None,
                   need_weights: bool = False, trace: bool = False) -> TokenState:
        """Run blocks ``state.next_block .. stop`` (inclusive; all when ``stop`` is None),
        recording a ``BlockTrace`` per block when ``trace``."""
        last = len(self.blocks) - 1 if stop is None else stop
        x, attn = state.tokens, list(state.attn)
        traces = list(state.trace or []) if trace else None
        for i in range(state.next_block, last + 1):
            if traces is None:
                x, a = self.blocks[i](x, need_weights)
            else:
                x, a = traced_block_forward(self.blocks[i], x, need_weights, traces)
            attn.append(a)
        return TokenState(x, state.h, state.w, last + 1, attn, state.embedded, traces)

    def forward_features(self, x: torch.Tensor, need_weights: bool = False) -> TokenState:
        """Tokens after the last block (no final norm, as in MCTformer), with the per-block
        head-averaged attention when ``need_weights``."""
        return self.run_blocks(self.embed(x), None, need_weights)

    def mix_tokens(self, state: TokenState, mag: torch.Tensor) -> TokenState:
        """Replace the patch tokens' Fourier magnitude by ``mag`` (phase kept)."""
        C = self.num_classes
        patches = replace_magnitude(self.tokens_to_map(state.tokens, state.h, state.w), mag)
        tokens = torch.cat([state.tokens[:, :C], patches.flatten(2).transpose(1, 2)], dim=1)
        return TokenState(tokens, state.h, state.w, state.next_block, state.attn)

    # --------------------------------------------------------------------------- heads
    def forward_head(self, tokens: torch.Tensor, h: int, w: int) -> Dict[str, torch.Tensor]:
        """``cls`` (mean of each class token), ``cams`` (ReLU of the conv head on the patch
        grid) and ``pcls`` (the spatial mean of the conv head's output)."""
        C = self.num_classes
        cls = tokens[:, :C].mean(-1)
        fmap = self.head(self.tokens_to_map(tokens, h, w))
        return {"cls": cls, "pcls": fmap.mean(dim=(2, 3)), "cams": F.relu(fmap)}

    def refine(self, cams: torch.Tensor, attn: List[torch.Tensor], n_layers: int = 12):
        """``rcams`` from the conv CAMs and the per-block head-averaged attention."""
        C = self.num_classes
        B, _, h, w = cams.shape
        last = attn[-n_layers:] if n_layers > 0 else attn
        mtatt = (sum(a[:, :C, C:] for a in last) / len(last)).reshape(B, C, h, w)
        patch_attn = sum(a[:, C:, C:] for a in attn)  # B x P x P (a sum, not a mean)
        weighted = (mtatt * cams).reshape(B, C, h * w)
        return torch.matmul(weighted, patch_attn.transpose(1, 2)).reshape(B, C, h, w)

    # ------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, merge_block: Optional[int] = None,
                mag: Optional[torch.Tensor] = None, need_rcams: bool = True,
                prefix: Optional[TokenState] = None, fresh_drop_path: bool = True
                ) -> Dict[str, Optional[torch.Tensor]]:
        """PCSS forward (docs/method.md, Network).

        Returns a dict with ``cls``, ``pcls``, ``cams``, ``rcams`` (None if not
        ``need_rcams``), ``x_patch`` (patch tokens after block ``merge_block``; None when
        it is None) and ``state`` (the traced tokens after block ``merge_block``, before
        mixing). With ``mag``, the patch tokens entering block ``merge_block + 1`` get that
        Fourier magnitude.

        ``prefix``: the ``state`` of an earlier forward of the same ``x`` with the same
        ``merge_block``; blocks 0..merge_block are then shared with it instead of being
        recomputed. With ``fresh_drop_path`` (the reference's semantics) new stochastic-depth
        masks are drawn for those blocks and only the rows they change are recomputed
        (``models.prefix_sharing.rerun_prefix``: identical results, less work); without, the
        earlier pass's tokens are taken as they are (faster; differs from the reference when drop path is on).
        """
        if mag is not None and merge_block is None:
            raise ValueError("mag given without merge_block")
        if prefix is not None:
            if merge_block is None or prefix.next_block != merge_block + 1:
                raise ValueError("prefix needs the state saved after block merge_block")
            if fresh_drop_path:
                state = rerun_prefix(self.blocks, prefix, need_rcams)
            else:
                if need_rcams and any(a is None for a in prefix.attn):
                    raise ValueError("the prefix has no attention weights but rcams were asked")
                state = prefix
        else:
            state = self.embed(x)
            if merge_block is not None:  # traced for a later pass sharing the prefix
                state = self.run_blocks(state, merge_block, need_rcams, trace=mag is None)
        saved = state if merge_block is not None else None
        x_patch = (self.tokens_to_map(state.tokens, state.h, state.w)
                   if saved is not None else None)
        if mag is not None:
            state = self.mix_tokens(state, mag)
        state = self.run_blocks(state, None, need_rcams)
        out = self.forward_head(state.tokens, state.h, state.w)
        out["rcams"] = self.refine(out["cams"], state.attn) if need_rcams else None
        out["x_patch"] = x_patch
        out["state"] = saved
        return out

    def logits(self, x: torch.Tensor):
        """``(cls, pcls)`` only: no attention weights are materialised."""
        state = self.forward_features(x)
        out = self.forward_head(state.tokens, state.h, state.w)
        return out["cls"], out["pcls"]

    def rcams(self, x: torch.Tensor, n_layers: int = 12) -> torch.Tensor:
        """Attention-refined CAMs ``B x C x h x w`` (the seed-inference path)."""
        state = self.forward_features(x, need_weights=True)
        cams = self.forward_head(state.tokens, state.h, state.w)["cams"]
        return self.refine(cams, state.attn, n_layers)


def build_model(num_classes: int = 20, img_size: int = 224, embed_dim: int = 384,
                depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1,
                patch_size: int = 16, mlp_ratio: float = 4.0) -> MCTViT:
    """DeiT-S with ``num_classes`` class tokens (defaults: the paper's VOC model)."""
    return MCTViT(num_classes=num_classes, img_size=img_size, patch_size=patch_size,
                  embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                  mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate)


def build_arch(arch: str, num_classes: int, img_size: int = 224,
               drop_path_rate: float = 0.1) -> MCTViT:
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {sorted(ARCHS)}")
    return build_model(num_classes=num_classes, img_size=img_size,
                       drop_path_rate=drop_path_rate, **ARCHS[arch])
