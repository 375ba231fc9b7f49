"""Export Hugging Face `transformers` checkpoints to exitrt model directories
(models/FORMAT.md), with DeeBERT- and PABEE-style exit heads.

    .venv/bin/python models/hf.py CHECKPOINT_DIR OUT_DIR --tokens 128 [--threshold 0.3]
    .venv/bin/python models/hf.py CHECKPOINT_DIR OUT_DIR --tokens 128 --patience 2

or from Python:

    model, exits, final = hf.load_checkpoint("ckpt/")    # local files only
    hf.export_hf(model, "out/", tokens=128, exits=exits, final=final)

Models (the classes of transformers 4.35, the last line that runs on
Debian's PyTorch 1.13; .ci/deps installs it into .venv):
  - BertModel, BertForSequenceClassification (model_type "bert");
  - DistilBertModel, DistilBertForSequenceClassification ("distilbert");
  - RobertaModel, RobertaForSequenceClassification ("roberta"), for
    sequences padded after the text (see below);
  - ViTModel, ViTForImageClassification (model_type "vit").
Other model types are refused, naming config.model_type.

RoBERTa counts positions from the first token that is not the pad id
(position of token t: pad_token_id + 1 + t while no pad id came before it).
exitrt's positions are fixed per index, pad_token_id + 1 + t, which is the
same for every token of a text padded after it (the tokenizer's default,
models/tokenize_text.py's only choice for RoBERTa) with the pad id; a
left-padded RoBERTa sequence would get other positions than in HF, so the
exporter refuses golden inputs padded so, and the runtime cannot tell.

What the format computes and the config may say otherwise is checked
first; a config the format cannot express is refused with ExportError
naming the config field: hidden_act other than gelu (exact), gelu_python
or relu (the tanh GELU of gelu_new and gelu_pytorch_tanh is not a format
layer), position_embedding_type other than "absolute" (relative positions),
is_decoder / add_cross_attention, pruned_heads, a max_position_embeddings
smaller than the tokens asked for, a ViT's num_channels above 4 or an image
size that is not a whole number of patches.

The layers: BERT's embeddings become token_embed (word table, position rows
0..T-1, token-type row 0 as the segment vector: exitrt takes no segment ids,
so text goes in as one segment) and layer_norm; each BertLayer a post-LN
encoder_block (query, key and value stacked as in_weight; layer_norm_eps as
HF computes it); ViT's embeddings patch_embed (projection, [CLS], position
table) and each ViTLayer a pre-LN encoder_block. The backbone's layers are
named "embeddings...", "encoder.layer.0", "encoder.layer.1", ...

Exits: {i: (head, policy)} with i the 0-based encoder layer whose output
the head reads (hidden_states[i + 1] in HF's terms), i < num_hidden_layers - 1.
A head is
  - DeeBERT's highway (a module with children `pooler`, a BertPooler, and
    `classifier`, a Linear; BertHighway below is DeeBERT's own): pooler on
    token 0, then the classifier;
  - a Linear (PABEE's per-layer classifier): the model's own pooler applied
    to that layer's output, then the Linear, as PABEE computes it;
  - or any head models/export.py writes (an nn.Sequential starting with
    models/transformer.py's TokenPool), run with export.call.
The final exit is the model's own classifier (BertForSequenceClassification:
pooler, classifier; ViTForImageClassification: [CLS], layernorm,
classifier), or `final`, a head as above reading the last layer.

Policies: DeeBERT's entropy rule is policy {"type": "entropy", "threshold":
early_exit_entropy}. PABEE's patience p (leave once the prediction has
stayed the same for p layers after the one where it appeared: p + 1 equal
argmaxes in a row) is exitrt's patience threshold p + 1: pabee_exits()
converts it.

The self-check runs Hugging Face's own forward (input_ids and
attention_mask as integers, output_hidden_states) and the heads' own
forwards, and compares every exit with the written graph; the golden file
holds those outputs. One difference is by definition: a row with no
attended token is NaN in exitrt (FORMAT.md, "Token inputs"), while HF's
additive mask lets it attend to every padded token alike; the reference
gives such rows NaN logits, so the golden file says what exitrt computes.

Needs transformers (and its tokenizers, huggingface_hub, safetensors);
nothing is downloaded: checkpoints are read from local directories.
"""
import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

