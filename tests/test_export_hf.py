#!/usr/bin/env python3
"""Hugging Face checkpoints -> models/hf.py -> the exitrt CLI.

    .venv/bin/python tests/test_export_hf.py EXITRT_BINARY WORK_DIR

Tiny random-init `transformers` models, saved with save_pretrained and read
back from those directories (local files only, as users have them):
  - a BERT classifier with DeeBERT highways (bert.encoder.highway.<i>, as
    DeeBERT's checkpoints hold them) and its own tokenizer (a BertTokenizerFast
    on a vocabulary the test writes), GELU;
  - a BERT with PABEE per-layer classifiers (classifiers.<i>), ReLU;
  - a ViT image classifier (with its preprocessor_config.json) given exit
    heads on its layers;
  - a DistilBERT classifier with heads of one's own (nn.Sequential);
  - a RoBERTa classifier with PABEE classifiers on RobertaModel's pooler,
    on rows padded after the text with the pad id (RoBERTa's positions:
    left-padded rows are refused, by the exporter and tokenize_text.py).
Each is exported with golden inputs (tokenised texts padded on the right,
texts padded on the left so that token 0 is padding, random ids, and one
row with no attended token) and checked:
  - the golden logits are Hugging Face's forward, recomputed here from the
    checkpoint with plain torch ops for the heads (rel. error < 1e-5);
  - exitrt run, in the full, masked and compacted modes, over the threshold
    sets of tests/test_export.py (spread, and each exit forced), gives the
    exits FORMAT.md's policies give on those logits, their classes and
    logits within 1e-4 relative; a row with no attended token is NaN and
    takes the final head;
  - PABEE: exitrt's exits are those of PABEE's own patience loop, run here
    on HF's logits;
  - text end to end: models/hf.py's command line on the checkpoint, then
    models/tokenize_text.py (run as a script) on a text file, then exitrt
    run, equal to HF's forward on the tokenizer's own output; the token
    file's ids are the vocabulary's, counted by hand;
  - refusals naming the config field (hidden_act gelu_new,
    position_embedding_type, is_decoder, max_position_embeddings,
    model_type) and the missing final head.
Exits 77 ("skipped: ...") when torch or transformers is not installed
(.ci/deps installs transformers into .venv).
"""
import json
import os
import shutil
import subprocess
import sys
import traceback

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import warnings
    # Debian's requests warns of the newer urllib3 that .venv holds
    warnings.filterwarnings("ignore", module="requests")
    import transformers
    from transformers import (BertConfig, BertForSequenceClassification, BertModel,
                              BertPreTrainedModel, BertTokenizerFast, DistilBertConfig,
                              DistilBertForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification, RobertaModel,
                              ViTConfig, ViTForImageClassification, ViTImageProcessor)
except ImportError as e:
    # CTest runs the system python3; transformers lives in the project's .venv
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    if os.path.exists(venv) and not os.environ.get("ERT_TEST_HF_IN_VENV"):
        os.environ["ERT_TEST_HF_IN_VENV"] = "1"
        os.execv(venv, [venv] + sys.argv)
    print(f"skipped: transformers not importable ({e}); .ci/deps installs it into .venv")
    sys.exit(77)

sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import export as ex  # noqa: E402
import hf  # noqa: E402
import tokenize_text  # noqa: E402
import transformer as tx  # noqa: E402
import test_export as te  # noqa: E402

T = 24
WORDS = ("the a film was good bad great awful not very really plot actors music long short "
         "boring fun and but it is this movie story ending").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + WORDS
TEXTS = ["the film was good", "a very bad movie", "not great but fun",
         "the plot is boring and the ending is long", "really awful actors",
         "this story is great", "music", "it is not very good but the actors are fun",
         "the the the the the the the the the the the the the the the the the the the the the "
         "the the the the", ""]


def rel(got, want):
    return te.rel_err(got, want)


