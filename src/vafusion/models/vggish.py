"""VGGish, the AudioSet audio embedding network (Hershey et al., 2017).

Module and parameter names follow the torchvggish port, so its public checkpoint
``vggish-10086976.pth`` (``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``) loads with
``strict=True`` without renaming, and its PCA file (``pca_eigen_vectors``, ``pca_means``)
loads into :class:`VGGishPCA`.

Input: (N, 1, 96, 64) log-mel examples (96 frames of 10 ms x 64 mel bands).
Output: (N, 128) embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING_SIZE = 128


class VGGish(nn.Module):
    def __init__(self, final_relu: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(inplace=True),  # 0, 1
            nn.MaxPool2d(2, 2),  # 2
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True),  # 3, 4
            nn.MaxPool2d(2, 2),  # 5
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True),  # 6, 7
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),  # 8, 9
            nn.MaxPool2d(2, 2),  # 10
            nn.Conv2d(256, 512, 3, padding=1), nn.ReLU(inplace=True),  # 11, 12
            nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(inplace=True),  # 13, 14
            nn.MaxPool2d(2, 2),  # 15
        )
        # torchvggish ends with a ReLU after the last linear layer; Google's TF model does
        # not (its embedding is pre-activation). Both load the same weights.
        head = [nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, EMBEDDING_SIZE)]
        if final_relu:
            head.append(nn.ReLU(inplace=True))
        self.embeddings = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 1, 96, 64)
        x = self.features(x)  # (N, 512, 6, 4)
        # Flatten as TensorFlow did (channels last), which the published weights expect.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, 12288)
        return self.embeddings(x)  # (N, 128)


class VGGishPCA(nn.Module):
    """AudioSet's PCA whitening + 8-bit quantisation of VGGish embeddings."""

    quantize_min, quantize_max = -2.0, 2.0

    def __init__(self):
        super().__init__()
        self.register_buffer("pca_eigen_vectors", torch.eye(EMBEDDING_SIZE))
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_SIZE))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # (N, 128) -> (N, 128) values in 0..255 (float)
        centred = embeddings.float() - self.pca_means.reshape(1, -1).float()
        projected = centred @ self.pca_eigen_vectors.float().T
        clipped = projected.clamp(self.quantize_min, self.quantize_max)
        return torch.round((clipped - self.quantize_min) * (255.0 / (self.quantize_max - self.quantize_min)))