try:  # models/ on sys.path (the scripts and tests), or models imported as a package
    import export as ex
    import transformer as tx
except ImportError:  # pragma: no cover
    from . import export as ex
    from . import transformer as tx

ExportError = ex.ExportError
# config.hidden_act values the format computes (encoder_block's activation)
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "relu": "relu"}
# per model_type: the base model's attribute, the config field of the
# activation, whether it reads text
MODEL_TYPES = {"bert": ("bert", "hidden_act", True),
               "distilbert": ("distilbert", "activation", True),
               "roberta": ("roberta", "hidden_act", True),
               "vit": ("vit", "hidden_act", False)}


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ExportError("models/hf.py needs the transformers package (4.35.x with Debian's "
                          "PyTorch 1.13; .ci/deps installs it into .venv)") from e
    return transformers


class BertHighway(nn.Module):
    """DeeBERT's highway exit (Xin et al. 2020, modeling_highway_bert.py):
    BERT's pooler on the layer's token 0, dropout, a classifier. Its
    forward takes the layer's outputs as DeeBERT passes them, a tuple whose
    first item is the hidden states, and returns (logits, pooled)."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertPooler
        self.pooler = BertPooler(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, encoder_outputs):
        pooled_output = self.pooler(encoder_outputs[0])
        logits = self.classifier(self.dropout(pooled_output))
        return logits, pooled_output


# ---------------------------------------------------------------------------
# the config: what the format cannot express is refused, naming the field


def check_config(config, tokens=None):
    """Raises ExportError naming the config field the format cannot express."""
    mt = getattr(config, "model_type", None)
    if mt not in MODEL_TYPES:
        raise ExportError(f"config.model_type = {mt!r}: models/hf.py exports "
                          f"{', '.join(MODEL_TYPES)} (their Model and "
                          "ForSequenceClassification / ForImageClassification classes)")
    field = MODEL_TYPES[mt][1]
    act = getattr(config, field, None)
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ExportError(f"config.{field} = {act!r}: exitrt's encoder_block computes "
                          f"{', '.join(sorted(ACTIVATIONS))} (the exact GELU, or ReLU); the "
                          "tanh approximation (gelu_new, gelu_pytorch_tanh) and others are not "
                          "in the model format")
    for field in ("is_decoder", "add_cross_attention"):
        if getattr(config, field, False):
            raise ExportError(f"config.{field} = True: exitrt runs encoders (bidirectional "
                              "self-attention) only")
    if getattr(config, "pruned_heads", None):
        raise ExportError(f"config.pruned_heads = {config.pruned_heads}: attention heads of "
                          "different counts per layer are not in the model format")
    if config.hidden_size % config.num_attention_heads:
        raise ExportError(f"config.num_attention_heads = {config.num_attention_heads} does "
                          f"not divide config.hidden_size = {config.hidden_size}")
    if MODEL_TYPES[mt][2]:
        pe = getattr(config, "position_embedding_type", "absolute")
        if pe != "absolute":
            raise ExportError(f"config.position_embedding_type = {pe!r}: relative position "
                              "embeddings are not in the model format (absolute only)")
        first = position_offset(config)
        if tokens is not None and config.max_position_embeddings < first + tokens:
            raise ExportError(f"config.max_position_embeddings = "
                              f"{config.max_position_embeddings}: fewer positions than the "
                              f"{tokens} tokens asked for"
                              + (f" (from position {first} on)" if first else ""))
    else:
        if config.num_channels > 4:
            raise ExportError(f"config.num_channels = {config.num_channels}: exitrt takes "
                              "1..4 input channels")
        (ih, iw), (ph, pw) = _pair(config.image_size), _pair(config.patch_size)
        if ih % ph or iw % pw:
            raise ExportError(f"config.image_size = {config.image_size} is not a whole "
                              f"number of config.patch_size = {config.patch_size} patches")


def position_offset(config):
    """The position of token 0: RoBERTa's pad_token_id + 1, else 0."""
    return config.pad_token_id + 1 if config.model_type == "roberta" else 0


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


