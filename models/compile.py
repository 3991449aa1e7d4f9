"""``compile_network``: the PCSS network with its transformer blocks compiled (torch.compile).

What is compiled, and what stays eager (regional compilation):

- compiled (``fullgraph=True``, so no graph break can hide inside): per transformer block,
  the attention branch ``norm1 -> attn`` (with or without the head-averaged weights), the
  MLP branch ``norm2 -> mlp``, and, where no drop-path mask is drawn (eval mode, and the
  blocks with drop path 0), the whole block ``x + attn(..); x + mlp(..)``. These regions
  hold all the GEMMs, attention, LayerNorms and GELUs: nearly all of the time of every path
  (training step, FIM logits, CAM inference). One graph serves all twelve blocks: the block
  is an argument of the compiled function, its parameters graph inputs.
- eager: everything around the blocks. The patch embedding and the positional resampling
  (its bicubic ``scale_factor`` stays exactly the reference's), the heads and the attention
  refinement, the Fourier operations, the drop-path draws (from the global RNG, in the same
  order and on the same shapes as the eager network: the compiler's own RNG would give other
  masks), and the data-dependent row selection of the shared MPC prefix
  (``models.prefix_sharing``). The Python control flow and ``.item()``-style reads of the
  orchestration therefore never break a graph.

Shapes: the batch and token dimensions of a region's input are marked dynamic, so images of
any native size (any token count) and any batch size (FIM chunks, the row subsets of the
shared prefix) reuse one graph per region and mode; sizes 1 are specialised once. The
computation per image is exactly the eager one (no padding of the attention).

The returned network is a new ``MCTViT`` sharing the given network's parameters and buffers
(like ``torch.compile``'s wrapper: the argument stays eager): same class, same state-dict
keys without any ``_orig_mod.`` prefix, ``train()``, ``eval()``, ``double()``,
``load_state_dict()`` behave as usual. Under DistributedDataParallel compile first, then wrap:
``DDP(compile_network(net))`` (the gradient hooks sit on the shared parameters; each block's
backward is its own graph, so bucketed all-reduces still overlap with it).

Measured figures and the recommended default: bench/README.md, "Compiled network".
"""
from __future__ import annotations

import copy
import functools
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from models.mct_vit import Block, MCTViT

__all__ = ["compile_network", "is_compiled"]

# How many graphs one region may hold before dynamo falls back to eager: grad mode, the
# attention weights, dtype (float32 / float64 / autocast), train/eval and the size-1
# specialisations multiply; a run uses a handful, a test suite that tries them all more.
RECOMPILE_LIMIT = 64


def _attn_region(blk: Block, x: torch.Tensor, need_weights: bool):
    return Block.attn_branch(blk, x, need_weights)


def _mlp_region(blk: Block, x: torch.Tensor):
    return Block.mlp_branch(blk, x)


def _block_region(blk: Block, x: torch.Tensor, need_weights: bool):
    """``Block.forward`` when its drop path draws no mask (eval mode, or p = 0)."""
    fa, weights = Block.attn_branch(blk, x, need_weights)
    x = x + fa
    return x + Block.mlp_branch(blk, x), weights


class _Regions:
    """The compiled region functions for one set of ``torch.compile`` settings."""

    def __init__(self, backend: str, mode: Optional[str], options: Optional[dict]):
        kw = {"backend": backend, "fullgraph": True, "dynamic": None}
        if mode is not None:
            kw["mode"] = mode
        if options:
            kw["options"] = dict(options)
        self.attn = torch.compile(_attn_region, **kw)
        self.mlp = torch.compile(_mlp_region, **kw)
        self.block = torch.compile(_block_region, **kw)


_REGIONS: Dict[Tuple, _Regions] = {}


def _regions(backend: str, mode: Optional[str], options: Optional[dict]) -> _Regions:
    key = (backend, mode, tuple(sorted((options or {}).items())))
    if key not in _REGIONS:
        _REGIONS[key] = _Regions(backend, mode, options)
    return _REGIONS[key]


def _dynamic(x: torch.Tensor) -> torch.Tensor:
    """Batch and token dimensions symbolic from the first compilation on."""
    torch._dynamo.maybe_mark_dynamic(x, 0)
    torch._dynamo.maybe_mark_dynamic(x, 1)
    return x


