"""Preflight: every problem that is certain before training, found before anything is recorded.

``ablate``, ``study`` and ``train`` plan their runs (specs are loaded and validated, tricks applied,
hashes computed), then call :func:`preflight` on the planned specs, and only then open the results
database. A problem found here is one line naming the dataset, field or value and what would be
valid; the same problem met by several runs is one line naming them. Nothing is written: no run, no
ablation record, no study. What only training can reveal (a diverging loss, a full disk, a killed
process) still becomes a failed run, retried by the next invocation.

Checked, in this order:

- every dataset a run trains or tests on: the structural checks of ``reidbench data check`` that
  make a run refuse the folder (the parser's: split folders, file names, list files; images are not
  decoded), each folder parsed once per command. The embedded synthetic sets are not generated:
  their layout follows from their recipe (``harness/data/synth/layout.py``);
- part masks (``data.masks``) for every dataset that needs them;
- the batch sampler against the training set: P distinct identities per batch, and whatever else the
  registered sampler refuses (it is built on the training labels, which costs milliseconds), at
  least one batch per epoch, and P splitting between ``--gpus-per-run`` processes;
- ImageNet weights of every pretrained backbone (:func:`weights_problem`).

Tricks that do not apply (:func:`trick_problems`) and spec fields a run would not read fail when the
spec is loaded or patched, which the commands do before calling this.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from reidbench.harness.spec import RunSpec
    from reidbench.tricks import Trick

# A problem shared by more runs than this names the first few and the count.
MAX_NAMED_RUNS = 4


class PreflightError(ValueError):
    """Problems found before anything ran; ``problems`` holds one line each (the CLI prints them all)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(problems[0] if problems else "preflight failed")
        self.problems = tuple(problems)


@dataclass(frozen=True)
class PlannedRun:
    """One run a command is about to create: how problems name it, and its spec."""

    label: str  # a step label with its seed, a study point, a spec file
    spec: "RunSpec"


@dataclass(frozen=True)
class DatasetFacts:
    """What preflight knows of one dataset name, without decoding an image."""

    name: str
    where: str  # how problems name it: "--data market=/data/Market-1501" or "synth-a (embedded)"
    problems: tuple[str, ...] = ()
    train_pids: tuple[int, ...] = ()  # the identity of every training image
    root: str | None = None  # the folder (None: an embedded set, not generated yet, or no folder)
    synthetic: bool = False
    # Relative paths of every image (folders only): a mask folder must hold one file per image.
    image_paths: tuple[str, ...] = field(default=(), repr=False)

    @property
    def num_train_ids(self) -> int:
        return len(set(self.train_pids))


class DataInventory:
    """Dataset facts by name, each dataset looked at once per command."""

    def __init__(self, data_paths: Mapping[str, str]) -> None:
        self.data_paths = dict(data_paths)
        self._facts: dict[str, DatasetFacts] = {}

    def facts(self, name: str) -> DatasetFacts:
        """What is known of dataset ``name``; an embedded set's training identities are left out (see
        :meth:`training_facts`)."""
        if name not in self._facts:
            self._facts[name] = self._look(name)
        return self._facts[name]

    def training_facts(self, name: str) -> DatasetFacts:
        """:meth:`facts` with every training image's identity, also for an embedded set."""
        facts = self.facts(name)
        return _synthetic_training_facts(name) if facts.synthetic else facts

    def _look(self, name: str) -> DatasetFacts:
        from reidbench.harness.data.synth.cache import DEFAULT_DATASETS

        if name in self.data_paths:
            return _folder_facts(name, self.data_paths[name])
        if name in DEFAULT_DATASETS:
            return DatasetFacts(name, f"{name} (embedded)", synthetic=True)
        known = sorted(set(DEFAULT_DATASETS) | set(self.data_paths))
        return DatasetFacts(name, name, (f"dataset {name!r} is not known: give its folder with --data {name}=PATH, "
                                         f"or use one of {', '.join(known)}",))


def _synthetic_training_facts(name: str) -> DatasetFacts:
    from reidbench.harness.data.synth.cache import DEFAULT_DATASETS

    # read at call time, as fingerprint.synthetic_fingerprint does, so a patched recipe is seen
    return DatasetFacts(name, f"{name} (embedded)", train_pids=_train_pids(DEFAULT_DATASETS[name]), synthetic=True)


@functools.lru_cache(maxsize=8)
def _train_pids(recipe) -> tuple[int, ...]:
    # The generator's layout plan is pure and takes ~0.1 s; nothing is rendered or written.
    from reidbench.harness.data.synth.domains import get_domain
    from reidbench.harness.data.synth.layout import plan_domain

    plan = plan_domain(get_domain(recipe.domain), recipe.num_ids, recipe.seed)
    return tuple(job.pid for job in plan.jobs if job.split == "train")


