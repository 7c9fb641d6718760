"""The training objective: the spec's loss terms, each reading named model outputs, summed by the loop.

``Objective(terms)`` maps ``(outputs, labels)`` to ``{label: weighted loss}``. A term reads one
output, a list, or a glob (``logits_*``, matched against the outputs present, sorted by name);
with several it is applied to each and averaged (``mean``) or summed (``sum``), or the outputs are
concatenated along dim 1 and the term applied once (``concat``). The objective knows no kind: a
term with parameters of its own reports its optimiser through ``own_optimizer()`` and the loop
steps it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

import torch
from torch import nn

from reidbench.models.terms import LOSS_TERMS, OwnOptimizer, TermContext, TrainProgress


@dataclass(frozen=True)
class BoundTerm:
    label: str  # the loss value's name ("id", "triplet", ...)
    reads: tuple[str, ...]
    combine: str
    weight: float
    kind: str = ""


def resolve_reads(patterns: Sequence[str], available: Sequence[str], label: str) -> list[str]:
    """Output names a term reads, in order: exact names as given, globs expanded (sorted)."""
    names: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = sorted(n for n in available if fnmatch.fnmatchcase(n, pattern))
        else:
            hits = [pattern] if pattern in available else []
        if not hits:
            raise ValueError(f"loss term {label!r} reads {pattern!r}, which the model does not output; "
                             f"outputs: {', '.join(sorted(available))}")
        names.extend(h for h in hits if h not in names)
    return names


class Objective(nn.Module):
    """Named, weighted loss terms (an ``nn.ModuleList`` so their parameters checkpoint with it)."""

    def __init__(self, bound: Sequence[BoundTerm], modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.bound = tuple(bound)
        self.terms = nn.ModuleList(modules)

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor,
                active: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """{label: weighted loss}; with ``active`` (labels), only those terms are computed (a stage's losses)."""
        values: dict[str, torch.Tensor] = {}
        for spec, term in zip(self.bound, self.terms):
            if active is not None and spec.label not in active:
                continue
            names = resolve_reads(spec.reads, list(outputs), spec.label)
            if spec.combine == "concat" or len(names) == 1:
                x = outputs[names[0]] if len(names) == 1 else torch.cat([outputs[n] for n in names], dim=1)
                loss = term(x, labels)
            else:
                parts = torch.stack([term(outputs[n], labels) for n in names])
                loss = parts.mean() if spec.combine == "mean" else parts.sum()
            values[spec.label] = spec.weight * loss
        return values

    def labels_for(self, names: Sequence[str], where: str) -> frozenset[str]:
        """Labels of the terms named by kind or label; a name matching none is a one-line error."""
        found: set[str] = set()
        for name in names:
            hits = {b.label for b in self.bound if name in (b.kind, b.label)}
            if not hits:
                raise ValueError(f"{where}: {name!r} is no loss term of this run; its terms: "
                                 f"{', '.join(f'{b.label} ({b.kind})' for b in self.bound)}")
            found |= hits
        return frozenset(found)

    def own_optimizers(self) -> list[OwnOptimizer]:
        found = []
        for term in self.terms:
            make = getattr(term, "own_optimizer", None)
            if callable(make):
                found.append(make())
        return found

    def own_parameters(self) -> set[int]:
        """ids of parameters stepped by a term's own optimiser (kept out of the main optimiser)."""
        return {id(p) for term in self.terms if callable(getattr(term, "own_optimizer", None))
                for p in term.parameters()}


def _unique_labels(labels: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        count = seen.get(label, 0)
        out.append(label if count == 0 else f"{label}_{count + 1}")
        seen[label] = count + 1
    return out


def build_objective(terms: Sequence[Any], num_classes: int, feature_dims: Mapping[str, int],
                    progress: TrainProgress | None = None) -> Objective:
    """Build from spec loss terms (kind, reads, weight, name, combine, options) and the model's output widths.

    Terms with weight 0 are left out (no module, no log value), as a disabled loss was before.
    """
    from reidbench.models.registry import build_params

    progress = progress or TrainProgress()
    active = [t for t in terms if t.weight > 0]
    labels = _unique_labels([t.name or LOSS_TERMS.get(t.kind).default_label or t.kind for t in active])
    bound, modules = [], []
    for i, (term, label) in enumerate(zip(active, labels)):
        entry = LOSS_TERMS.get(term.kind)
        params = build_params(entry.params, dict(term.options), f"loss.terms[{i}]")
        reads = term.read_names
        input_dim = None
        if not entry.reads_logits:
            names = resolve_reads(reads, list(feature_dims), label)
            dims = [feature_dims[n] for n in names]
            if term.combine == "concat":
                input_dim = sum(dims)
            elif len(set(dims)) == 1:
                input_dim = dims[0]
        context = TermContext(params=params, weight=float(term.weight), num_classes=num_classes,
                              input_dim=input_dim, progress=progress)
        modules.append(entry.build(context))
        bound.append(BoundTerm(label=label, reads=reads, combine=term.combine, weight=float(term.weight),
                               kind=term.kind))
    return Objective(bound, modules)
