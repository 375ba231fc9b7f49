"""Text to an exitrt token file: the [N, 2, T] int32 .npy that `exitrt run
--data` takes for a text model (models/FORMAT.md, "Token inputs": the T ids,
then the T mask values), made with the checkpoint's own tokenizer.

    .venv/bin/python models/tokenize_text.py CHECKPOINT_DIR TEXTS.txt OUT.npy --tokens 128

TEXTS.txt holds one text per line (UTF-8; empty lines are texts too, "-"
reads standard input). The tokenizer is read from the checkpoint directory
(tokenizer.json, vocab.txt, ... as save_pretrained writes them) with
local_files_only: nothing is downloaded. Each text is tokenised as one
segment (exitrt takes no segment ids: the model's token-type row 0),
truncated to T tokens and padded to T (the tokenizer's padding side, or
--padding-side; the mask says which tokens are text). A RoBERTa checkpoint
is always padded on the right (models/hf.py says why).

(Named tokenize_text.py, not tokenize.py: a tokenize.py beside the scripts
would hide Python's own tokenize module, which torch imports.)
"""
import argparse
import json
import os
import sys

import numpy as np


def tokenize(checkpoint, texts, tokens, padding_side=None):
    """[N, 2, T] int32: ids, then the mask (1: a token of the text, 0:
    padding), of texts with checkpoint's tokenizer."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SystemExit("tokenize_text.py needs the transformers package (.ci/deps installs "
                         "it into .venv)")
    cfg = os.path.join(checkpoint, "config.json")
    model_type = json.load(open(cfg)).get("model_type") if os.path.isfile(cfg) else None
    if model_type == "roberta" and padding_side == "left":
        raise SystemExit("--padding-side left: RoBERTa counts positions from the first "
                         "non-pad token, exitrt by index; its texts are padded on the right "
                         "(models/hf.py)")
    tok = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    if model_type == "roberta":
        tok.padding_side = "right"
    elif padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token_id is None:
        raise SystemExit(f"{checkpoint}: the tokenizer has no padding token")
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=tokens,
              return_attention_mask=True, return_token_type_ids=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    tt = enc.get("token_type_ids")
    if tt is not None and np.any(np.asarray(tt)):
        raise SystemExit("the tokenizer gave segment ids other than 0; exitrt takes one "
                         "segment per text")
    if ids.shape != (len(texts), tokens):
        raise SystemExit(f"the tokenizer gave ids of shape {ids.shape}, not "
                         f"[{len(texts)}, {tokens}]")
    if ids.max(initial=0) >= 2 ** 31:
        raise SystemExit("token ids beyond int32")
    return np.stack([ids, mask], 1).astype(np.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Tokenise text (one per line) for exitrt run.")
    ap.add_argument("checkpoint", help="the checkpoint directory holding the tokenizer files")
    ap.add_argument("texts", help="a UTF-8 text file, one text per line ('-': stdin)")
    ap.add_argument("out", help="the .npy to write, [N, 2, T] int32")
    ap.add_argument("--tokens", type=int, required=True,
                    help="T, the model's input.tokens (models/hf.py's --tokens)")
    ap.add_argument("--padding-side", choices=("right", "left"),
                    help="where the padding goes (default: the tokenizer's)")
    a = ap.parse_args(argv)
    if a.tokens < 1:
        ap.error("--tokens must be >= 1")
    f = sys.stdin if a.texts == "-" else open(a.texts, encoding="utf-8")
    with f:
        texts = [line.rstrip("\r\n") for line in f]
    if not texts:
        raise SystemExit(f"{a.texts}: no texts")
    x = tokenize(a.checkpoint, texts, a.tokens, a.padding_side)
    np.save(a.out, x)
    print(f"{a.out}: {x.shape[0]} texts x {a.tokens} tokens "
          f"({int(x[:, 1].sum(1).max())} at most, "
          f"{int((x[:, 1].sum(1) >= a.tokens).sum())} filling all T)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
