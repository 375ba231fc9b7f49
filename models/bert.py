"""A BERT-style text classifier with DeeBERT exits (Xin et al. 2020), in
plain PyTorch modules that models/export.py writes as FORMAT.md's
token_embed, layer_norm, encoder_block, token_pool, linear and tanh layers.

    net = BertClassifier(vocab_size=1000, tokens=64, dim=64, heads=4, ffn=128,
                         layers=4, num_classes=2)
    logits = net(x)            # x: [N, 2, T] (ids, then mask); one [N, K] per
                               # exit, the final head last
    backbone, exits, final = net.export_parts(
        {"encoder.0": {"type": "entropy", "threshold": 0.3}, ...})
    export(backbone, exits, final, "my-bert", {"tokens": 64}, 2,
           golden_inputs=x[:16])

Embeddings as BERT's: word + position + token type (row 0: exitrt takes no
segment ids) then LayerNorm (and dropout); post-LN GELU encoder layers
(nn.TransformerEncoderLayer, norm_first=False, batch_first=True) given the
input's mask as their key padding mask; after every layer but the last a
DeeBERT exit head [TokenPool("first"), Linear(D, D), Tanh, Dropout,
Linear(D, K)]; the final head the same pooler and classifier.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

try:
    import transformer as tx
except ImportError:  # pragma: no cover
    from . import transformer as tx


class BertEmbeddings(nn.Module):
    """BERT's embeddings, children named as Hugging Face's (the exporter
    recognises them by these names): word, position and token-type tables,
    LayerNorm, dropout. Reads the token input [N, 2, T]."""

    def __init__(self, vocab_size, dim, max_positions, type_vocab_size=2, eps=1e-12,
                 dropout=0.1):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        ids, _ = tx.split_tokens(x)
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = (self.word_embeddings(ids) + self.position_embeddings(pos)[None]
             + self.token_type_embeddings(torch.zeros_like(ids)))
        return self.dropout(self.LayerNorm(h))


def deebert_head(dim, num_classes, dropout=0.1):
    """BERT's pooler (the [CLS] token, Linear, tanh) and a classifier."""
    return nn.Sequential(OrderedDict(
        pool=tx.TokenPool("first"), pooler=nn.Linear(dim, dim), tanh=nn.Tanh(),
        dropout=nn.Dropout(dropout), classifier=nn.Linear(dim, num_classes)))


class BertClassifier(nn.Module):
    def __init__(self, vocab_size, tokens, dim, heads, ffn, layers, num_classes,
                 dropout=0.1, eps=1e-12):
        super().__init__()
        self.tokens = tokens
        self.embeddings = BertEmbeddings(vocab_size, dim, tokens, eps=eps, dropout=dropout)
        self.encoder = nn.Sequential(*[
            nn.TransformerEncoderLayer(dim, heads, ffn, dropout, activation="gelu",
                                       layer_norm_eps=eps, batch_first=True, norm_first=False)
            for _ in range(layers)])
        self.exit_heads = nn.ModuleList(deebert_head(dim, num_classes, dropout)
                                        for _ in range(layers - 1))
        self.head = deebert_head(dim, num_classes, dropout)

    def forward(self, x):
        """x [N, 2, T] (ids, then mask) -> [logits [N, K]] at every exit, the
        final head last."""
        _, mask = tx.split_tokens(x)
        h = self.embeddings(x)
        out = []
        for i, layer in enumerate(self.encoder):
            h = layer(h, src_key_padding_mask=~mask)
            if i < len(self.exit_heads):
                out.append(self.exit_heads[i](h))
        out.append(self.head(h))
        return out

    def export_parts(self, policies):
        """(backbone, exits, final head) for models/export.py's export(): the
        backbone [embeddings, encoder.0, encoder.1, ...] shares this
        network's modules; policies maps "encoder.i" (i < layers - 1) to an
        exit policy; layers without one get no exit."""
        backbone = nn.Sequential(OrderedDict(embeddings=self.embeddings, encoder=self.encoder))
        exits = {}
        for key, pol in policies.items():
            i = int(key.split(".")[-1]) if key.startswith("encoder.") else -1
            if not 0 <= i < len(self.exit_heads):
                raise ValueError(f"exit {key!r}: encoder.0 .. encoder.{len(self.exit_heads) - 1}")
            exits[key] = (self.exit_heads[i], pol)
        return backbone, exits, self.head