def _folder_facts(name: str, path: str) -> DatasetFacts:
    import os

    from reidbench.harness.data.formats import SPLITS, guess_format, parse

    where = f"--data {name}={path}"
    root = Path(path).expanduser()
    if not root.is_dir():
        return DatasetFacts(name, where, (f"{where}: no such folder",))
    fmt = guess_format(name)
    # The parser's problems are those a run refuses the folder for (formats.load_dataset). `data check`
    # also lists queries without a gallery match, which are left out of the scores, not fatal.
    dataset = parse(root, fmt)
    problems = [f"{where}: {p}" for p in dataset.problems]
    images = tuple(os.path.relpath(r.path, dataset.root) for split in SPLITS for r in dataset.split(split))
    return DatasetFacts(name, where, tuple(problems), tuple(r.pid for r in dataset.train), dataset.root,
                        image_paths=images)


# --------------------------------------------------------------------------- weights


def weights_problem(backbone: str, weights_path: str | None) -> str | None:
    """None when ``backbone``'s ImageNet weights (or ``weights_path``) can be had, else why not (one line).

    Looks at the sources ``models/pretrained.load_pretrained`` would read, in its order, without
    reading any tensor. With weight downloads (``models/weights.weights_available``: found here, or
    downloadable unless offline) that function answers; the lines after it read the offline-only
    pretrained.py this branch started from, and go once both are merged.
    """
    try:
        from reidbench.models.weights import weights_available
    except ImportError:
        weights_available = None
    if weights_available is not None:
        return weights_available(backbone, weights_path)
    if weights_path:
        file = Path(weights_path).expanduser()
        return None if file.is_file() else f"model.weights_path={weights_path!r}: no such file"
    from reidbench.models import backbones, pretrained

    sources = backbones._resolve(backbone).weights  # an unknown backbone failed when the spec was loaded
    package_missing = None
    if sources.package is not None:
        try:
            importlib.metadata.version(sources.package)
            return None
        except importlib.metadata.PackageNotFoundError:
            package_missing = sources.package
    if pretrained._cached_files(sources):
        return None
    return pretrained._not_found_message(backbone, sources, package_missing)


# --------------------------------------------------------------------------- checks


def _masks_problems(value: str, facts: DatasetFacts) -> list[str]:
    """Why ``data.masks=value`` cannot give ``facts``' dataset its masks (empty when it can)."""
    from reidbench.harness.data.masks import MASK_SUFFIXES, parse_masks

    kind, path = parse_masks(value)
    if kind == "oracle" and not facts.synthetic and facts.root is not None:
        from reidbench.harness.data.synth.generate import GENERATOR_VERSION, masks_complete, read_meta

        if masks_complete(facts.root):
            return []
        meta = read_meta(facts.root)
        if meta is None:
            return [f"data.masks=oracle: {facts.where} is not a folder written by reidbench's synthetic generator, so "
                    "it has no ground-truth parsing; use data.masks: stripes or folder:PATH (docs/spreid.md)"]
        if meta.get("generator_version") != GENERATOR_VERSION:
            return [f"data.masks=oracle: {facts.where} was written by synthetic generator version "
                    f"{meta.get('generator_version')}, this is version {GENERATOR_VERSION}; regenerate it "
                    "(reidbench data synth --masks)"]
    if kind == "folder":
        folder = Path(path.replace("{name}", facts.name)).expanduser()
        if not folder.is_dir():
            return [f"data.masks={value}: {folder} is not a folder (for dataset {facts.name}); put one .npz or .png "
                    "per image there, at the image's path relative to the dataset root (docs/spreid.md)"]
        missing = [rel for rel in facts.image_paths
                   if not any((folder / rel).with_suffix(s).is_file() for s in MASK_SUFFIXES)]
        if missing:
            return [f"data.masks={value}: {len(missing)} of {len(facts.image_paths)} images of {facts.where} have "
                    f"no mask file (e.g. {Path(missing[0]).with_suffix('').as_posix()}); `reidbench data check "
                    f"{facts.root} --masks {folder}` lists them"]
    return []


