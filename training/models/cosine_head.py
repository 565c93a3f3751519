"""Cosine classification head with the fixed AdaCos scale (Zhang et al., CVPR 2019).

The DCASE systems that score by embedding distance (Wilkinghoff's sub-cluster AdaCos and
its successors) train the embedding with an angular softmax rather than a plain linear
softmax: the logits are scaled cosines between a bias-free projection of the pooled
features and one learned direction per class. Each class is then pulled into a tight cone,
which is exactly the geometry the cosine-distance score rule assumes. The fixed AdaCos
scale s = sqrt(2) * ln(C - 1) removes the scale hyper-parameter (and the margin) of
ArcFace/CosFace, so mixup's soft labels work unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harken.common.errors import DataError


def adacos_scale(n_classes: int) -> float:
    """The fixed AdaCos scale for ``n_classes`` classes (the paper's eq. 12); at least
    sqrt(2) ln 2, so that two classes still get a usable scale (ln 1 would be 0)."""
    if n_classes < 2:
        raise DataError(f"a cosine head needs at least 2 classes, got {n_classes}")
    return math.sqrt(2.0) * math.log(max(n_classes - 1, 2))


class CosineHead(nn.Module):
    """pooled features -> (scaled cosine logits, embedding). Linear, normalise and a matrix
    product: static shapes, and every op exports to ONNX and int8 TFLite."""

    def __init__(self, in_dim: int, embedding_dim: int, n_classes: int) -> None:
        super().__init__()
        self.project = nn.Linear(in_dim, embedding_dim, bias=False)
        self.centres = nn.Parameter(torch.empty(n_classes, embedding_dim))
        nn.init.xavier_uniform_(self.centres)
        self.scale = adacos_scale(n_classes)
        self.embedding_dim = embedding_dim

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.project(pooled)
        cos = F.normalize(emb, dim=1) @ F.normalize(self.centres, dim=1).T
        return self.scale * cos, emb