def write_tokenizer(d):
    """A BERT WordPiece tokenizer on VOCAB, saved into d (vocab.txt,
    tokenizer.json, ...)."""
    vf = os.path.join(d, "vocab.txt")
    with open(vf, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vf, do_lower_case=True).save_pretrained(d)


def hand_ids(text):
    """[CLS] word ids [SEP], by the vocabulary (every test word is one
    token; words not in it are [UNK])."""
    ids = [VOCAB.index(w) if w in VOCAB else VOCAB.index("[UNK]") for w in text.split()]
    return [VOCAB.index("[CLS]")] + ids[:T - 2] + [VOCAB.index("[SEP]")]


def token_rows(d, n_random, seed):
    """Golden rows [N, 2, T]: TEXTS padded right, TEXTS padded left (token 0
    is padding), random ids with random lengths, one row of padding alone."""
    tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
    rows = []
    for side in ("right", "left"):
        tok.padding_side = side
        e = tok(TEXTS, padding="max_length", truncation=True, max_length=T)
        rows.append(np.stack([np.array(e["input_ids"]), np.array(e["attention_mask"])], 1))
    rnd = ex.random_tokens(n_random, T, len(VOCAB), seed=seed)
    x = np.concatenate(rows + [rnd]).astype(np.float32)
    x[-1, 1] = 0  # no attended token
    return x


def bert_config(act, labels, layers=4):
    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                      num_labels=labels, hidden_act=act, initializer_range=0.25,
                      layer_norm_eps=1e-12)


def spread_layer_norms(model, seed):
    """LayerNorm weights and biases away from 1 and 0 (HF initialises them
    so), so that their export is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


class DeeBertLike(BertForSequenceClassification):
    """A BertForSequenceClassification with DeeBERT's highways where
    DeeBERT's model keeps them (bert.encoder.highway), so save_pretrained
    writes DeeBERT's checkpoint layout."""

    def __init__(self, config):
        super().__init__(config)
        self.bert.encoder.highway = nn.ModuleList(hf.BertHighway(config)
                                                  for _ in range(config.num_hidden_layers))
        self.post_init()


