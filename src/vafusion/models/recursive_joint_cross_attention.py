"""Recursive joint cross-attention (RJCA), Praveen, Granger & Cardinal (ICASSP 2023), the
RJCA baseline of Praveen & Alam (IACA).

    X_a = BLSTM_a(audio features),  X_v = BLSTM_v(visual features)      (temporal context)
    for t = 1..T:                                                         (recursion)
        J^(t) = [X_a^(t-1); X_v^(t-1)]
        C_a^(t) = tanh(X_a^(t-1)^T W_ja^(t) J^(t) / sqrt(d)), C_v^(t) likewise
        H_a^(t) = ReLU(W_a^(t) X_a^(t-1) + W_ca^(t) C_a^(t)^T), H_v^(t) likewise
        X_a^(t) = W_ha^(t) H_a^(t) + X_a^(t-1), X_v^(t) likewise
    X_att = BLSTM([X_a^(T); X_v^(T)])     (the joint BLSTM sits in ``AudioVisualFusion``)

Each iteration t has its own weights (the superscript t on every W). The BLSTMs run over
the real frames only (packed).
"""

from __future__ import annotations

import torch
from torch import nn

from vafusion.models.joint_cross_attention import JointCrossAttention
from vafusion.models.sequence import BiLstm


class RecursiveJointCrossAttention(nn.Module):
    def __init__(self, dim: int, hidden: int, length: int, iterations: int, lstm_layers: int = 1):
        super().__init__()
        self.lstm_audio = BiLstm(dim, dim, lstm_layers)
        self.lstm_visual = BiLstm(dim, dim, lstm_layers)
        self.iterations = nn.ModuleList(JointCrossAttention(dim, dim, hidden, length) for _ in range(iterations))

    def encode(self, audio: torch.Tensor, visual: torch.Tensor,
               padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """X_a, X_v: the BLSTM outputs that the recursion attends over. (B, L, d) each."""
        return self.lstm_audio(audio, padding_mask), self.lstm_visual(visual, padding_mask)

    def attend(self, audio: torch.Tensor, visual: torch.Tensor,
               padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """X_a^(T), X_v^(T) from X_a^(0) = X_a, X_v^(0) = X_v. (B, L, d) each."""
        for jca in self.iterations:  # iteration t with its own W^(t)
            audio, visual = jca(audio, visual, padding_mask)
        return audio, visual

    def forward(self, audio: torch.Tensor, visual: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attend(*self.encode(audio, visual, padding_mask), padding_mask)
