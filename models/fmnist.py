"""Fashion-MNIST data and the joint multi-exit training loop shared by the
training scripts (train_mlp3.py, train_cnn_conf.py, train_resnet.py).

Data: the IDX files (gzipped or not) read with numpy. The training split comes
from Debian's dataset-fashion-mnist package (or --data-dir); the test split
from the copy each bundled model holds in its data/ folder (every path a
model names stays inside its directory, so each exported model gets its own
copy: write_sample_data).

Training is deterministic on the CPU: fixed seeds, a seeded shuffling
generator, torch.use_deterministic_algorithms(True), and a fixed thread count.
The same seed and the same torch build give the same weights.
"""
import gzip
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export as ex  # noqa: E402

TRAIN_DIR = "/usr/share/datasets/fashion-mnist"
TEST_DIR = os.path.join(HERE, "fmnist-resnet", "data")
# Paths written into model.json, relative to the model directory, and the
# files write_sample_data copies there.
SAMPLE_DATA = "data/t10k-images-idx3-ubyte.gz"
SAMPLE_LABELS = "data/t10k-labels-idx1-ubyte.gz"
SAMPLE_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "README.md", "LICENSE")

SCALE = 1.0 / 255.0
MEAN = 0.2860
STD = 0.3530
INPUT_NORM = dict(scale=SCALE, mean=[MEAN], std=[STD])
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path):
    """An IDX file (gzipped or not, told by its magic) as a numpy array."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX type 0x{raw[2]:02x}, only ubyte (0x08) is supported")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values, dims {dims} need {int(np.prod(dims))}")
    return data.reshape(dims).copy()


def load_split(split, data_dir=None):
    """(images uint8 [N,1,28,28], labels int64 [N]) of 'train' or 't10k'."""
    if data_dir is None:
        data_dir = TRAIN_DIR if split == "train" else TEST_DIR
    x = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    return x.reshape(-1, 1, 28, 28), y.astype(np.int64)


def write_sample_data(out_dir):
    """Copies the test split (with its README and licence) into
    out_dir/data/, where SAMPLE_DATA and SAMPLE_LABELS point."""
    dst = os.path.join(out_dir, "data")
    os.makedirs(dst, exist_ok=True)
    for name in SAMPLE_FILES:
        src = os.path.join(TEST_DIR, name)
        if os.path.abspath(src) != os.path.abspath(os.path.join(dst, name)):
            shutil.copyfile(src, os.path.join(dst, name))


def normalize(x_uint8):
    """Raw uint8 images -> the network's input, exactly as model.json says:
    (x * scale - mean) / std, in float32."""
    x = torch.as_tensor(np.asarray(x_uint8)).float()
    return (x * SCALE - MEAN) / STD


def setup(seed, threads=2):
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


class MultiExit(nn.Module):
    """Holds a backbone, its exits and a final head in one module, so the
    optimiser and state_dict see every parameter. exits has the exporter's
    form: {backbone layer name: (head, policy dict, confidence or None)}."""

    def __init__(self, backbone, exits, final_head):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict()
        self.confs = nn.ModuleDict()
        self.after = {}
        self.policies = {}
        for i, (after, spec) in enumerate(exits.items()):
            head, policy, conf = ex.exit_spec(spec)
            name = policy.get("name", f"exit{i + 1}")
            self.heads[name] = head
            if conf is not None:
                self.confs[name] = conf
            self.after[name] = after
            self.policies[name] = {k: v for k, v in policy.items() if k != "name"}
        self.final = final_head if final_head is not None else nn.Identity()

    def exit_names(self):
        """Exit names in backbone order, the final head last."""
        final = None if isinstance(self.final, nn.Identity) else self.final
        g = ex.Graph(self.backbone, self.exits(), final)
        return [e["name"] for e in g.exits] + [g.final_name]

    def exits(self):
        """The exporter's exits argument, exit names kept."""
        return {self.after[n]: (self.heads[n], dict(self.policies[n], name=n),
                                self.confs[n] if n in self.confs else None)
                for n in self.heads}

    def export(self, out_dir, name, golden_inputs=None, **kw):
        final = None if isinstance(self.final, nn.Identity) else self.final
        write_sample_data(out_dir)
        return ex.export(self.backbone, self.exits(), final, out_dir,
                         input_shape=(1, 28, 28), num_classes=10,
                         input_norm=INPUT_NORM, name=name,
                         sample_data=SAMPLE_DATA, sample_labels=SAMPLE_LABELS,
                         golden_inputs=golden_inputs, **kw)

    def forward(self, x, detach_confidence=True):
        """Returns ([logits per exit in order, final last], [confidence or None])."""
        final = None if isinstance(self.final, nn.Identity) else self.final
        return ex.forward_exits(self.backbone, self.exits(), final, x,
                                detach_confidence=detach_confidence)