def _attn_call(regions: _Regions, blk: Block, x: torch.Tensor, need_weights: bool = False):
    return regions.attn(blk, _dynamic(x), need_weights)


def _mlp_call(regions: _Regions, blk: Block, x: torch.Tensor) -> torch.Tensor:
    return regions.mlp(blk, _dynamic(x))


def _block_call(regions: _Regions, blk: Block, x: torch.Tensor, need_weights: bool = False):
    if blk.drop_path.active:
        # the masks are drawn eagerly between the compiled branches (the blk.attn_branch /
        # blk.mlp_branch instance attributes), exactly as Block.forward draws them
        return Block.forward(blk, x, need_weights)
    return regions.block(blk, _dynamic(x), need_weights)


def _shared_clone(module: nn.Module) -> nn.Module:
    """A new module tree with the same classes, attributes, parameters and buffers (the
    same tensor objects), so that attributes set on the clone leave ``module`` as it was."""
    clone = copy.copy(module)
    for name, value in vars(module).items():   # own containers (parameters, hooks, ...)
        if isinstance(value, (dict, set)):
            clone.__dict__[name] = type(value)(value)
    clone.__dict__["_modules"] = {k: None if m is None else _shared_clone(m)
                                  for k, m in module._modules.items()}
    return clone


def is_compiled(net: nn.Module) -> bool:
    """Was ``net`` (or the module a DDP wrapper holds) made by ``compile_network``?"""
    net = getattr(net, "module", net)
    return getattr(net, "_pcss_compiled", None) is not None


def compile_network(net: nn.Module, backend: str = "inductor", mode: Optional[str] = None,
                    options: Optional[dict] = None) -> nn.Module:
    """``net`` with its transformer blocks compiled (see the module docstring).

    Other networks (AffinityNet, the segmentation nets of ``models.registry``) get their whole
    ``forward`` compiled (``nn.Module.compile``) on a clone that shares their parameters.

    Returns a new ``MCTViT`` that shares ``net``'s parameters and buffers; ``net`` itself
    stays eager. Usable wherever the network is (``pcss_losses``,
    ``FrequencyInfluence.accumulate``, ``cam_dict``, the engine loops), in train and eval
    mode, under autocast and in float64, with the same numbers up to the rounding of the
    dtype. ``backend`` / ``mode`` / ``options`` go to ``torch.compile``. Wrap in DDP after
    compiling. Compiling an already compiled network returns it unchanged.
    """
    if isinstance(net, nn.parallel.DistributedDataParallel) or hasattr(net, "_orig_mod"):
        raise TypeError(f"compile_network takes the network itself (wrap it in DDP after "
                        f"compiling), got {type(net).__name__}")
    if is_compiled(net):
        return net
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") \
        else "cache_size_limit"
    setattr(torch._dynamo.config, limit,
            max(getattr(torch._dynamo.config, limit), RECOMPILE_LIMIT))
    if not isinstance(net, MCTViT):
        # the refinement and segmentation nets (convolutional, no RNG draws or data-
        # dependent control flow in their forward): the whole forward compiled, on a clone
        # that shares the parameters; their other methods (param_groups, ...) stay eager
        clone = _shared_clone(net)
        kw = {"backend": backend, "dynamic": None}
        if mode is not None:
            kw["mode"] = mode
        if options:
            kw["options"] = dict(options)
        clone.compile(**kw)
        clone._pcss_compiled = {"backend": backend, "mode": mode, "options": options}
        return clone
    regions = _regions(backend, mode, options)
    clone = _shared_clone(net)
    for blk in clone.blocks:
        # instance attributes: the eager orchestration (run_blocks, the traced and shared
        # prefix passes of models.prefix_sharing) calls these and so runs the compiled code
        blk.attn_branch = functools.partial(_attn_call, regions, blk)
        blk.mlp_branch = functools.partial(_mlp_call, regions, blk)
        blk.forward = functools.partial(_block_call, regions, blk)
    clone._pcss_compiled = {"backend": backend, "mode": mode, "options": options}
    return clone
