"""DeepLabV2 on an ImageNet ResNet-101 from torchvision (SPEC_REFINE 15.4; ours, not the
reference): the segmentation network of most recent WSSS tables.

torchvision ``resnet101`` with ``replace_stride_with_dilation=[False, True, True]`` (output
stride 8; layer3 dilation 2, layer4 dilation 4), without avgpool / fc, and the ASPP-v2 head
on layer4: four parallel 3x3 convs 2048 -> C with padding = dilation in {6, 12, 18, 24},
with bias, their outputs summed; weights N(0, 0.01), biases 0. State dict: torchvision's keys
under ``backbone.`` plus ``aspp.{0,1,2,3}.{weight,bias}``. BatchNorm is frozen (eval mode,
no gradient), as in kazuto1011/deeplab-pytorch.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
from torchvision.models import resnet101
from torchvision.models._utils import IntermediateLayerGetter

from models.registry import load_initial_weights
from models.resnet38 import FrozenBatchNormMixin

ASPP_RATES = (6, 12, 18, 24)


class DeepLabV2(FrozenBatchNormMixin, nn.Module):
    """``forward(x)`` -> B x C x ceil(H/8) x ceil(W/8) logits."""
    head_modules = ("aspp",)

    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.num_classes = num_classes
        trunk = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        self.backbone = IntermediateLayerGetter(trunk, {"layer4": "out"})
        self.aspp = nn.ModuleList(nn.Conv2d(2048, num_classes, 3, padding=r, dilation=r)
                                  for r in ASPP_RATES)
        for conv in self.aspp:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)["out"]
        return sum(conv(f) for conv in self.aspp)

    def param_groups(self, lr: float, weight_decay: float) -> List[dict]:
        """deeplab-pytorch's groups: backbone (lr, wd), ASPP weights (10 lr, wd), ASPP
        biases (20 lr, no decay); frozen tensors left out."""
        trainable = lambda ps: [p for p in ps if p.requires_grad]  # noqa: E731
        return [{"params": trainable(self.backbone.parameters()), "lr": lr,
                 "weight_decay": weight_decay},
                {"params": trainable(c.weight for c in self.aspp), "lr": 10 * lr,
                 "weight_decay": weight_decay},
                {"params": trainable(c.bias for c in self.aspp), "lr": 20 * lr,
                 "weight_decay": 0.0}]


def build_deeplabv2(num_classes: int = 21, pretrained: Optional[str] = None) -> DeepLabV2:
    """DeepLabV2-ResNet-101 (docs/method.md, Segmentation network); ``pretrained``:
    torchvision's ImageNet resnet101 file, ``"download"``, or None (random), loaded as the
    registry's ``deeplabv2_r101`` entry says (``models.registry.load_initial_weights``)."""
    net = DeepLabV2(num_classes)
    load_initial_weights(net, "deeplabv2_r101", pretrained)
    return net

