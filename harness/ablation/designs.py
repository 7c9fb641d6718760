"""What ``ablate --mode factorial|fractional`` records and prints besides the runs: the design's
metadata (read back by ``report/factorial.py``) and the ``--dry-run`` lines (design matrix, cached
runs, alias structure). Pure except ``design_dry_run_lines``, which reads the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reidbench.harness.ablation.expand import point_label, point_tricks, spec_diff

if TYPE_CHECKING:
    from reidbench.harness.ablation.plan import AblationPlan
    from reidbench.harness.stats.factorial import Design

# alias chains longer than this are printed up to order 3 (a 2^(10−5) chain has 32 words)
MAX_CHAIN_WORDS = 8


def design_meta(plan: "AblationPlan") -> dict[str, Any]:
    """The design as the ablation record keeps it: factors (trick names, --add order), each row's
    tricks, and for the captions the kind, resolution, generators and defining relation."""
    design = plan.design
    assert design is not None
    return {
        "factors": list(design.factors),
        "labels": [t.label for t in plan.tricks],
        "kind": "full" if design.is_full else "fractional",
        "resolution": design.resolution,
        "generators": design.generator_text(),
        "relation": design.relation_text() if not design.is_full else "",
        "points": {point_label(point_tricks(plan.tricks, p)): [t.name for t in point_tricks(plan.tricks, p)]
                   for p in design.points},
    }


def _term(design: "Design", mask: int, sign: int = 1) -> str:
    return ("−" if sign < 0 else "") + design.term_name(mask)


def alias_lines(design: "Design") -> list[str]:
    """The alias structure of a fraction: generators, defining relation, then every chain holding a
    main effect or a two-factor interaction (letters; whole chains up to ``MAX_CHAIN_WORDS`` words,
    else words up to order 3; trick names of its members of order ≤ 2 in brackets). Empty for a
    full factorial (nothing is aliased)."""
    from reidbench.harness.stats.factorial import ROMAN, popcount

    if design.is_full:
        return []
    max_order = design.k if 1 << design.p <= MAX_CHAIN_WORDS else 3
    res = design.resolution or 0
    lines = [f"alias structure: resolution {ROMAN.get(res, res)}, generators {', '.join(design.generator_text())}; "
             f"defining relation {design.relation_text()}",
             "  factors: " + ", ".join(f"{letter} {name}" for letter, name in zip(design.letters, design.factors))]
    chains = design.chains()
    low = [c for c in chains if popcount(c[0][0]) <= 2]
    for title, order in (("main effects", 1), ("two-factor interactions", 2)):
        members = [c for c in low if popcount(c[0][0]) == order]
        if not members:
            continue
        lines.append(f"  {title}:")
        for chain in members:
            shown = [design.word(m, s) for m, s in chain if popcount(m) <= max_order]
            more = sum(1 for m, _ in chain if popcount(m) > max_order)
            text = " = ".join(shown) + (f" (+{more} of order > {max_order})" if more else "")
            named = [_term(design, m, s) for m, s in chain if popcount(m) <= 2]
            note = f"   [{' = '.join(named)}]" if order == 2 or len(named) > 1 else f"   [{named[0]}]"
            lines.append(f"    {text}{note}")
    rest = len(chains) - len(low)
    if rest:
        lines.append(f"  {rest} more chain(s) hold only interactions of 3+ tricks: with one seed they are the "
                     "residual the effects' t intervals use")
    return lines


def design_dry_run_lines(plan: "AblationPlan", store: Any) -> list[str]:
    """``ablate --mode factorial|fractional --dry-run``: the design, what each trick changes, the design
    matrix with each point's cached runs (by spec hash: a run of any earlier ablation with the same
    spec is reused), every run's hash and status, and a fraction's alias structure."""
    design = plan.design
    assert design is not None
    statuses = store.statuses(plan.unique_hashes())
    hashes = set(plan.unique_hashes())
    cached = {h for h, s in statuses.items() if s == "done"}
    lines = [f"ablation {plan.name}: {len(plan.steps)} run(s), {len(hashes)} distinct, profile {plan.base.profile}, "
             f"mode {plan.mode}, train {plan.base.data.train}, test {', '.join(plan.base.data.test)}",
             f"design: {design.describe()} over {len(design.factors)} tricks, each point's tricks applied in "
             f"--add order; " + (f"{len(plan.seeds)} seeds ({', '.join(map(str, plan.seeds))}) replicate every point"
                                   if len(plan.seeds) > 1 else f"1 seed ({plan.seeds[0]}), no replicates"),
             "factors (what each trick changes on the base):"]
    if plan.mode == "fractional" and design.is_full:
        lines.insert(2, f"  (no smaller regular fraction of {len(design.factors)} tricks has that resolution: "
                        "this is the full factorial)")
    width = max(len(n) for n in design.factors)
    for letter, trick in zip(design.letters, plan.tricks):
        try:
            diff = spec_diff(plan.base, trick.apply(plan.base))
        except ValueError as exc:  # e.g. a trick that requires another: shown with the design points
            diff = [f"(not applicable alone: {str(exc).splitlines()[0]})"]
        lines.append(f"  {letter} {trick.name:<{width}}  {diff[0] if diff else '(no change)'}")
        lines.extend(f"    {'':<{width}}  {d}" for d in diff[1:])
    rows = {}
    for s in plan.steps:
        rows.setdefault(s.step, []).append(s)
    label_width = max(12, *(len(r) for r in rows))
    lines.append("design matrix (+ applied, − not; cached: runs of that point already done):")
    lines.append(f"  {'#':>3}  {' '.join(design.letters)}  {'row':<{label_width}}  cached")
    for number, (point, (label, steps)) in enumerate(zip(design.points, rows.items()), start=1):
        signs = " ".join("+" if point >> i & 1 else "−" for i in range(design.k))
        done = sum(1 for s in steps if s.run_hash in cached)
        lines.append(f"  {number:>3}  {signs}  {label:<{label_width}}  {done}/{len(steps)}")
    todo = len(hashes - cached)
    shared = _sharing_ablations(store, cached, plan.name)
    lines.append(f"runs: {len(hashes)}, {len(hashes & cached)} cached, {todo} to train"
                 + (f" (cached runs shared with: {', '.join(shared)})" if shared else ""))
    for s in plan.steps:
        status = statuses.get(s.run_hash, "new")
        lines.append(f"  {s.label:<{label_width + 10}} {s.run_hash[:12]}  [{'cached' if status == 'done' else status}]")
    lines.extend(alias_lines(design))
    return lines


def _sharing_ablations(store: Any, cached: set[str], own_name: str) -> list[str]:
    """Other recorded ablations holding some of ``cached`` (e.g. the cumulative table's runs)."""
    out = []
    for record in store.list_ablations():
        if record.name == own_name:
            continue
        common = {m["run_hash"] for m in record.members} & cached
        if common:
            out.append(f"{record.name} (id {record.id}, {record.mode}: {len(common)})")
    return out
