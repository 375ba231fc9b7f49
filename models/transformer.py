"""Transformer building blocks that models/export.py knows how to write
(models/FORMAT.md, "Transformer encoders"). Tensors are batch first:
tokens [N, T, D]."""
import torch
import torch.nn as nn


class TokenPool(nn.Module):
    """[N, T, D] tokens to [N, D]: token 0 ("first": the class token, BERT's
    [CLS]) or the mean over the attended tokens ("mean"; mask [N, T], 1 for
    attended, None: every token)."""

    def __init__(self, mode="first"):
        super().__init__()
        if mode not in ("first", "mean"):
            raise ValueError(f"TokenPool mode {mode!r}: 'first' or 'mean'")
        self.mode = mode

    def forward(self, x, mask=None):
        if self.mode == "first":
            return x[:, 0]
        if mask is None:
            return x.mean(dim=1)
        m = mask.to(x.dtype).unsqueeze(-1)
        return (x * m).sum(dim=1) / m.sum(dim=1)
