"""DeepLabV2 on an ImageNet ResNet-101 from torchvision (DeepLab, TPAMI 2018; ours, not the
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

from models.resnet38 import FrozenBatchNormMixin
from utils.errors import UserError

ASPP_RATES = (6, 12, 18, 24)
IMAGENET_FILE = "pretrained/resnet101-63fe2227.pth"    # torchvision's IMAGENET1K_V1


def torchvision_resnet(builder, pretrained: Optional[str], **kw) -> nn.Module:
    """A torchvision ResNet with ImageNet weights from the file ``pretrained`` (read with
    ``weights_only=True``), from torchvision's download when ``pretrained == "download"``
    (the only network access, and only when asked), or random when None."""
    if pretrained == "download":
        return builder(weights="IMAGENET1K_V1", **kw)
    net = builder(weights=None, **kw)
    if pretrained is not None:
        from models.weights import load_state_dict_file
        sd = load_state_dict_file(pretrained)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or [k for k in unexpected if not k.startswith("fc.")]:
            raise UserError(f"{pretrained} is not a torchvision {builder.__name__} state dict "
                            f"({len(missing)} keys missing, e.g. {', '.join(missing[:3])}). "
                            f"Use torchvision's ImageNet file for it, or 'download'.")
    return net


class DeepLabV2(FrozenBatchNormMixin, nn.Module):
    """``forward(x)`` -> B x C x ceil(H/8) x ceil(W/8) logits."""
    head_modules = ("aspp",)

    def __init__(self, num_classes: int = 21, pretrained: Optional[str] = None):
        super().__init__()
        self.num_classes = num_classes
        trunk = torchvision_resnet(resnet101, pretrained,
                                   replace_stride_with_dilation=[False, True, True])
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
    torchvision's ImageNet resnet101 file, ``"download"``, or None (random)."""
    return DeepLabV2(num_classes, pretrained)

