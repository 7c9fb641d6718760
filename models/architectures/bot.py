"""``bot``: backbone → global average pooling → plain or BNNeck head (the Bag of Tricks model).

Outputs ``f_t`` (pooled, what the metric losses see), ``f_i`` (after the BNNeck; equal to f_t
with the plain head) and, in training, ``logits``. The test feature is ``f_i`` with the BNNeck,
``f_t`` without, as the reference evaluates.

Options (``BotParams``, written flat in the ``model`` section; every default builds the BoT model
exactly as before the options existed — same parameters, same weights, same hashes):

- ``dropout`` (Geng et al., docs/geng.md): standard dropout with this rate between the feature and
  the identity classifier (f_t with the plain head, f_i with the BNNeck); only the logits see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reidbench.models.architectures import Architecture


@dataclass(frozen=True)
class BotParams:
    # --- Geng et al. ---
    dropout: float = 0.0  # rate of the standard dropout before the identity classifier (0 = none)

    def validate(self, where: str = "model") -> None:
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{where}.dropout={self.dropout!r} is invalid; valid: a rate in [0, 1)")


def build(model: Any, num_classes: int):
    from reidbench.models.architectures import arch_params
    from reidbench.models.build import build_model

    params: BotParams = arch_params(model)
    net = build_model(model.backbone, num_classes=num_classes, neck=model.neck, last_stride=model.last_stride,
                      pretrained=model.pretrained, weights_path=model.weights_path, dropout=params.dropout)
    net.feature_dims = {"f_t": net.feat_dim, "f_i": net.feat_dim}
    net.test_feature = "f_i" if model.neck == "bnneck" else "f_t"
    net.module_groups = {"backbone": ("backbone",), "head": ("head",), "pretrained": ("backbone",), "new": ("head",)}
    if params.dropout:  # recorded only when set, so the stored description of a BoT model is unchanged
        net.reid_info["classifier_dropout"] = params.dropout
    return net


ARCH = Architecture(name="bot", summary="backbone + global average pooling + plain or BNNeck head (f_t, f_i, logits)",
                    build=build, params=BotParams)
