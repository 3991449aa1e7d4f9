"""PSA's ResNet-38 (``resnet38d``), AffinityNet and the DeepLab-LargeFOV segmentation net
(SPEC_REFINE sections 11, 13.1 and 15.1), with the reference's state-dict layouts.

Layout: the blocks (``WideBlock``, ``BottleneckBlock``), the trunk (``ResNet38``), then the
two heads as mixins that sit on any trunk with three stride-8 taps (``AffinityHead``: f8_3,
f8_4, f8_5, f9 and the pairwise affinity; ``LargeFOVHead``: fc8_seg_conv1/2), the two
ResNet-38 nets, and the weight loading of section 11.5. ``models.backbones`` puts the same
heads on other trunks; ``models.registry`` picks one by name.

Training mode (11.4): ``train(mode)`` sets the mode as usual, then puts every BatchNorm in
eval mode with frozen affine parameters and freezes the net's stem (``frozen_modules``);
dropout follows the mode.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.weights import load_weights
from wsss.affinity import pair_affinities

Features = Dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- blocks
class WideBlock(nn.Module):
    """Pre-activation block ``W(cin, cmid, cout, stride, d1, d2)`` (11.1); the 1x1 shortcut
    conv exists only when the shape changes. ``forward`` returns ``(out, tap)``, the tap
    being ReLU(BN(input))."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int = 1, d1: int = 1,
                 d2: int = 1):
        super().__init__()
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cmid, 3, stride, padding=d1, dilation=d1,
                                       bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cmid)
        self.conv_branch2b1 = nn.Conv2d(cmid, cout, 3, padding=d2, dilation=d2, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor):
        a = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(a)
        t = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))
        return shortcut + t, a


class BottleneckBlock(nn.Module):
    """``B(cin, cout, d, p)`` (11.1): 1x1 -> dilated 3x3 -> 1x1 with dropout ``p`` before
    the last two convs, a 1x1 shortcut. ``forward`` returns ``(out, tap)``."""

    def __init__(self, cin: int, cout: int, dilation: int, dropout: float):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor):
        a = F.relu(self.bn_branch2a(x))
        t = self.conv_branch2a(a)
        t = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(t))))
        t = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(t))))
        return self.conv_branch1(a) + t, a


# ------------------------------------------------------------------------------ trunk
class FrozenBatchNormMixin:
    """11.4's ``train(mode)``: BatchNorm always in eval mode with frozen affine parameters,
    the modules named in ``frozen_modules`` frozen, the rest (dropout) following ``mode``."""
    frozen_modules: Sequence[str] = ()

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_modules:
            for p in self.get_submodule(name).parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.requires_grad_(False)
        return self


class ResNet38(FrozenBatchNormMixin, nn.Module):
    """The trunk of 11.2: ``features(x)`` -> ``conv4`` (512), ``conv5`` (1024), ``conv6``
    (4096), all at stride 8 (``ceil(H/8) x ceil(W/8)``); input the normalised image."""
    channels = (512, 1024, 4096)
    stride = 8

    def __init__(self):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = WideBlock(64, 128, 128, stride=2)
        self.b2_1 = WideBlock(128, 128, 128)
        self.b2_2 = WideBlock(128, 128, 128)
        self.b3 = WideBlock(128, 256, 256, stride=2)
        self.b3_1 = WideBlock(256, 256, 256)
        self.b3_2 = WideBlock(256, 256, 256)
        self.b4 = WideBlock(256, 512, 512, stride=2)
        self.b4_1 = WideBlock(512, 512, 512)
        self.b4_2 = WideBlock(512, 512, 512)
        self.b4_3 = WideBlock(512, 512, 512)
        self.b4_4 = WideBlock(512, 512, 512)
        self.b4_5 = WideBlock(512, 512, 512)
        self.b5 = WideBlock(512, 512, 1024, d1=1, d2=2)
        self.b5_1 = WideBlock(1024, 512, 1024, d1=2, d2=2)
        self.b5_2 = WideBlock(1024, 512, 1024, d1=2, d2=2)
        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def features(self, x: torch.Tensor) -> Features:
        x = self.conv1a(x)
        for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4", "b4_1", "b4_2", "b4_3",
                     "b4_4", "b4_5"):
            x = getattr(self, name)(x)[0]
        x, conv4 = self.b5(x)
        x = self.b5_2(self.b5_1(x)[0])[0]
        x, conv5 = self.b6(x)
        x = self.b7(x)[0]
        return {"conv4": conv4, "conv5": conv5, "conv6": F.relu(self.bn7(x))}