class PabeeLike(BertPreTrainedModel):
    """PABEE's BertForSequenceClassificationWithPabee, its weights laid out
    as PABEE's: bert.*, classifiers.<i> (one Linear per layer, on the pooler)."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifiers = nn.ModuleList(nn.Linear(config.hidden_size, config.num_labels)
                                         for _ in range(config.num_hidden_layers))
        self.post_init()


# ---------------------------------------------------------------------------
# Hugging Face's forward, per exit, recomputed here from the checkpoint


def st(d):
    from safetensors.torch import load_file
    return load_file(os.path.join(d, "model.safetensors"))


@torch.no_grad()
def hf_bert_logits(d, x, kind):
    """[logits [N, K]] per exit, the final last, from checkpoint d by
    transformers' BertModel forward (hidden states per layer) and the
    heads written out: DeeBERT highway i = classifier(tanh(dense(h[:, 0]))),
    PABEE classifier i = Linear(pooler(h)). NaN where no token is attended
    (exitrt's definition; HF attends uniformly there)."""
    w = st(d)
    x = torch.as_tensor(x)
    ids, mask = x[:, 0].long(), (x[:, 1] != 0).long()
    if kind == "deebert":
        model = BertForSequenceClassification.from_pretrained(d, local_files_only=True).eval()
        out = model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        L = model.config.num_hidden_layers
        zs = []
        for i in range(L - 1):
            p = f"bert.encoder.highway.{i}."
            pooled = torch.tanh(hs[i + 1][:, 0] @ w[p + "pooler.dense.weight"].T
                                + w[p + "pooler.dense.bias"])
            zs.append(pooled @ w[p + "classifier.weight"].T + w[p + "classifier.bias"])
        zs.append(model(input_ids=ids, attention_mask=mask).logits)
    else:
        model = BertModel.from_pretrained(d, local_files_only=True).eval()
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        zs = []
        for i, h in enumerate(out.hidden_states[1:]):
            zs.append(model.pooler(h) @ w[f"classifiers.{i}.weight"].T + w[f"classifiers.{i}.bias"])
    zs = [z.numpy().astype(np.float32) for z in zs]
    for z in zs:
        z[mask.sum(1).numpy() == 0] = np.nan
    return zs


def pabee_exits_reference(zs, patience):
    """PABEE's inference loop, per sample: the counter grows while the
    argmax stays the same and restarts at 0 when it changes; the sample
    leaves at the layer where the counter reaches the patience, else at the
    last layer."""
    n = zs[0].shape[0]
    out = np.full(n, len(zs) - 1)
    for s in range(n):
        counter, prev = 0, None
        for i, z in enumerate(zs):
            lab = int(np.argmax(z[s]))
            counter = counter + 1 if prev is not None and lab == prev else 0
            prev = lab
            if counter == patience:
                out[s] = i
                break
    return out


def compare_golden(d_model, zs, label):
    golden, _ = ex.read_safetensors(os.path.join(d_model, "golden.safetensors"))
    model = json.load(open(os.path.join(d_model, "model.json")))
    names = [e["name"] for e in model["exits"]] + [model["final"]["name"]]
    if len(names) != len(zs):
        raise te.Failure(f"{label}: {len(names)} exits written, {len(zs)} in the checkpoint")
    worst = 0.0
    for n, z in zip(names, zs):
        g = np.asarray(golden[f"logits.{n}"])
        nan = np.isnan(z).all(1)
        if not np.array_equal(np.isnan(g).all(1), nan):
            raise te.Failure(f"{label}: exit {n}: NaN rows {np.isnan(g).all(1).nonzero()}, "
                             f"HF {nan.nonzero()}")
        worst = max(worst, rel(g[~nan], z[~nan]))
    if not worst < 1e-5:
        raise te.Failure(f"{label}: golden logits differ from HF's forward by {worst:.3g}")
    return worst


def run_modes(d_model, exe, work, devices, label):
    """exitrt run on the golden inputs of d_model in the full mode, the
    masked mode over the thresholds of model.json, a spread set (about half
    the samples leave at each exit) and, for each exit j, a set sending every
    sample to j, and the compacted mode over the first two: exits as
    FORMAT.md's policies give on the golden (HF's) logits, classes their
    argmax, logits within 1e-4 relative (tests/test_export.py's check_run).
    Returns the report lines and the worst relative error per exit (from
    the sets forcing it)."""
    model = json.load(open(os.path.join(d_model, "model.json")))
    golden = {k: np.asarray(v) for k, v in
              ex.read_safetensors(os.path.join(d_model, "golden.safetensors"))[0].items()}
    exits = model["exits"]
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "input.npy")
    np.save(data, golden["input"])
    sets = [("model.json", {e["name"]: e["policy"]["threshold"] for e in exits}),
            ("spread0.5", te.spread_thresholds(golden, exits, 0.5))]
    sets += [(f"all-at-{j}", te.forcing_thresholds(exits, j)) for j in range(len(exits) + 1)]
    lines, per_exit = [], [0.0] * (len(exits) + 1)
    for device in devices:
        w, _, _ = te.check_run(model, golden, exits, {}, "full", device, exe, d_model, data,
                               work, f"{device}-full")
        lines.append(f"{device} full ok (max rel err {w:.2g})")
        for mode, use in (("masked", sets), ("compacted", sets[:2])):
            worst = 0.0
            for name, thr in use:
                w, counts, unsure = te.check_run(model, golden, exits, thr, mode, device, exe,
                                                 d_model, data, work, f"{device}-{mode}-{name}")
                worst = max(worst, w)
                if name.startswith("all-at-"):
                    j = int(name[7:])
                    per_exit[j] = max(per_exit[j], w)
                elif mode == "masked" and device == devices[0]:
                    lines.append(f"{name}: exits {counts.tolist()}"
                                 + (f" ({unsure} near a threshold)" if unsure else ""))
            lines.append(f"{device} {mode} ok over {len(use)} threshold sets "
                         f"(max rel err {worst:.2g})")
    names = [e["name"] for e in exits] + ["final"]
    lines.append("exitrt vs HF's forward per exit, every sample sent there, classes equal: "
                 + ", ".join(f"{n} {e:.2g}" for n, e in zip(names, per_exit)))
    return lines