# ---------------------------------------------------------------------------
# HF modules -> the modules models/export.py writes (sharing their weights)


def _bias(lin):
    return lin.bias if lin.bias is not None else torch.zeros(lin.out_features)


def _encoder_layer(qkv, out_dense, ln1, ff1, ff2, ln2, heads, act, norm_first):
    """One HF encoder layer as an nn.TransformerEncoderLayer (batch first):
    qkv the query, key and value Linears; the other arguments are HF's own
    modules, shared. Written by export.py as an encoder_block."""
    q, k, v = qkv
    d = q.in_features
    layer = nn.TransformerEncoderLayer(d, heads, ff1.out_features, dropout=0.0,
                                       activation=act, batch_first=True, norm_first=norm_first)
    with torch.no_grad():
        a = layer.self_attn
        a.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        a.in_proj_bias.copy_(torch.cat([_bias(q), _bias(k), _bias(v)]))
        a.out_proj.weight.copy_(out_dense.weight)
        a.out_proj.bias.copy_(_bias(out_dense))
    layer.linear1, layer.linear2, layer.norm1, layer.norm2 = ff1, ff2, ln1, ln2
    return layer


def _base(model):
    """(the base model, its classifier or None) of a transformers model."""
    mt = model.config.model_type
    attr = MODEL_TYPES[mt][0]
    base = getattr(model, attr, None) if hasattr(model, "classifier") else model
    if base is None or not hasattr(base, "embeddings") or not (
            hasattr(base, "encoder") or hasattr(base, "transformer")):
        raise ExportError(f"{type(model).__name__}: neither a {mt} base model nor a "
                          f"classifier holding one as .{mt}")
    return base, getattr(model, "classifier", None) if base is not model else None


def _backbone(model, tokens):
    """The backbone nn.Sequential: embeddings, encoder.layer.0, ..."""
    cfg = model.config
    base, _ = _base(model)
    mt = cfg.model_type
    act = ACTIVATIONS[getattr(cfg, MODEL_TYPES[mt][1])]
    layers = OrderedDict()
    nh = cfg.num_attention_heads
    for i, L in enumerate(base.transformer.layer if mt == "distilbert" else base.encoder.layer):
        if mt == "distilbert":  # post-LN
            a = L.attention
            layers[str(i)] = _encoder_layer((a.q_lin, a.k_lin, a.v_lin), a.out_lin,
                                            L.sa_layer_norm, L.ffn.lin1, L.ffn.lin2,
                                            L.output_layer_norm, nh, act, False)
            continue
        at = L.attention
        if mt in ("bert", "roberta"):  # post-LN
            a = at.self
            layers[str(i)] = _encoder_layer((a.query, a.key, a.value), at.output.dense,
                                            at.output.LayerNorm, L.intermediate.dense,
                                            L.output.dense, L.output.LayerNorm, nh, act, False)
        else:  # ViT: pre-LN
            a = at.attention
            layers[str(i)] = _encoder_layer((a.query, a.key, a.value), at.output.dense,
                                            L.layernorm_before, L.intermediate.dense,
                                            L.output.dense, L.layernorm_after, nh, act, True)
    e = base.embeddings
    if MODEL_TYPES[mt][2]:
        tt = getattr(e, "token_type_embeddings", None)
        te = tx.TokenEmbedding(cfg.vocab_size, cfg.hidden_size, tokens, position=True,
                               segment=tt is not None)
        te.word = e.word_embeddings
        first = position_offset(cfg)
        with torch.no_grad():
            te.position = nn.Parameter(e.position_embeddings.weight[first:first + tokens].clone())
            if tt is not None:
                te.segment = nn.Parameter(tt.weight[0].clone())
        emb = nn.Sequential(OrderedDict(tokens=te, LayerNorm=e.LayerNorm))
    else:
        pe = e.patch_embeddings
        emb = tx.PatchEmbed(cfg.num_channels, cfg.hidden_size, _pair(cfg.patch_size),
                            _pair(cfg.image_size))
        emb.proj = pe.projection
        with torch.no_grad():
            emb.class_token = nn.Parameter(e.cls_token.reshape(-1).clone())
            emb.position = nn.Parameter(e.position_embeddings.reshape(
                -1, cfg.hidden_size).clone())
    return nn.Sequential(OrderedDict(
        embeddings=emb, encoder=nn.Sequential(OrderedDict(layer=nn.Sequential(layers)))))