# ------------------------------------------------------------------------------ heads
class AffinityHead(nn.Module):
    """AffinityNet's head (13.1) on a trunk with ``channels`` = the widths of its three
    stride-8 taps: 1x1 convs to 64 / 128 / 256 channels (ELU), concatenated, a 1x1 conv
    448 -> 448 (ELU) = the embedding ``e``; ``aff[b, k, p] = exp(-mean_c |e[to] - e[from]|)``
    for the pairs of ``radius`` (12.3 order). The head's convs are ``from_scratch``: 10x
    lr (weights) and 20x (biases) in ``param_groups``."""
    head_modules = ("f8_3", "f8_4", "f8_5", "f9")

    def _init_affinity_head(self, channels: Sequence[int], radius: int = 5,
                            widths: Sequence[int] = (64, 128, 256)):
        """``widths``: the three 1x1 convs' outputs (the reference's 64 / 128 / 256; the
        embedding has their sum, 448)."""
        self.radius = radius
        self.f8_3 = nn.Conv2d(channels[0], widths[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(channels[1], widths[1], 1, bias=False)
        self.f8_5 = nn.Conv2d(channels[2], widths[2], 1, bias=False)
        self.f9 = nn.Conv2d(sum(widths), sum(widths), 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        e = torch.cat([F.elu(self.f8_3(f["conv4"])), F.elu(self.f8_4(f["conv5"])),
                       F.elu(self.f8_5(f["conv6"]))], dim=1)
        return F.elu(self.f9(e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The affinities (B x K x P) of 13.1 on the embedding's grid (``pair_affinities``:
        the reference's gather replaced by shifted slices, the same numbers)."""
        return pair_affinities(self.embed(x), self.radius)

    def param_groups(self, lr: float, weight_decay: float) -> List[dict]:
        """PSA's four groups (13.4) over the conv (and GroupNorm) layers' trainable tensors:
        trunk weights (lr, wd), trunk biases (2 lr, 0), head weights (10 lr, wd), head
        biases (20 lr, 0); empty groups included. BatchNorm tensors are in none."""
        head = {id(getattr(self, n)) for n in self.head_modules}
        groups: List[List[nn.Parameter]] = [[], [], [], []]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.GroupNorm)):
                g = 2 if id(m) in head else 0
                if m.weight is not None and m.weight.requires_grad:
                    groups[g].append(m.weight)
                if m.bias is not None and m.bias.requires_grad:
                    groups[g + 1].append(m.bias)
        return [{"params": groups[0], "lr": lr, "weight_decay": weight_decay},
                {"params": groups[1], "lr": 2 * lr, "weight_decay": 0.0},
                {"params": groups[2], "lr": 10 * lr, "weight_decay": weight_decay},
                {"params": groups[3], "lr": 20 * lr, "weight_decay": 0.0}]


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV's head (15.1) on a trunk's ``conv6``: a dilated 3x3 conv to ``mid``
    channels (with bias), ReLU, a dilated 3x3 conv to the classes. Xavier-uniform weights,
    PyTorch's default biases; 10x lr in ``param_groups``."""
    head_modules = ("fc8_seg_conv1", "fc8_seg_conv2")

    def _init_seg_head(self, cin: int, num_classes: int, mid: int = 512, dilation: int = 12):
        self.num_classes = num_classes
        self.fc8_seg_conv1 = nn.Conv2d(cin, mid, 3, padding=dilation, dilation=dilation)
        self.fc8_seg_conv2 = nn.Conv2d(mid, num_classes, 3, padding=dilation,
                                       dilation=dilation)
        nn.init.xavier_uniform_(self.fc8_seg_conv1.weight)
        nn.init.xavier_uniform_(self.fc8_seg_conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)["conv6"]
        return self.fc8_seg_conv2(F.relu(self.fc8_seg_conv1(x)))

    def param_groups(self, lr: float, weight_decay: float) -> List[dict]:
        """MCTformer's two groups: every trainable tensor whose name lacks ``fc8`` (lr) and
        the head's (10 lr), both with ``weight_decay`` (the reference's effective value is
        0: its weight-decay argument lands in SGD's momentum, see ``utils.optim``)."""
        trunk, head = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (head if "fc8" in name else trunk).append(p)
        return [{"params": trunk, "lr": lr, "weight_decay": weight_decay},
                {"params": head, "lr": 10 * lr, "weight_decay": weight_decay}]


# ------------------------------------------------------------------------------- nets
class ResNet38Aff(AffinityHead, ResNet38):
    """PSA's ``resnet38_aff.Net`` (stem conv1a, b2, b2_1, b2_2 frozen)."""
    frozen_modules = ("conv1a", "b2", "b2_1", "b2_2")

    def __init__(self, radius: int = 5):
        super().__init__()
        self._init_affinity_head(self.channels, radius)
        self.train()


class ResNet38Seg(LargeFOVHead, ResNet38):
    """MCTformer's ``resnet38_seg.Net`` (conv1a frozen)."""
    frozen_modules = ("conv1a",)

    def __init__(self, num_classes: int = 21):
        super().__init__()
        self._init_seg_head(self.channels[2], num_classes)
        self.train()


def build_resnet38_aff(radius: int = 5) -> ResNet38Aff:
    """AffinityNet on ResNet-38 (state dict ``resnet38_aff``), in training mode (11.4)."""
    return ResNet38Aff(radius)


def build_resnet38_seg(num_classes: int = 21) -> ResNet38Seg:
    """DeepLab-LargeFOV on ResNet-38 (state dict ``resnet38_seg_voc`` / ``_coco``)."""
    return ResNet38Seg(num_classes)


# ---------------------------------------------------------------------- weight files
def head_keys(net: nn.Module) -> List[str]:
    """The state-dict keys of ``net``'s new head (``head_modules``: what a classifier or
    ImageNet file cannot hold)."""
    names = getattr(net, "head_modules", ())
    return [k for k in net.state_dict() if k.split(".")[0] in names]


def load_resnet38_weights(net: nn.Module, state_dict_or_path: Union[str, os.PathLike, Mapping]
                          ) -> Dict[str, List[str]]:
    """Load PSA / MCTformer weights into ``net`` (docs/method.md, ResNet-38):
    ``res38_cls.pth`` (the classifier: its ``fc8`` is dropped, the new head keeps its
    initialisation), ``res38_aff.pth`` / ``resnet38_aff.pth``, segmentation checkpoints; bare or in ``{'model'|'state_dict':
    ...}``, with or without a ``module.`` prefix, with or without ``num_batches_tracked``.
    Returns ``{"fresh": net keys absent from the file, "dropped": file keys the net lacks}``
    (``num_batches_tracked`` not listed). A shape mismatch, or a missing key that is not the
    net's new head, is a ``UserError`` naming the keys (``models.weights.load_weights``)."""
    return load_weights(net, state_dict_or_path, fresh_ok=head_keys(net), drop_ok=True,
                        hint="Use PSA's res38_cls.pth / res38_aff.pth (ResNet-38) or weights "
                             "of the same backbone and class count.")
