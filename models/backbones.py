"""The refinement and segmentation heads (``models.resnet38``) on other trunks: a
torchvision ResNet-50 for users without PSA's weights, and a small network that learns the
synthetic toy set on a CPU in a minute. Each trunk's ``features(x)`` gives three stride-8
maps named as ResNet-38's taps (``conv4``, ``conv5``, ``conv6``)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet50

from models.resnet38 import AffinityHead, FrozenBatchNormMixin, LargeFOVHead


class TorchvisionResNet50(FrozenBatchNormMixin, nn.Module):
    """torchvision ResNet-50 at output stride 8 (layer3 dilation 2, layer4 dilation 4):
    ``conv4`` = layer2 (512), ``conv5`` = layer3 (1024), ``conv6`` = layer4 (2048). BatchNorm
    frozen; the stem (conv1, bn1, layer1) frozen like ResNet-38's."""
    channels = (512, 1024, 2048)
    stride = 8
    frozen_modules = ("body.conv1", "body.bn1", "body.layer1")

    def _init_trunk(self):
        net = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        self.body = nn.ModuleDict({n: getattr(net, n) for n in
                                   ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                    "layer3", "layer4")})

    def features(self, x: torch.Tensor):
        b = self.body
        x = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        c4 = b.layer2(x)
        c5 = b.layer3(c4)
        return {"conv4": c4, "conv5": c5, "conv6": b.layer4(c5)}


class ResNet50Aff(AffinityHead, TorchvisionResNet50):
    def __init__(self, radius: int = 5):
        super().__init__()
        self._init_trunk()
        self._init_affinity_head(self.channels, radius)
        self.train()


class ToyTrunk(nn.Module):
    """A small trunk (about 0.2 M parameters) for the toy set, at output stride 4: 3x3
    convs with GroupNorm and ReLU - stride 2, 2 to 24 / 48 channels, then 64, then dilated
    3x3 convs (dilation 2, 4) to 96 channels. Stride 4 rather than the reference's 8: the
    toy set's 96 px images would leave a 12 x 12 grid, in which most cells lie in the
    margin where the reference makes no radius-5 pairs. Trained from scratch, so GroupNorm
    (no running statistics to freeze or synchronise across processes), no frozen stem."""
    channels = (64, 96, 96)
    stride = 4

    def _init_trunk(self):
        def conv(cin, cout, stride=1, dilation=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation,
                                           dilation=dilation, bias=False),
                                 nn.GroupNorm(8, cout), nn.ReLU(inplace=True))
        self.stem = nn.Sequential(conv(3, 24, 2), conv(24, 48, 2), conv(48, 48))
        self.stage4 = conv(48, 64)
        self.stage5 = conv(64, 96, dilation=2)
        self.stage6 = conv(96, 96, dilation=4)

    def features(self, x: torch.Tensor):
        c4 = self.stage4(self.stem(x))
        c5 = self.stage5(c4)
        return {"conv4": c4, "conv5": c5, "conv6": self.stage6(c5)}


class ToyAff(AffinityHead, ToyTrunk):
    """The toy trunk with AffinityNet's head at a quarter of its width (16 / 32 / 64, a
    112-dimensional embedding): the pair differences, not the convs, dominate a training
    step at full width (a toy 4-class set needs far fewer dimensions)."""

    def __init__(self, radius: int = 5):
        super().__init__()
        self._init_trunk()
        self._init_affinity_head(self.channels, radius, widths=(16, 32, 64))


class ToySeg(LargeFOVHead, ToyTrunk):
    """The toy trunk with a LargeFOV head scaled to its 24 x 24 grid (64 channels,
    dilation 2)."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self._init_trunk()
        self._init_seg_head(self.channels[2], num_classes, mid=64, dilation=2)
