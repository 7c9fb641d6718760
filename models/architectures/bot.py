"""``bot``: backbone → global average pooling → plain or BNNeck head (the Bag of Tricks model).

Outputs ``f_t`` (pooled, what the metric losses see), ``f_i`` (after the BNNeck; equal to f_t
with the plain head) and, in training, ``logits``. The test feature is ``f_i`` with the BNNeck,
``f_t`` without, as the reference evaluates.
"""

from __future__ import annotations

from typing import Any

from reidbench.models.architectures import Architecture


def build(model: Any, num_classes: int):
    from reidbench.models.build import build_model

    net = build_model(model.backbone, num_classes=num_classes, neck=model.neck, last_stride=model.last_stride,
                      pretrained=model.pretrained, weights_path=model.weights_path)
    net.feature_dims = {"f_t": net.feat_dim, "f_i": net.feat_dim}
    net.test_feature = "f_i" if model.neck == "bnneck" else "f_t"
    net.module_groups = {"backbone": ("backbone",), "head": ("head",), "pretrained": ("backbone",), "new": ("head",)}
    return net


ARCH = Architecture(name="bot", summary="backbone + global average pooling + plain or BNNeck head (f_t, f_i, logits)",
                    build=build)