# ---------------------------------------------------------------------------
# the cases


def case_deebert(exe, work, devices):
    torch.manual_seed(1)
    ckpt = os.path.join(work, "deebert-ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    m = DeeBertLike(bert_config("gelu", 3)).eval()
    spread_layer_norms(m, 1)
    m.save_pretrained(ckpt)
    write_tokenizer(ckpt)
    x = token_rows(ckpt, 14, seed=3)
    model, exits, final = hf.load_checkpoint(ckpt, threshold=0.9)
    if sorted(exits) != [0, 1, 2] or final is not None:
        raise te.Failure(f"DeeBERT checkpoint: exits {sorted(exits)}, final {final}")
    out = os.path.join(work, "deebert")
    hf.export_hf(model, out, tokens=T, exits=exits, name="deebert", golden_inputs=x)
    zs = hf_bert_logits(ckpt, x, "deebert")
    worst = compare_golden(out, zs, "deebert")
    lines = [f"golden = HF's forward (per exit, max rel err {worst:.2g})"]
    lines += run_modes(out, exe, os.path.join(work, "deebert-run"), devices, "deebert")
    lines += text_end_to_end(exe, ckpt, work)
    return lines


def text_end_to_end(exe, ckpt, work):
    """The README's three commands: hf.py on the checkpoint directory,
    tokenize_text.py (a script of its own) on a text file, exitrt run."""
    out = os.path.join(work, "deebert-cli")
    shutil.rmtree(out, ignore_errors=True)
    if hf.main([ckpt, out, "--tokens", str(T), "--threshold", "0.9"]) != 0:
        raise te.Failure("hf.py's command line failed")
    texts = os.path.join(work, "texts.txt")
    with open(texts, "w") as f:
        f.write("\n".join(TEXTS) + "\n")
    data = os.path.join(work, "texts.npy")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "models", "tokenize_text.py"),
                        ckpt, texts, data, "--tokens", str(T)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if r.returncode != 0:
        raise te.Failure(f"tokenize_text.py: {r.stdout.decode()[-1500:]}")
    x = np.load(data)
    if x.dtype != np.int32 or x.shape != (len(TEXTS), 2, T):
        raise te.Failure(f"tokenize_text.py wrote {x.dtype} {x.shape}")
    for i, t in enumerate(TEXTS):
        want = hand_ids(t)
        got = x[i, 0][x[i, 1] != 0].tolist()
        if got != want or x[i, 1].tolist() != [1] * len(want) + [0] * (T - len(want)) \
                or set(x[i, 0][len(want):].tolist()) - {0}:
            raise te.Failure(f"text {t!r}: ids {x[i, 0].tolist()} mask {x[i, 1].tolist()}, "
                             f"want {want} then [PAD] (0)")
    pred, logits = os.path.join(work, "texts.csv"), os.path.join(work, "texts-logits.npy")
    cmd = [exe, "run", out, "--data", data, "--predictions", pred, "--logits", logits]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if r.returncode != 0:
        raise te.Failure(f"{' '.join(cmd)}: {r.stdout.decode()[-1500:]}")
    rows = sorted(te.read_predictions(pred))
    z = np.load(logits)
    zs = hf_bert_logits(ckpt, x.astype(np.float32), "deebert")
    model = json.load(open(os.path.join(out, "model.json")))
    golden = {f"logits.{e['name']}": zz for e, zz in zip(model["exits"] + [model["final"]], zs)}
    golden["input"] = x
    want, unsure = te.expected(golden, model["exits"], {e["name"]: e["policy"]["threshold"]
                                                        for e in model["exits"]})
    names = [e["name"] for e in model["exits"]] + ["final"]
    worst = 0.0
    for (i, ex_, cls, _), w, u in zip(rows, want, unsure):
        got = names.index(ex_) if ex_ in names else int(ex_)
        if got != w and not u:
            raise te.Failure(f"text {i}: exit {ex_}, HF's logits and the entropy rule say "
                             f"{names[w]}")
        ref = zs[got][i]
        worst = max(worst, rel(z[i:i + 1], ref[None]))
        if cls != int(np.argmax(ref)):
            raise te.Failure(f"text {i}: class {cls}, HF's {int(np.argmax(ref))}")
    if not worst < te.REL_TOL:
        raise te.Failure(f"text end to end: logits differ from HF's by {worst:.3g}")
    counts = np.bincount(want, minlength=len(names)).tolist()
    return [f"text end to end (hf.py, tokenize_text.py, exitrt run): {len(TEXTS)} texts, "
            f"exits {counts}, classes = HF's, max rel err {worst:.2g}; ids = the "
            "vocabulary's"]


