#!/usr/bin/env python3
"""fmnist-cnn-conf: the forum's two-block CNN (conv 16 -> conv 32) with an
early exit after block 1 that decides with a learned confidence head.

block1: Conv 1->16 5x5 pad 2, BN, ReLU, MaxPool 2      -> 16x14x14
  exit1: classifier Flatten, Linear 3136->10
         confidence Flatten, Linear 3136->1, Sigmoid (policy confidence_head)
block2: Conv 16->32 5x5 pad 2, BN, ReLU, MaxPool 2     -> 32x7x7
final:  Flatten, Linear 1568->10
Joint training, exit loss weights 0.5 / 1, Adam + OneCycle; the confidence
head is trained with BCE against "exit1's prediction is correct" on detached
features (weight 0.5).

    /usr/bin/python3 models/train_cnn_conf.py      # writes models/fmnist-cnn-conf/
"""
import torch.nn as nn

import fmnist


def build():
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 5, padding=2), nn.BatchNorm2d(o),
                             nn.ReLU(), nn.MaxPool2d(2))
    backbone = nn.Sequential()
    backbone.add_module("block1", block(1, 16))
    backbone.add_module("block2", block(16, 32))
    head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    conf = nn.Sequential(nn.Flatten(), nn.Linear(16 * 14 * 14, 1), nn.Sigmoid())
    exits = {"block1": (head, {"type": "confidence_head", "threshold": 0.9,
                               "name": "exit1"}, conf)}
    final = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    return fmnist.MultiExit(backbone, exits, final)


if __name__ == "__main__":
    fmnist.main(build, "fmnist-cnn-conf", __doc__, epochs=8, batch_size=128, lr=2e-3,
                loss_weights=[0.5, 1.0])
