"""IResNet-50, the face-recognition backbone of insightface's arcface_torch.

Module and parameter names follow arcface_torch's ``iresnet50`` exactly (``conv1``, ``bn1``,
``prelu``, ``layer1..4``, ``bn2``, ``fc``, ``features``), so its ``backbone.pth`` or a
fine-tuned checkpoint of the same shape loads with ``strict=True``.

Input: aligned 112x112 RGB faces scaled to (x / 255 - 0.5) / 0.5. Output: 512-d embedding.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-5


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN-conv-BN-PReLU-conv(stride)-BN, no ReLU after
    the sum (the "improved" residual unit of ArcFace)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # the stride sits on the second conv
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7  # spatial size after four stride-2 stages on a 112x112 input

    def __init__(self, layers: tuple[int, int, int, int], num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # frozen in arcface_torch as well

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes, eps=BN_EPS),
        )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 112, 112), normalised to [-1, 1]
        x = self.prelu(self.bn1(self.conv1(x)))  # (N, 64, 112, 112)
        x = self.layer1(x)  # (N, 64, 56, 56)
        x = self.layer2(x)  # (N, 128, 28, 28)
        x = self.layer3(x)  # (N, 256, 14, 14)
        x = self.layer4(x)  # (N, 512, 7, 7)
        x = self.bn2(x)
        x = torch.flatten(x, 1)  # (N, 25088), channel-major as in arcface_torch
        x = self.dropout(x)
        x = self.fc(x.float())  # fc runs in fp32 even under autocast, as upstream
        return self.features(x)  # (N, 512)


def iresnet50(**kwargs) -> IResNet:
    return IResNet((3, 4, 14, 3), **kwargs)


def normalize_faces(faces_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 112, 112, 3) uint8 RGB -> (N, 3, 112, 112) float in [-1, 1]."""
    return faces_uint8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