def case_pabee(exe, work, devices):
    torch.manual_seed(7)
    ckpt = os.path.join(work, "pabee-ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    m = PabeeLike(bert_config("relu", 4, layers=5)).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # classifiers that disagree from layer to layer now and then
        for c in m.classifiers:
            c.weight.copy_(torch.randn(c.weight.shape, generator=g))
    spread_layer_norms(m, 7)
    m.save_pretrained(ckpt)
    write_tokenizer(ckpt)
    x = token_rows(ckpt, 40, seed=4)
    patience = 1
    model, exits, final = hf.load_checkpoint(ckpt, patience=patience)
    if sorted(exits) != [0, 1, 2, 3] or not isinstance(final, nn.Linear):
        raise te.Failure(f"PABEE checkpoint: exits {sorted(exits)}, final {final}")
    out = os.path.join(work, "pabee")
    mj = hf.export_hf(model, out, tokens=T, exits=exits, final=final, name="pabee",
                      golden_inputs=x)
    if {e["policy"]["threshold"] for e in mj["exits"]} != {patience + 1}:
        raise te.Failure(f"PABEE patience {patience}: thresholds "
                         f"{[e['policy'] for e in mj['exits']]}")
    zs = hf_bert_logits(ckpt, x, "pabee")
    worst = compare_golden(out, zs, "pabee")
    lines = [f"golden = HF's forward (per exit, max rel err {worst:.2g})"]
    lines += run_modes(out, exe, os.path.join(work, "pabee-run"), devices, "pabee")
    # PABEE's own loop on HF's logits decides the exits exitrt takes
    fin = np.isfinite(zs[0]).all(1)
    want = pabee_exits_reference([z[fin] for z in zs], patience)
    data = os.path.join(work, "pabee-input.npy")
    np.save(data, x[fin])
    for mode in ("masked", "compacted"):
        rows, z, _ = te.run_cli(exe, out, data, mode, "cpu", {}, work, f"pabee-own-{mode}")
        names = [e["name"] for e in mj["exits"]] + ["final"]
        got = np.array([names.index(r[1]) if r[1] in names else int(r[1]) for r in sorted(rows)])
        if not np.array_equal(got, want):
            bad = (got != want).nonzero()[0][:5]
            raise te.Failure(f"PABEE {mode}: exits {got[bad]} at rows {bad}, PABEE's loop "
                             f"says {want[bad]}")
    lines.append(f"exits = PABEE's patience loop on HF's logits (patience {patience}): "
                 f"{np.bincount(want, minlength=len(zs)).tolist()}")
    return lines


def case_vit(exe, work, devices):
    torch.manual_seed(3)
    ckpt = os.path.join(work, "vit-ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                    num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                    num_labels=4, initializer_range=0.25, qkv_bias=False)
    m = ViTForImageClassification(cfg).eval()
    spread_layer_norms(m, 3)
    m.save_pretrained(ckpt)
    ViTImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]).save_pretrained(ckpt)
    model, exits, final = hf.load_checkpoint(ckpt)
    g = torch.Generator().manual_seed(5)
    heads = [nn.Sequential(tx.TokenPool("first"), nn.LayerNorm(32, eps=1e-12), nn.Linear(32, 4))
             for _ in range(2)]
    for h in heads:
        with torch.no_grad():
            h[2].weight.copy_(torch.randn(4, 32, generator=g) * 0.4)
    exits = {0: (heads[0], {"type": "entropy", "threshold": 1.0}),
             1: (heads[1], {"type": "patience", "threshold": 2})}
    x = np.round(torch.rand((37, 3, 16, 16), generator=g).numpy() * 255)
    out = os.path.join(work, "vit")
    norm = hf.input_norm_of(ckpt)
    hf.export_hf(model, out, exits=exits, name="vit", golden_inputs=x, input_norm=norm)
    # HF's forward on what ViTImageProcessor gives for these pixels
    proc = ViTImageProcessor.from_pretrained(ckpt, local_files_only=True)
    pix = proc(list(x.transpose(0, 2, 3, 1).astype(np.uint8)), return_tensors="pt",
               do_resize=False)["pixel_values"]
    with torch.no_grad():
        o = model.vit(pixel_values=pix, output_hidden_states=True)
        zs = [heads[i](o.hidden_states[i + 1]).numpy() for i in range(2)]
        zs.append(model(pixel_values=pix).logits.numpy())
    worst = compare_golden(out, zs, "vit")
    lines = [f"golden = HF's forward on ViTImageProcessor's pixels (max rel err {worst:.2g})"]
    lines += run_modes(out, exe, os.path.join(work, "vit-run"), devices, "vit")
    return lines