def _is_highway(head):
    ch = dict(head.named_children())
    return (isinstance(ch.get("classifier"), nn.Linear) and hasattr(ch.get("pooler"), "dense")
            and isinstance(ch["pooler"].dense, nn.Linear))


def _head(model, head, what):
    """(the module export.py writes, f(hidden_states [N, T, D], mask) ->
    logits: the head's own forward) of an exit head."""
    base, _ = _base(model)
    if _is_highway(head):
        act = getattr(head.pooler, "activation", None)
        if not isinstance(act, nn.Tanh):
            raise ExportError(f"{what}: its pooler's activation is {type(act).__name__}; "
                              "BERT's pooler is dense then Tanh")
        mod = nn.Sequential(OrderedDict(pool=tx.TokenPool("first"), pooler=head.pooler.dense,
                                        tanh=nn.Tanh(), classifier=head.classifier))
        # DeeBERT's forward where the module has it, else pooler then classifier
        if isinstance(head, BertHighway) or type(head).__name__ == "BertHighway":
            return mod, lambda h, mask: head((h,))[0]
        return mod, lambda h, mask: head.classifier(head.pooler(h))
    if isinstance(head, nn.Linear):
        pooler = getattr(base, "pooler", None)
        if pooler is None or not isinstance(getattr(pooler, "dense", None), nn.Linear):
            raise ExportError(f"{what}: a Linear head reads the model's pooler (PABEE), and "
                              f"this {type(base).__name__} has none (add_pooling_layer=False)")
        if not isinstance(getattr(pooler, "activation", None), nn.Tanh):
            raise ExportError(f"{what}: the model's pooler activation is "
                              f"{type(pooler.activation).__name__}, not Tanh")
        mod = nn.Sequential(OrderedDict(pool=tx.TokenPool("first"), pooler=pooler.dense,
                                        tanh=nn.Tanh(), classifier=head))
        return mod, lambda h, mask: head(pooler(h))
    if isinstance(head, nn.Sequential):
        return head, lambda h, mask: ex.call(head, h, mask)
    raise ExportError(f"{what}: a {type(head).__name__}; a DeeBERT highway (pooler and "
                      "classifier), a Linear (PABEE, on the model's pooler) or an "
                      "nn.Sequential export.py writes")


def _final(model, final):
    """(module, f(hidden_states, mask) or None: the model's own forward) of
    the final exit."""
    base, classifier = _base(model)
    if final is not None:
        return _head(model, final, "final head")
    if classifier is None:
        raise ExportError(f"{type(model).__name__} has no classifier: give final=, a head "
                          "reading the last layer (a Linear on the pooler, a DeeBERT "
                          "highway, ...)")
    mt = model.config.model_type
    if mt == "roberta":  # RobertaClassificationHead: dense, tanh, out_proj on token 0
        if not (isinstance(getattr(classifier, "dense", None), nn.Linear)
                and isinstance(getattr(classifier, "out_proj", None), nn.Linear)):
            raise ExportError(f"{type(model).__name__}.classifier is a "
                              f"{type(classifier).__name__}, not RoBERTa's classification head")
        return nn.Sequential(OrderedDict(pool=tx.TokenPool("first"), dense=classifier.dense,
                                         tanh=nn.Tanh(), out_proj=classifier.out_proj)), None
    if not isinstance(classifier, nn.Linear):
        raise ExportError(f"{type(model).__name__}.classifier is a "
                          f"{type(classifier).__name__} (config.num_labels = "
                          f"{model.config.num_labels}?); a Linear expected")
    if mt == "distilbert":  # pre_classifier, ReLU, classifier on token 0
        return nn.Sequential(OrderedDict(pool=tx.TokenPool("first"),
                                         pre_classifier=model.pre_classifier, relu=nn.ReLU(),
                                         classifier=classifier)), None
    if mt == "bert":
        if getattr(base, "pooler", None) is None:
            raise ExportError(f"{type(model).__name__}: its {type(base).__name__} has no "
                              "pooler for the classifier")
        return nn.Sequential(OrderedDict(pool=tx.TokenPool("first"), pooler=base.pooler.dense,
                                         tanh=nn.Tanh(), classifier=classifier)), None
    return nn.Sequential(OrderedDict(pool=tx.TokenPool("first"), layernorm=base.layernorm,
                                     classifier=classifier)), None


