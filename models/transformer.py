"""Transformer building blocks that models/export.py knows how to write
(models/FORMAT.md, "Transformer encoders"). Tensors are batch first:
tokens [N, T, D].

A token model's input is what exitrt takes: one row of 2T floats per
sample, the T token ids then the T mask values ([N, 2, T]; split_tokens
gives the ids and the boolean mask). The mask is fixed for a whole forward
pass (every token layer carries it unchanged), so the modules that need it
take it as a second argument, forward(x, mask) (mask [N, T] bool, True for
attended tokens, or None: every token attended); they carry `takes_mask =
True`, which is how export.Graph knows to pass it.
"""
import torch
import torch.nn as nn


def split_tokens(x):
    """A token input [N, 2, T] (ids, then mask; floats or ints) -> (ids
    [N, T] int64, mask [N, T] bool, True where attended). [N, T] is taken as
    ids alone, every token attended."""
    if x.dim() == 2:
        return x.long(), torch.ones(x.shape, dtype=torch.bool, device=x.device)
    if x.dim() != 3 or x.shape[1] != 2:
        raise ValueError(f"token input of shape {tuple(x.shape)}; [N, 2, T] expected")
    return x[:, 0].long(), x[:, 1] != 0


def pack_tokens(ids, mask=None):
    """(ids [N, T], mask [N, T] or None) -> the float32 rows [N, 2, T] exitrt
    takes (the golden files' `input` of a token model)."""
    ids = torch.as_tensor(ids)
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    return torch.stack([ids.float(), (mask != 0).float()], dim=1)


class TokenPool(nn.Module):
    """[N, T, D] tokens to [N, D]: token 0 ("first": the class token, BERT's
    [CLS]) or the mean over the attended tokens ("mean"; mask [N, T], 1 for
    attended, None: every token)."""

    takes_mask = True

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


class PatchEmbed(nn.Module):
    """An image [N, C, H, W] to tokens [N, T, D]: a convolution with kernel =
    stride = patch_size, its [D, h, w] output as h * w tokens in row-major
    order, an optional learned class token first (T = h * w + 1), then an
    optional learned position embedding [T, D] added (FORMAT.md's
    patch_embed)."""

    def __init__(self, in_channels, embed_dim, patch_size, image_size, class_token=True,
                 position=True):
        super().__init__()
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
        ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.proj = nn.Conv2d(in_channels, embed_dim, (ph, pw), stride=(ph, pw))
        t = (ih // ph) * (iw // pw) + (1 if class_token else 0)
        self.class_token = nn.Parameter(torch.zeros(embed_dim)) if class_token else None
        self.position = nn.Parameter(torch.randn(t, embed_dim) * 0.02) if position else None

    def forward(self, x):
        h = self.proj(x).flatten(2).transpose(1, 2)  # [N, h*w, D]
        if self.class_token is not None:
            h = torch.cat([self.class_token.expand(h.shape[0], 1, -1), h], dim=1)
        if self.position is not None:
            h = h + self.position
        return h


class TokenEmbedding(nn.Module):
    """A token input [N, 2, T] to tokens [N, T, D]: word embedding of each
    id, plus a learned position embedding [T, D] (optional), plus one
    segment vector [D] (optional; BERT's token-type row 0), as FORMAT.md's
    token_embed."""

    def __init__(self, vocab_size, embed_dim, tokens, position=True, segment=False):
        super().__init__()
        self.word = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Parameter(torch.randn(tokens, embed_dim) * 0.02) if position else None
        self.segment = nn.Parameter(torch.zeros(embed_dim)) if segment else None

    def forward(self, x):
        ids, _ = split_tokens(x)
        h = self.word(ids)
        if self.position is not None:
            h = h + self.position[: h.shape[1]]
        if self.segment is not None:
            h = h + self.segment
        return h


class VitPatchEmbed(nn.Module):
    """torchvision's VisionTransformer up to its encoder's layers: conv_proj,
    the class token, the position embedding (and the encoder's dropout, a
    no-op at inference). The exporter puts this first in a ViT's layer list;
    it shares the ViT's parameters."""

    def __init__(self, vit):
        super().__init__()
        self.vit = [vit]  # a list: not registered as a child (no second path to its weights)

    def forward(self, x):
        vit = self.vit[0]
        h = vit._process_input(x)
        h = torch.cat([vit.class_token.expand(h.shape[0], -1, -1), h], dim=1)
        return vit.encoder.dropout(h + vit.encoder.pos_embedding)
