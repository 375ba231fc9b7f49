#!/usr/bin/env python3
"""fmnist-mlp3: the tutorial's multi-exit MLP on Fashion-MNIST.

784 -> 1024 -> 1024 -> 1024 with ReLU; an exit (Linear 1024 -> 10) after
block 1 and block 2, the final head (Linear 1024 -> 10) after block 3.
Joint training, exit loss weights 0.5 / 0.5 / 1, Adam + OneCycle.

    /usr/bin/python3 models/train_mlp3.py          # writes models/fmnist-mlp3/
"""
import torch.nn as nn

import fmnist


def build():
    def block(i, o):
        return nn.Sequential(nn.Linear(i, o), nn.ReLU())
    backbone = nn.Sequential()
    backbone.add_module("flatten", nn.Flatten())
    backbone.add_module("block1", block(784, 1024))
    backbone.add_module("block2", block(1024, 1024))
    backbone.add_module("block3", block(1024, 1024))
    exits = {
        "block1": (nn.Linear(1024, 10), {"type": "max_prob", "threshold": 0.7, "name": "exit1"}),
        "block2": (nn.Linear(1024, 10), {"type": "max_prob", "threshold": 0.7, "name": "exit2"}),
    }
    return fmnist.MultiExit(backbone, exits, nn.Linear(1024, 10))


if __name__ == "__main__":
    fmnist.main(build, "fmnist-mlp3", __doc__, epochs=8, batch_size=128, lr=1e-3,
                loss_weights=[0.5, 0.5, 1.0])