# ---------------------------------------------------------------------------
# export


def input_norm_of(path):
    """exitrt's input_norm (scale, mean, std) from a ViT checkpoint's
    preprocessor_config.json (ViTImageProcessor: rescale, then normalise),
    or None when the directory has none."""
    p = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        pc = json.load(f)
    norm = {}
    if pc.get("do_rescale", True):
        norm["scale"] = float(pc.get("rescale_factor", 1 / 255))
    if pc.get("do_normalize", True):
        norm["mean"] = [float(v) for v in pc.get("image_mean", [0.5])]
        norm["std"] = [float(v) for v in pc.get("image_std", [0.5])]
    return norm


def export_hf(model, out_dir, tokens=None, exits=None, final=None, name=None,
              golden_inputs=None, input_norm=None, check=True, check_inputs=None):
    """Writes model.json, model.safetensors (and golden.safetensors with
    golden_inputs) for a transformers model (the module docstring says
    which). tokens: T for a text model (its input rows [N, 2, T]); a ViT's
    input shape is its config's. exits {layer index: (head, policy)};
    final: the final head when the model has no classifier of its own.
    input_norm: a ViT's (scale, mean, std); default none (pixel values as
    HF's forward takes them). Returns the model.json dict."""
    cfg = model.config
    check_config(cfg, tokens)
    if golden_inputs is not None and cfg.model_type == "roberta":
        check_roberta_rows(cfg, golden_inputs, "golden_inputs")
    text = MODEL_TYPES[cfg.model_type][2]
    if text:
        if tokens is None:
            raise ExportError(f"{cfg.model_type}: give tokens=T (the sequence length)")
        shape = {"tokens": int(tokens)}
    else:
        if tokens is not None:
            raise ExportError("tokens: a ViT takes images; its input shape is its config's")
        shape = (cfg.num_channels,) + _pair(cfg.image_size)
    model.eval()
    base, _ = _base(model)
    nl = cfg.num_hidden_layers
    if check_inputs is not None and cfg.model_type == "roberta":
        check_roberta_rows(cfg, check_inputs, "check_inputs")
    backbone = _backbone(model, tokens)
    ex_mods, ex_fns = {}, []
    for i in sorted(exits or {}):
        spec = exits[i]
        head, policy, conf = ex.exit_spec(spec)
        if conf is not None:
            raise ExportError(f"exit at layer {i}: confidence heads are not taken from a "
                              "Hugging Face model")
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < nl - 1:
            raise ExportError(f"exit at layer {i!r}: an encoder layer index 0..{nl - 2} "
                              "(the last layer's output goes to the final head)")
        mod, fn = _head(model, head, f"exit at layer {i}")
        ex_mods[f"encoder.layer.{i}"] = (mod, policy)
        ex_fns.append((i, fn))
    final_mod, final_fn = _final(model, final)
    last = [m for m in final_mod.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ExportError("final head: no Linear giving the classes")
    k = last[-1].out_features
    inp = dict(input_norm or {}) if not text else {}

    def reference(x):
        """HF's own forward on the raw rows: ([logits] per exit, final last),
        [None]*."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        with torch.no_grad():
            if text:
                ids, mask = tx.split_tokens(x)
                bad = (ids.float() != x[:, 0]) | (ids < 0) | (ids >= cfg.vocab_size)
                if bad.any():
                    r, t = (int(v) for v in bad.nonzero()[0])
                    raise ExportError(f"self-check input row {r} token {t}: id "
                                      f"{float(x[r, 0, t])} is not in [0, {cfg.vocab_size})")
                kw = dict(input_ids=ids, attention_mask=mask.long())
            else:
                kw = dict(pixel_values=ex._normalise(x.numpy(), inp))
                mask = None
            out = base(**kw, output_hidden_states=True, return_dict=True)
            hs = out.hidden_states
            logits = [fn(hs[i + 1], mask) for i, fn in ex_fns]
            if final_fn is not None:
                logits.append(final_fn(hs[-1], mask))
            else:
                logits.append(model(**kw, return_dict=True).logits)
            logits = [z.reshape(z.shape[0], -1).float().numpy() for z in logits]
            if text:  # FORMAT.md: no attended token, NaN logits (HF: uniform attention)
                empty = ~mask.any(1).numpy()
                for z in logits:
                    z[empty] = np.nan
        return logits, [None] * len(logits)

    if check_inputs is None and text:
        check_inputs = self_check_tokens(cfg, tokens)
    return ex.export(backbone, ex_mods, final_mod, out_dir, shape, k,
                     input_norm=None if text else input_norm,
                     name=name or f"hf-{cfg.model_type}", golden_inputs=golden_inputs,
                     check=check, reference=reference, check_inputs=check_inputs)


def self_check_tokens(cfg, tokens, n=6, seed=0):
    """Rows [n, 2, T] for the self-check: random ids in the vocabulary, a
    full row, rows padded after the text, a left-padded row (token 0
    padded: token_pool first reads it all the same; not for RoBERTa) and a
    row with no attended token."""
    x = ex.random_tokens(n, tokens, cfg.vocab_size, seed=seed)
    if n >= 3 and tokens >= 2:
        x[1, 1] = np.arange(tokens) >= tokens // 2  # left padded
        x[2, 1] = 0  # no attended token: NaN on both sides
    if cfg.model_type == "roberta":  # the text first, the pad id only after it
        pad = cfg.pad_token_id
        x[1, 1] = np.arange(tokens) < tokens // 2
        x[:, 0][x[:, 0] == pad] = (pad + 1) % cfg.vocab_size
        x[:, 0][x[:, 1] == 0] = pad
    return x


def check_roberta_rows(cfg, x, what):
    """RoBERTa's positions are exitrt's only where the pad id comes after
    the text (module docstring): refuses rows with a pad id or a padded
    token before an attended one."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = np.stack([x, np.ones_like(x)], 1)
    pad = cfg.pad_token_id
    for r in range(len(x)):
        att = np.nonzero(x[r, 1])[0]
        if not len(att):
            continue
        before = np.arange(att[-1] + 1)
        bad = before[(x[r, 0, before] == pad) | (x[r, 1, before] == 0)]
        if len(bad):
            raise ExportError(f"{what} row {r} token {int(bad[0])}: a pad id or padding "
                              "before the text's last token; RoBERTa counts positions from "
                              "the first non-pad token, exitrt by index, so a RoBERTa "
                              "sequence must be padded after its text (right padding)")


def pabee_exits(classifiers, patience):
    """PABEE's per-layer classifiers [Linear] * num_hidden_layers and its
    patience p -> (exits {i: (Linear, patience policy)} for every layer but
    the last, the last classifier as the final head). PABEE leaves at the
    layer where the prediction has not changed for p layers (p + 1 equal
    argmaxes in a row): exitrt's patience threshold p + 1."""
    p = int(patience)
    if p != patience or p < 0:
        raise ExportError(f"PABEE patience {patience!r}: an integer >= 0")
    pol = {"type": "patience", "threshold": p + 1}
    return {i: (c, dict(pol)) for i, c in enumerate(classifiers[:-1])}, classifiers[-1]


def deebert_exits(highways, threshold, policy="entropy"):
    """DeeBERT's highways (one per layer; the last layer's is not used:
    the model's classifier is the final exit) -> exits {i: (highway,
    policy)}; DeeBERT's rule is entropy < early_exit_entropy."""
    return {i: (h, {"type": policy, "threshold": threshold})
            for i, h in enumerate(highways[:-1])}


# ---------------------------------------------------------------------------
# checkpoint directories


def read_state(path):
    """The state dict of a checkpoint directory (model.safetensors or
    pytorch_model.bin)."""
    st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        from safetensors.torch import load_file
        return load_file(st)
    if os.path.isfile(pt):
        return torch.load(pt, map_location="cpu", weights_only=True)  # tensors, no code
    raise ExportError(f"{path}: no model.safetensors or pytorch_model.bin (sharded "
                      "checkpoints are not read)")


def load_checkpoint(path, policy=None, threshold=None, patience=None):
    """(model, exits, final) of a save_pretrained directory, local files
    only: the model (BertForSequenceClassification where the checkpoint
    holds a classifier, else BertModel; ViTForImageClassification or
    ViTModel), and the exit heads the checkpoint holds as DeeBERT
    (bert.encoder.highway.<i>.{pooler.dense,classifier}) or PABEE
    (classifiers.<i>) write them. DeeBERT exits get policy (default
    entropy) with threshold (default 0.5); PABEE's patience (default 1)
    becomes exitrt's patience threshold + 1; the last PABEE classifier is
    the final head."""
    trf = _transformers()
    trf.logging.set_verbosity_error()  # the highway weights are "unused": they are ours
    cfg = trf.AutoConfig.from_pretrained(path, local_files_only=True)
    check_config(cfg)
    state = read_state(path)
    prefix = MODEL_TYPES[cfg.model_type][0] + "."
    head = any(k.startswith("classifier.") for k in state)
    cls = {"bert": (trf.BertModel, trf.BertForSequenceClassification),
           "distilbert": (trf.DistilBertModel, trf.DistilBertForSequenceClassification),
           "roberta": (trf.RobertaModel, trf.RobertaForSequenceClassification),
           "vit": (trf.ViTModel, trf.ViTForImageClassification)}[cfg.model_type][head]
    model = cls.from_pretrained(path, local_files_only=True)
    model.eval()
    hw = sorted({int(k.split(".")[3]) for k in state
                 if k.startswith(prefix + "encoder.highway.")})
    pb = sorted({int(k.split(".")[1]) for k in state if k.startswith("classifiers.")})
    exits, final = {}, None
    if hw:
        heads = []
        for i in hw:
            h = BertHighway(model.config)
            p = f"{prefix}encoder.highway.{i}."
            h.load_state_dict({k[len(p):]: v for k, v in state.items() if k.startswith(p)})
            heads.append(h.eval())
        exits = deebert_exits(heads, 0.5 if threshold is None else threshold,
                              policy or "entropy")
    elif pb:
        cls_ = []
        for i in pb:
            w = state[f"classifiers.{i}.weight"]
            c = nn.Linear(w.shape[1], w.shape[0])
            c.load_state_dict({"weight": w, "bias": state[f"classifiers.{i}.bias"]})
            cls_.append(c)
        exits, final = pabee_exits(cls_, 1 if patience is None else patience)
    return model, exits, final


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export a Hugging Face checkpoint directory "
                                 "(BERT, ViT; DeeBERT or PABEE exit heads) to exitrt.")
    ap.add_argument("checkpoint", help="a save_pretrained directory (config.json and weights)")
    ap.add_argument("out", help="the exitrt model directory to write")
    ap.add_argument("--tokens", type=int, help="T, the sequence length (text models)")
    ap.add_argument("--policy", help="DeeBERT exits' policy type (default entropy)")
    ap.add_argument("--threshold", type=float, help="DeeBERT exits' threshold (default 0.5)")
    ap.add_argument("--patience", type=int, help="PABEE's patience (default 1; exitrt's "
                    "patience threshold is one more)")
    ap.add_argument("--name", help="the model's name (default the checkpoint's directory)")
    a = ap.parse_args(argv)
    try:
        model, exits, final = load_checkpoint(a.checkpoint, a.policy, a.threshold, a.patience)
        norm = input_norm_of(a.checkpoint) if model.config.model_type == "vit" else None
        m = export_hf(model, a.out, tokens=a.tokens, exits=exits, final=final,
                      name=a.name or os.path.basename(os.path.abspath(a.checkpoint)),
                      input_norm=norm)
    except ExportError as e:
        print(f"hf.py: {e}", file=sys.stderr)
        return 1
    print(f"{a.out}: {len(m['backbone'])} backbone layers, exits "
          f"{[(e['after'], e['policy']['type'], e['policy']['threshold']) for e in m['exits']]}"
          f", {m['num_classes']} classes; self-check against the transformers forward: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