def train(model, x_train, y_train, epochs, batch_size, loss_weights, seed,
          lr=1e-3, optimizer="adam", weight_decay=0.0, momentum=0.9,
          conf_weight=0.5, augment=None, log=print):
    """Joint training with weighted exit losses (Distiller's --lossweights):
    loss = sum_i w_i * CE(exit_i) [+ conf_weight * BCE(confidence_i, exit_i
    correct)]. The confidence heads see detached features, so they learn to
    predict the exit's correctness without changing the backbone.
    OneCycle learning rate schedule over all steps."""
    n = len(x_train)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    params = model.parameters()
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                              weight_decay=weight_decay)
    else:
        raise ValueError(optimizer)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    y_all = torch.as_tensor(y_train)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot, correct, seen = 0.0, None, 0
        te = time.time()
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = normalize(x_train[idx.numpy()])
            if augment is not None:
                xb = augment(xb, gen)
            yb = y_all[idx]
            logits, confs = model(xb)
            loss = 0.0
            for w, z in zip(loss_weights, logits):
                loss = loss + w * F.cross_entropy(z, yb)
            for z, c in zip(logits, confs):
                if c is not None:
                    ok = (z.detach().argmax(1) == yb).float().unsqueeze(1)
                    loss = loss + conf_weight * F.binary_cross_entropy(
                        c.clamp(1e-6, 1 - 1e-6), ok)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            seen += len(idx)
            c = torch.stack([(z.argmax(1) == yb).sum() for z in logits])
            correct = c if correct is None else correct + c
        accs = " ".join(f"{100.0 * float(v) / seen:.2f}" for v in correct)
        log(f"epoch {epoch + 1}/{epochs} loss {tot / seen:.4f} train acc per exit [{accs}] "
            f"{time.time() - te:.0f}s (total {time.time() - t0:.0f}s)")
    return time.time() - t0


@torch.no_grad()
def evaluate(model, x, y, batch_size=500):
    """Per-exit logits and confidences on (x, y) in eval mode:
    (logits [E, N, K] numpy, confidences {exit index: [N]}, accuracies [E])."""
    model.eval()
    outs, confs = [], {}
    for s in range(0, len(x), batch_size):
        logits, cs = model(normalize(x[s:s + batch_size]))
        outs.append(torch.stack(logits).numpy())
        for i, c in enumerate(cs):
            if c is not None:
                confs.setdefault(i, []).append(c[:, 0].numpy())
    logits = np.concatenate(outs, axis=1)
    confs = {i: np.concatenate(v) for i, v in confs.items()}
    accs = (logits.argmax(2) == np.asarray(y)[None, :]).mean(1) * 100.0
    return logits, confs, accs


def golden_batch(x_test, count=16):
    """The golden inputs: the first `count` test images, raw uint8 values as
    float32 [count,1,28,28]."""
    return np.asarray(x_test[:count], dtype=np.float32)


def finish(model, name, out_dir, x_test, y_test, train_seconds, extra_args=None):
    """Evaluates on the test split, exports the model with golden inputs,
    saves the per-exit test logits for sweep.py, and prints a summary."""
    import sweep
    logits, confs, accs = evaluate(model, x_test, y_test)
    names = model.exit_names()
    print("test accuracy per exit: " +
          ", ".join(f"{n} {a:.2f}%" for n, a in zip(names, accs)))
    model.export(out_dir, name, golden_inputs=golden_batch(x_test))
    np.savez_compressed(os.path.join(out_dir, "test_logits.npz"), logits=logits,
                        labels=np.asarray(y_test),
                        **{f"conf{i}": v for i, v in confs.items()})
    print(f"training time {train_seconds:.0f}s; exported to {out_dir}")
    sweep.report(out_dir)
    return accs


def main(build, name, description, epochs, batch_size, lr, loss_weights,
         optimizer="adam", weight_decay=0.0, augment=None, seed=0, threads=2):
    """Command line of a training script: trains (or, with --export-only,
    loads the checkpoint), then evaluates and exports to models/<name>/."""
    import argparse
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--threads", type=int, default=threads,
                    help="torch CPU threads (the result depends on it: keep the "
                         f"default, {threads}, to reproduce the shipped weights)")
    ap.add_argument("--data-dir", default=TRAIN_DIR,
                    help="directory of the training split's IDX files (default: "
                         "Debian's dataset-fashion-mnist)")
    ap.add_argument("--train-limit", type=int, default=0,
                    help="use only the first N training images (quick checks)")
    ap.add_argument("--out", default=os.path.join(HERE, name))
    ap.add_argument("--export-only", action="store_true",
                    help="skip training: load <out>/checkpoint.pt and export it")
    args = ap.parse_args()
    setup(args.seed, args.threads)
    model = build()
    x_test, y_test = load_split("t10k")
    ckpt = os.path.join(args.out, "checkpoint.pt")
    if args.export_only:
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        seconds = state["seconds"]
    else:
        x_train, y_train = load_split("train", args.data_dir)
        if args.train_limit:
            x_train, y_train = x_train[:args.train_limit], y_train[:args.train_limit]
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"{len(x_train)} training images, epochs {args.epochs}, batch "
              f"{args.batch_size}, lr {args.lr}, {optimizer}, seed {args.seed}, "
              f"torch {torch.__version__}, {args.threads} threads", flush=True)
        seconds = train(model, x_train, y_train, args.epochs, args.batch_size,
                        loss_weights, args.seed, lr=args.lr, optimizer=optimizer,
                        weight_decay=weight_decay, augment=augment,
                        log=lambda s: print(s, flush=True))
        os.makedirs(args.out, exist_ok=True)
        torch.save({"model": model.state_dict(), "seconds": seconds}, ckpt)
    return finish(model, name, args.out, x_test, y_test, seconds)