@torch.no_grad()
def hf_generic_logits(model, base, heads, x, pooler=None):
    """[logits] per exit from transformers' forward: heads[i] (an
    nn.Sequential on tokens, or a Linear on `pooler`) on hidden_states[i+1],
    then the model's own logits; NaN where no token is attended."""
    x = torch.as_tensor(x)
    ids, mask = x[:, 0].long(), (x[:, 1] != 0).long()
    hs = base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    zs = []
    for i, h in enumerate(heads):
        zs.append(h(pooler(hs[i + 1])) if pooler is not None else h(hs[i + 1]))
    zs.append(model(input_ids=ids, attention_mask=mask).logits)
    zs = [z.numpy().astype(np.float32) for z in zs]
    for z in zs:
        z[mask.sum(1).numpy() == 0] = np.nan
    return zs


def case_distilbert(exe, work, devices):
    torch.manual_seed(4)
    ckpt = os.path.join(work, "distilbert-ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    cfg = DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=3, n_heads=4, hidden_dim=64,
                           max_position_embeddings=32, num_labels=3, initializer_range=0.25,
                           activation="gelu")
    m = DistilBertForSequenceClassification(cfg).eval()
    spread_layer_norms(m, 4)
    m.save_pretrained(ckpt)
    write_tokenizer(ckpt)
    model, _, _ = hf.load_checkpoint(ckpt)
    heads = [nn.Sequential(tx.TokenPool("first"), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
             for _ in range(2)]
    exits = {0: (heads[0], {"type": "max_prob", "threshold": 0.6}),
             1: (heads[1], {"type": "margin", "threshold": 0.3})}
    x = token_rows(ckpt, 14, seed=5)
    out = os.path.join(work, "distilbert")
    hf.export_hf(model, out, tokens=T, exits=exits, name="distilbert", golden_inputs=x)
    zs = hf_generic_logits(model, model.distilbert, heads, x)
    worst = compare_golden(out, zs, "distilbert")
    lines = [f"golden = HF's forward (max rel err {worst:.2g})"]
    lines += run_modes(out, exe, os.path.join(work, "distilbert-run"), devices,
                            "distilbert")
    return lines


def case_roberta(exe, work, devices):
    torch.manual_seed(5)
    ckpt = os.path.join(work, "roberta-ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    cfg = RobertaConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=T + 2, num_labels=3, initializer_range=0.25,
                        type_vocab_size=1, pad_token_id=1)
    base = RobertaModel(cfg).eval()
    spread_layer_norms(base, 5)
    base.save_pretrained(ckpt)
    model, _, _ = hf.load_checkpoint(ckpt)
    g = torch.Generator().manual_seed(5)
    cls_ = [nn.Linear(32, 3) for _ in range(3)]
    with torch.no_grad():
        for c in cls_:
            c.weight.copy_(torch.randn(c.weight.shape, generator=g))
    exits, final = hf.pabee_exits(cls_, 1)
    # rows as RoBERTa's tokenizer pads them: <s> text </s>, then the pad id
    rng = np.random.default_rng(6)
    x = np.zeros((30, 2, T), np.float32)
    for r in range(30):
        n = int(rng.integers(3, T + 1)) if r else T
        x[r, 0] = 1
        x[r, 0, :n] = np.concatenate([[0], rng.integers(3, len(VOCAB), n - 2), [2]])
        x[r, 1, :n] = 1
    x[-1, 1] = 0
    x[-1, 0] = 1
    left = x.copy()
    left[3] = np.roll(left[3], T - int(left[3, 1].sum()), axis=1)
    out = os.path.join(work, "roberta")
    te.expect_error(lambda: hf.export_hf(model, out, tokens=T, exits=exits, final=final,
                                         golden_inputs=left),
                    "golden_inputs row 3 token 0", "right padding")
    try:
        tokenize_text.tokenize(ckpt, ["a film"], T, padding_side="left")
        raise te.Failure("tokenize_text.py --padding-side left on RoBERTa was not refused")
    except SystemExit as e:
        if "RoBERTa" not in str(e):
            raise te.Failure(f"tokenize_text.py --padding-side left on RoBERTa: {e}")
    mj = hf.export_hf(model, out, tokens=T, exits=exits, final=final, name="roberta",
                      golden_inputs=x)
    if mj["backbone"][0]["type"] != "token_embed":
        raise te.Failure(f"roberta backbone {mj['backbone'][0]}")
    heads = [nn.Sequential(c) for c in cls_]
    x_t = torch.as_tensor(x)
    with torch.no_grad():
        ids, mask = x_t[:, 0].long(), (x_t[:, 1] != 0).long()
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        zs = [h(model.pooler(hs[i + 1])).numpy() for i, h in enumerate(heads)]
    for z in zs:
        z[mask.sum(1).numpy() == 0] = np.nan
    worst = compare_golden(out, zs, "roberta")
    lines = [f"golden = HF's forward, its positions from pad_token_id + 1 (max rel err "
             f"{worst:.2g}); left padding refused (exporter, tokenize_text.py)"]
    lines += run_modes(out, exe, os.path.join(work, "roberta-run"), devices, "roberta")
    # RobertaForSequenceClassification: its head (dense, tanh, out_proj on
    # token 0) is the final exit
    ckpt2 = os.path.join(work, "roberta-cls-ckpt")
    shutil.rmtree(ckpt2, ignore_errors=True)
    RobertaForSequenceClassification(cfg).eval().save_pretrained(ckpt2)
    model2, exits2, _ = hf.load_checkpoint(ckpt2)
    if type(model2).__name__ != "RobertaForSequenceClassification" or exits2:
        raise te.Failure(f"{ckpt2}: loaded {type(model2).__name__}, exits {exits2}")
    out2 = os.path.join(work, "roberta-cls")
    hf.export_hf(model2, out2, tokens=T, golden_inputs=x)
    with torch.no_grad():
        z = model2(input_ids=ids, attention_mask=mask).logits.numpy()
    z[mask.sum(1).numpy() == 0] = np.nan
    compare_golden(out2, [z], "roberta classifier")
    mj2 = json.load(open(os.path.join(out2, "model.json")))
    golden2 = {k: np.asarray(v) for k, v in
               ex.read_safetensors(os.path.join(out2, "golden.safetensors"))[0].items()}
    np.save(os.path.join(work, "roberta-cls-input.npy"), x)
    w, _, _ = te.check_run(mj2, golden2, [], {}, "full", "cpu", exe, out2,
                           os.path.join(work, "roberta-cls-input.npy"), work, "roberta-cls")
    lines.append(f"RobertaForSequenceClassification (its classification head as the final "
                 f"exit): exitrt = HF's logits (max rel err {w:.2g})")
    return lines


def refusals(work):
    out = os.path.join(work, "refused")

    def bert(**kw):
        c = bert_config("gelu", 2)
        for k, v in kw.items():
            setattr(c, k, v)
        return c
    m = BertForSequenceClassification(bert_config("gelu", 2)).eval()
    for cfg, needles in (
            (bert(hidden_act="gelu_new"), ["config.hidden_act = 'gelu_new'", "tanh"]),
            (bert(position_embedding_type="relative_key"),
             ["config.position_embedding_type = 'relative_key'"]),
            (bert(is_decoder=True), ["config.is_decoder = True"]),
            (bert(max_position_embeddings=16), ["config.max_position_embeddings = 16",
                                                f"{T} tokens"])):
        te.expect_error(lambda: hf.check_config(cfg, T), *needles)
    te.expect_error(lambda: hf.check_config(transformers.GPT2Config()),
                    "config.model_type = 'gpt2'")
    te.expect_error(lambda: hf.check_config(DistilBertConfig(activation="gelu_new")),
                    "config.activation = 'gelu_new'")
    te.expect_error(lambda: hf.check_config(RobertaConfig(max_position_embeddings=T + 1), T),
                    "config.max_position_embeddings", "from position 2 on")
    te.expect_error(lambda: hf.check_config(ViTConfig(num_channels=5)),
                    "config.num_channels = 5")
    te.expect_error(lambda: hf.export_hf(BertModel(bert_config("gelu", 2)), out, tokens=T),
                    "BertModel has no classifier", "final=")
    te.expect_error(lambda: hf.export_hf(m, out, tokens=T, exits={3: (nn.Linear(32, 2), {
        "type": "entropy", "threshold": 1})}), "exit at layer 3", "0..2")
    te.expect_error(lambda: hf.export_hf(m, out, tokens=T, exits={0: (nn.Conv2d(1, 1, 1), {
        "type": "entropy", "threshold": 1})}), "exit at layer 0", "Conv2d")
    # the whole path refuses a relative-position model saved as a checkpoint
    c = bert(position_embedding_type="relative_key_query")
    d = os.path.join(work, "relative-ckpt")
    BertForSequenceClassification(c).save_pretrained(d)
    te.expect_error(lambda: hf.load_checkpoint(d), "config.position_embedding_type")


def main():
    start = te.harness_start(__doc__)
    if start is None:
        return 2
    exe, work, devices = start
    transformers.logging.set_verbosity_error()
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        print(f"FAIL: {exe} is not an executable")
        return 1
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"devices {devices}")
    failed = 0
    for name, fn in (("refusals", lambda: refusals(work) or []),
                     ("deebert", lambda: case_deebert(exe, work, devices)),
                     ("pabee", lambda: case_pabee(exe, work, devices)),
                     ("vit", lambda: case_vit(exe, work, devices)),
                     ("distilbert", lambda: case_distilbert(exe, work, devices)),
                     ("roberta", lambda: case_roberta(exe, work, devices))):
        try:
            lines = fn()
            print(f"{name}: ok")
            for line in lines:
                print(f"  {line}")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"{name}: FAIL: {e}")
            if not isinstance(e, te.Failure):
                traceback.print_exc()
    print(f"{failed} failure(s)" if failed else "all Hugging Face round trips passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