def _sampler_problems(spec: "RunSpec", facts: DatasetFacts, gpus_per_run: int) -> list[str]:
    """Why the spec's batch sampler cannot draw batches from its training set (empty when it can)."""
    data = spec.data
    ids = facts.num_train_ids
    if data.ids_per_batch > ids:
        return [f"data.ids_per_batch={data.ids_per_batch}: the training set {facts.where} has only {ids} identities "
                f"and a P×K batch needs P distinct ones; lower data.ids_per_batch to at most {ids}"]
    if gpus_per_run > 1:
        from reidbench.harness.train.distributed import check_batch_split

        try:
            check_batch_split(data.ids_per_batch, gpus_per_run)
        except ValueError as exc:
            return [str(exc).splitlines()[0]]
    from reidbench.harness.data.samplers import build_sampler

    try:
        sampler = build_sampler(data.sampler, data.sampler_options, facts.train_pids, data.ids_per_batch,
                                data.imgs_per_id, spec.train.seed)
        sampler.set_epoch(0)
        batches = len(sampler)
    except ValueError as exc:
        return [f"data.sampler={data.sampler}: {str(exc).splitlines()[0]} (training set {facts.where})"]
    if batches < 1:
        return [f"data.sampler={data.sampler} draws no {data.ids_per_batch}×{data.imgs_per_id} batch from the "
                f"training set {facts.where} ({ids} identities, {len(facts.train_pids)} images)"]
    return []


def _reads_pretrained(arch: str) -> bool:
    from reidbench.models.architectures import ARCHITECTURES

    return "pretrained" in ARCHITECTURES.get(arch).model_fields


def _runs_phrase(labels: Sequence[str], total: int) -> str:
    labels = list(dict.fromkeys(labels))
    if total > 1 and len(labels) == total:
        return f"all {total} planned runs"
    if len(labels) <= MAX_NAMED_RUNS:
        return ", ".join(labels)
    return f"{', '.join(labels[:MAX_NAMED_RUNS])} and {len(labels) - MAX_NAMED_RUNS} more"


def preflight(runs: Sequence[PlannedRun], data_paths: Mapping[str, str], *, gpus_per_run: int = 1,
              inventory: DataInventory | None = None,
              weights: Callable[[str, str | None], str | None] = weights_problem) -> list[str]:
    """Every problem the planned ``runs`` would fail on before training; one line each, deduplicated.

    A dataset's problems name the dataset; a run's problems name the runs that share them (or say
    "all N planned runs"). ``inventory`` lets a caller that already looked at the data share it.
    """
    inventory = inventory or DataInventory(data_paths)
    dataset_lines: dict[str, None] = {}
    by_problem: dict[str, list[str]] = {}

    def add(problem: str, run: PlannedRun) -> None:
        by_problem.setdefault(problem, []).append(run.label)

    names = dict.fromkeys(n for r in runs for n in (r.spec.data.train, *r.spec.data.test))
    broken = set()
    for name in names:
        facts = inventory.facts(name)
        if facts.problems:
            broken.add(name)
            dataset_lines.update(dict.fromkeys(facts.problems))
    weights_seen: dict[tuple[str, str | None], str | None] = {}
    for run in runs:
        spec = run.spec
        if spec.data.masks:
            for name in dict.fromkeys((spec.data.train, *spec.data.test)):
                if name not in broken:
                    for problem in _masks_problems(spec.data.masks, inventory.facts(name)):
                        add(problem, run)
        if spec.data.train not in broken:
            for problem in _sampler_problems(spec, inventory.training_facts(spec.data.train), gpus_per_run):
                add(problem, run)
        if spec.model.pretrained and _reads_pretrained(spec.model.arch):
            key = (spec.model.backbone, spec.model.weights_path)
            if key not in weights_seen:
                weights_seen[key] = weights(*key)
            if weights_seen[key]:
                add(str(weights_seen[key]), run)
    lines = list(dataset_lines)
    lines += [f"{problem} [{_runs_phrase(labels, len(runs))}]" for problem, labels in by_problem.items()]
    return lines


def check_runs(runs: Sequence[PlannedRun], data_paths: Mapping[str, str], **kwargs) -> None:
    """:func:`preflight`, raising :class:`PreflightError` with every problem when there is one."""
    problems = preflight(runs, data_paths, **kwargs)
    if problems:
        raise PreflightError(problems)


def trick_problems(base: "RunSpec", tricks: Sequence["Trick"], mode: str) -> list[str]:
    """One line per trick of ``--add`` that cannot be applied as ``mode`` stacks them (empty: all apply).

    ``expand`` stops at the first; this names every one, so one invocation shows them all.
    """
    from reidbench.harness.ablation.defaults import applicable_tricks

    _, skipped = applicable_tricks(base, tricks, mode)
    return [f"--add {trick.name}: {why}" for trick, why in skipped]
