"""Cross-attention (CA), Praveen, Granger & Cardinal (FG 2021), as restated in Praveen &
Alam (IACA), Sec. 3B, Eq. 1-4.

The paper writes features as columns: X_a, X_v in R^{d x L}. Here tensors hold frames as
rows, (B, L, d), so X_a^T is ``audio`` and X_a A is ``A^T @ audio`` in row form.

    Z = X_a^T W X_v                                     (L x L cross-correlation)
    A_a = column-wise softmax of Z,  A_v = column-wise softmax of Z^T         (Eq. 1)
    X^_a = X_a A_a,  X^_v = X_v A_v                                           (Eq. 2)
    X_att,a = tanh(X_a + X^_a),  X_att,v = tanh(X_v + X^_v)                   (Eq. 3, 4)

Padded frames get no attention weight (their rows of Z are -inf before the softmax).
"""

from __future__ import annotations

import torch
from torch import nn


def column_softmax_attend(x: torch.Tensor, scores: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """X A with A the column-wise softmax of ``scores``, in row form.

    x: (B, L, d) frames of one modality as rows; scores: (B, L, L), rows index x's frames.
    A[i, j] = exp(scores[i, j]) / sum_k exp(scores[k, j]); output row j = sum_i A[i, j] x_i.
    """
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask[:, :, None], float("-inf"))
    weights = torch.softmax(scores, dim=1)  # A: each column sums to 1 over x's frames
    return weights.transpose(1, 2) @ x  # (B, L, d)


class CrossAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(dim, dim))  # W in Z = X_a^T W X_v
        nn.init.xavier_uniform_(self.W)

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # audio = X_a^T, visual = X_v^T: (B, L, d)
        Z = audio @ self.W @ visual.transpose(1, 2)  # (B, L_a, L_v)
        audio_hat = column_softmax_attend(audio, Z, padding_mask)  # X^_a = X_a A_a, Eq. 2
        visual_hat = column_softmax_attend(visual, Z.transpose(1, 2), padding_mask)  # X^_v = X_v A_v
        return torch.tanh(audio + audio_hat), torch.tanh(visual + visual_hat)  # Eq. 3, 4
