"""Mancs' "PReLU in place of the ReLU of the last conv layer" (seed 002, §4.3), for any registered backbone.

The last ReLU is found, not hard-coded: the ReLU/ReLU6 *module* that runs last in a probe forward
(eval mode, no grad, BatchNorm statistics untouched). That is ``layer4[-1].act3`` of a timm
ResNet-50 (``act2`` of a BasicBlock: after the residual sum), ``features.18.2`` (ReLU6 of the
1×1 head conv) of MobileNetV2 and ``bn2.act`` of timm's EfficientNet-Lite0. A network whose last
activation module also runs earlier (torchvision's ResNet blocks share one ``relu``) is refused:
swapping it would change every use. A functional activation after the last module is not seen.

The PReLU is PyTorch's default: one learnable slope shared by all channels, initialised at 0.25
(the seed gives neither); it is a new parameter, so it belongs to the ``new`` module group.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATIONS", "last_activation", "replace_last_activation"]

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def last_activation(backbone: nn.Module) -> str:
    """Dotted name of the ReLU/ReLU6 module that runs last in ``backbone``'s forward."""
    calls: list[str] = []
    from reidbench.models.stages import probe_forward

    probe_forward(backbone, [m.register_forward_hook(lambda _m, _i, _o, name=n: calls.append(name))
                             for n, m in backbone.named_modules() if isinstance(m, ACTIVATIONS)])
    if not calls:
        raise ValueError(f"backbone {type(backbone).__name__} runs no ReLU/ReLU6 module: nothing to replace by PReLU")
    last = calls[-1]
    if calls.count(last) > 1:
        raise ValueError(f"backbone {type(backbone).__name__}: its last activation module {last!r} runs "
                         f"{calls.count(last)} times per forward; replacing it would change them all")
    return last


def replace_last_activation(backbone: nn.Module) -> tuple[str, nn.PReLU]:
    """Swap the last ReLU/ReLU6 module for a new ``nn.PReLU()``; returns (its name, the PReLU)."""
    name = last_activation(backbone)
    parent_name, _, child = name.rpartition(".")
    parent = backbone.get_submodule(parent_name) if parent_name else backbone
    prelu = nn.PReLU()
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = prelu
    else:
        setattr(parent, child, prelu)
    return name, prelu
