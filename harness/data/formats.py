"""Parsers for real person re-identification datasets on disk.

Each parser is a pure function of a root folder that returns a :class:`ReidDataset`. Parsers are
strict but informative: instead of stopping at the first bad file they collect every problem as
one line in ``ReidDataset.problems`` (the data checker prints them all); :func:`load_dataset`
then refuses a dataset with problems unless ``strict=False``.

Conventions shared by every format:

* ``camid`` is 0-based (file name camera ``c1`` -> ``camid 0``).
* Train identities are relabelled ``0..N-1`` in sorted order of the original pid (the classifier
  needs dense labels); query and gallery keep the original pids so that they match each other.
  ``ImageRecord.orig_pid`` always holds the pid as written on disk.
* pid ``-1`` (Market "junk") is dropped from every split; pid ``0`` (Market distractors) stays in
  the gallery as a non-match and is dropped from train.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "query", "gallery")
# Market layout: split name -> folder name.
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# `(\d+)` rather than the reference's `(\d)` so custom Market-layout datasets may have >= 10
# cameras; on Market/Duke names (`0002_c1s1_...`, `0005_c2_f...`) both give the same number.
MARKET_NAME_PATTERN = re.compile(r"^([-\d]+)_c(\d+)")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``pid`` is the training label (relabelled in train), ``camid`` is 0-based."""

    path: str
    pid: int
    camid: int
    orig_pid: int | None = None  # pid as written on disk; set to ``pid`` when not given

    def __post_init__(self) -> None:
        if self.orig_pid is None:
            object.__setattr__(self, "orig_pid", self.pid)


@dataclass(frozen=True)
class ReidDataset:
    name: str
    root: str
    format: str
    train: tuple[ImageRecord, ...]
    query: tuple[ImageRecord, ...]
    gallery: tuple[ImageRecord, ...]
    # One line per problem found while parsing (empty for a clean dataset).
    problems: tuple[str, ...] = field(default=(), compare=False)
    # Harmless facts worth printing (junk images dropped, non-image files ignored, ...).
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    @property
    def num_train_images(self) -> int:
        return len(self.train)

    def split(self, name: str) -> tuple[ImageRecord, ...]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------- helpers


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_EXAMPLES])
    return shown + (", ..." if len(items) > MAX_EXAMPLES else "")


def _relabel_train(records: Iterable[ImageRecord]) -> tuple[ImageRecord, ...]:
    records = list(records)
    label_of = {pid: label for label, pid in enumerate(sorted({r.orig_pid for r in records}))}
    return tuple(ImageRecord(r.path, label_of[r.orig_pid], r.camid, r.orig_pid) for r in records)


def _list_images(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted image file names and sorted other file names directly inside ``folder``."""
    images, others = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            (images if entry.name.lower().endswith(IMAGE_EXTENSIONS) else others).append(entry.name)
    return sorted(images), sorted(others)


def _has_any(folder: Path, names: Iterable[str]) -> bool:
    return any((folder / n).is_dir() for n in names)


def _resolve_root(root: Path, marker_dirs: Sequence[str], notes: list[str]) -> Path:
    """``root`` itself if it holds a marker folder, else its single child that does.

    Lets users point at the folder they downloaded (``market1501/``) when the archive unpacked
    one level deeper (``market1501/Market-1501-v15.09.15/``).
    """
    if not root.is_dir() or _has_any(root, marker_dirs):
        return root
    children = [c for c in sorted(root.iterdir()) if c.is_dir() and _has_any(c, marker_dirs)]
    if len(children) == 1:
        notes.append(f"using subfolder {children[0].name}/ of {root}")
        return children[0]
    return root


def _missing_root(root: Path) -> tuple[str, ...]:
    if not root.exists():
        return (f"dataset root does not exist: {root}",)
    if not root.is_dir():
        return (f"dataset root is not a folder: {root}",)
    return ()


# ----------------------------------------------------------------------------- Market layout


def _parse_market_split(
    folder: Path,
    split: str,
    camera_range: tuple[int, int | None],
    problems: list[str],
    notes: list[str],
) -> list[ImageRecord]:
    if not folder.is_dir():
        problems.append(f"{split}: missing split folder {folder}")
        return []
    images, others = _list_images(folder)
    if others:
        notes.append(f"{split}: ignored {len(others)} non-image file(s) in {folder.name}/ "
                     f"(e.g. {_examples(others)})")
    bad_names, bad_pids, bad_cams = [], [], []
    junk = distractors_in_train = 0
    records = []
    min_cam, max_cam = camera_range
    for name in images:
        match = MARKET_NAME_PATTERN.match(name)
        if match is None:
            bad_names.append(name)
            continue
        try:
            pid, cam = int(match.group(1)), int(match.group(2))
        except ValueError:  # e.g. "0-1_c1": the pattern allows '-' anywhere
            bad_names.append(name)
            continue
        if pid == -1:
            junk += 1
            continue
        if pid < -1:
            bad_pids.append(name)
            continue
        if cam < min_cam or (max_cam is not None and cam > max_cam):
            bad_cams.append(name)
            continue
        if pid == 0 and split == "train":
            distractors_in_train += 1
            continue
        records.append(ImageRecord(str(folder / name), pid, cam - 1))
    if bad_names:
        problems.append(f"{split}: {len(bad_names)} file name(s) in {folder.name}/ do not match "
                        f"'<pid>_c<camera>...' (e.g. {_examples(bad_names)})")
    if bad_pids:
        problems.append(f"{split}: {len(bad_pids)} file(s) with a negative pid other than -1 "
                        f"(e.g. {_examples(bad_pids)})")
    if bad_cams:
        valid = f"{min_cam}..{max_cam}" if max_cam is not None else f">= {min_cam}"
        problems.append(f"{split}: {len(bad_cams)} file(s) with a camera outside {valid} "
                        f"(e.g. {_examples(bad_cams)})")
    if junk:
        notes.append(f"{split}: dropped {junk} junk image(s) (pid -1)")
    if distractors_in_train:
        notes.append(f"train: dropped {distractors_in_train} distractor image(s) (pid 0)")
    if not records and not bad_names and not bad_pids and not bad_cams:
        problems.append(f"{split}: no usable images in {folder}")
    return records


def _parse_market_layout(
    root: Path,
    format_name: str,
    name: str,
    camera_range: tuple[int, int | None],
    notes: list[str],
) -> ReidDataset:
    problems: list[str] = list(_missing_root(root))
    if problems:
        return ReidDataset(name, str(root), format_name, (), (), (), tuple(problems), tuple(notes))
    splits = {
        split: _parse_market_split(root / folder, split, camera_range, problems, notes)
        for split, folder in MARKET_FOLDERS.items()
    }
    return ReidDataset(
        name=name,
        root=str(root),
        format=format_name,
        train=_relabel_train(splits["train"]),
        query=tuple(splits["query"]),
        gallery=tuple(splits["gallery"]),
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _default_name(root: Path) -> str:
    return root.resolve().name or str(root)


def parse_market(root: str | os.PathLike, name: str | None = None) -> ReidDataset:
    """Market-1501, or any folder in Market layout (custom datasets).

    ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` holding ``<pid>_c<cam>...`` images.
    Cameras are only required to be >= 1 so that custom datasets with more cameras work.
    """
    notes: list[str] = []
    base = _resolve_root(Path(root), tuple(MARKET_FOLDERS.values()), notes)
    return _parse_market_layout(base, "market", name or _default_name(base), (1, None), notes)


def parse_duke(root: str | os.PathLike, name: str | None = None) -> ReidDataset:
    """DukeMTMC-reID: Market layout, names ``0005_c2_f0046985.jpg``, cameras 1..8."""
    notes: list[str] = []
    base = _resolve_root(Path(root), tuple(MARKET_FOLDERS.values()), notes)
    return _parse_market_layout(base, "duke", name or _default_name(base), (1, 8), notes)


CUHK03_VARIANTS = ("detected", "labeled")


def parse_cuhk03np(
    root: str | os.PathLike, name: str | None = None, variant: str = "detected"
) -> ReidDataset:
    """CUHK03-NP (new protocol) in Market style.

    ``root`` holds ``detected/`` and/or ``labeled/`` (each in Market layout; ``variant`` picks
    one), or points directly at one of them.
    """
    if variant not in CUHK03_VARIANTS:
        raise ValueError(f"cuhk03np variant {variant!r} is not valid; valid: {', '.join(CUHK03_VARIANTS)}")
    notes: list[str] = []
    base = Path(root)
    if base.is_dir() and not _has_any(base, MARKET_FOLDERS.values()):
        container = _resolve_root(base, CUHK03_VARIANTS, notes)
        base = container / variant
        default_name = f"{_default_name(container)}-{variant}"
        if not base.is_dir():
            found = [f"{v}/" for v in CUHK03_VARIANTS if (container / v).is_dir()]
            problem = (f"missing split folder: no {variant}/ in {container} "
                       f"(found: {', '.join(found) or 'neither detected/ nor labeled/'})")
            return ReidDataset(name or default_name, str(container), "cuhk03np", (), (), (),
                               (problem,), tuple(notes))
    elif base.name in CUHK03_VARIANTS:  # root points directly at detected/ or labeled/
        default_name = f"{_default_name(base.parent)}-{base.name}"
    else:
        default_name = _default_name(base)
    return _parse_market_layout(base, "cuhk03np", name or default_name, (1, None), notes)


# ----------------------------------------------------------------------------- MSMT17

MSMT_LAYOUTS = {  # version -> (train folder, test folder)
    "v1": ("train", "test"),
    "v2": ("mask_train_v2", "mask_test_v2"),
}
MSMT_LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt",
              "gallery": "list_gallery.txt"}
MSMT_NUM_CAMERAS = 15


def _parse_msmt_list(
    list_path: Path, image_dir: Path, split: str, problems: list[str]
) -> list[ImageRecord]:
    if not list_path.is_file():
        problems.append(f"{split}: missing list file {list_path}")
        return []
    if not image_dir.is_dir():
        return []  # reported once by the caller
    bad_lines, missing, bad_cams = [], [], []
    records = []
    with open(list_path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                rel_path, pid_text = parts
                pid = int(pid_text)
                cam = int(Path(rel_path).name.split("_")[2])
            except (ValueError, IndexError):
                bad_lines.append(f"line {line_no}: {line.strip()[:60]!r}")
                continue
            if pid < 0:
                bad_lines.append(f"line {line_no}: {line.strip()[:60]!r}")
                continue
            if not 1 <= cam <= MSMT_NUM_CAMERAS:
                bad_cams.append(f"line {line_no}: {rel_path}")
                continue
            path = image_dir / rel_path
            if not path.is_file():
                missing.append(f"line {line_no}: {rel_path}")
                continue
            records.append(ImageRecord(str(path), pid, cam - 1))
    if bad_lines:
        problems.append(f"{split}: {len(bad_lines)} line(s) of {list_path.name} are not "
                        f"'<path> <pid>' with a name like 0000_000_01_..jpg (e.g. {_examples(bad_lines)})")
    if bad_cams:
        problems.append(f"{split}: {len(bad_cams)} line(s) of {list_path.name} have a camera outside "
                        f"1..{MSMT_NUM_CAMERAS} (e.g. {_examples(bad_cams)})")
    if missing:
        problems.append(f"{split}: {len(missing)} line(s) of {list_path.name} point at missing files "
                        f"under {image_dir.name}/ (e.g. {_examples(missing)})")
    if not records and not (bad_lines or bad_cams or missing):
        problems.append(f"{split}: {list_path.name} lists no images")
    return records


def parse_msmt17(
    root: str | os.PathLike,
    name: str | None = None,
    version: str | None = None,
    include_val: bool = True,
) -> ReidDataset:
    """MSMT17 V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``, ``mask_test_v2/``).

    The list files ``list_{train,val,query,gallery}.txt`` sit next to the image folders; each
    line is ``<relative path> <pid>`` and the camera is the third ``_`` field of the file name
    (1-based). ``include_val`` merges ``list_val.txt`` into train, which gives the official
    32,621-image / 1,041-identity training set (the Bag-of-Tricks reference code leaves val out).
    ``version`` ("v1"/"v2") is detected from the folders when not given.
    """
    if version is not None and version.lower() not in MSMT_LAYOUTS:
        raise ValueError(f"msmt17 version {version!r} is not valid; valid: {', '.join(MSMT_LAYOUTS)}")
    notes: list[str] = []
    markers = [folder for layout in MSMT_LAYOUTS.values() for folder in layout]
    base = _resolve_root(Path(root), markers, notes)
    base_name = name or _default_name(base)
    problems: list[str] = list(_missing_root(base))
    found = [v for v, (train_folder, _) in MSMT_LAYOUTS.items() if (base / train_folder).is_dir()]
    if not problems and version is None and not found:
        problems.append(f"missing split folder: {base} has neither train/ (MSMT17 V1) "
                        f"nor mask_train_v2/ (MSMT17 V2)")
    if problems:
        return ReidDataset(base_name, str(base), "msmt17", (), (), (), tuple(problems), tuple(notes))
    version = (version or found[-1]).lower()  # prefer V2 when both are present
    train_dir, test_dir = (base / folder for folder in MSMT_LAYOUTS[version])
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            problems.append(f"missing split folder {folder}")
    train = _parse_msmt_list(base / MSMT_LISTS["train"], train_dir, "train", problems)
    if include_val:
        train += _parse_msmt_list(base / MSMT_LISTS["val"], train_dir, "val", problems)
    query = _parse_msmt_list(base / MSMT_LISTS["query"], test_dir, "query", problems)
    gallery = _parse_msmt_list(base / MSMT_LISTS["gallery"], test_dir, "gallery", problems)
    return ReidDataset(base_name, str(base), "msmt17", _relabel_train(train), tuple(query),
                       tuple(gallery), tuple(problems), tuple(notes))


# ----------------------------------------------------------------------------- registry

Parser = Callable[..., ReidDataset]
FORMATS: dict[str, Parser] = {
    "market": parse_market,
    "duke": parse_duke,
    "msmt17": parse_msmt17,
    "cuhk03np": parse_cuhk03np,
}

# Checked in this order against each path component, last component first.
_NAME_HINTS = (("msmt", "msmt17"), ("duke", "duke"), ("cuhk03", "cuhk03np"), ("cuhk-03", "cuhk03np"),
               ("market", "market"))


def guess_format(name_or_root: str | os.PathLike) -> str:
    """Format for a dataset name or root folder; ``"market"`` when nothing else fits.

    Looks at path components from the last one up ("market1501", "DukeMTMC-reID", "MSMT17_V2",
    "cuhk03-np"), then at the folder contents (MSMT list files, CUHK03 ``detected/``).
    """
    path = Path(name_or_root)
    for part in reversed(path.parts):
        lowered = part.lower()
        for hint, format_name in _NAME_HINTS:
            if hint in lowered:
                return format_name
    if path.is_dir():
        if (path / MSMT_LISTS["train"]).is_file():
            return "msmt17"
        if _has_any(path, CUHK03_VARIANTS):
            return "cuhk03np"
    return "market"


def get_parser(format: str) -> Parser:
    try:
        return FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown dataset format {format!r}; valid formats: {', '.join(FORMATS)}") from None


def parse(root: str | os.PathLike, format: str, **kw) -> ReidDataset:
    """Run the parser of ``format``; an option it does not take is a one-line ``ValueError``."""
    parser = get_parser(format)
    accepted = [p for p in inspect.signature(parser).parameters if p != "root"]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(f"dataset format {format!r} does not take option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(accepted)}")
    return parser(root, **kw)


def load_dataset(
    root: str | os.PathLike,
    format: str | None = None,
    name: str | None = None,
    strict: bool = True,
    **kw,
) -> ReidDataset:
    """Parse the dataset at ``root`` (``format`` guessed from the path when None).

    With ``strict`` (the default) a dataset with any problem is refused with a one-line error
    that points at ``reidbench data check``; ``strict=False`` returns it with ``problems`` set.
    Extra keywords go to the parser (``variant`` for cuhk03np, ``version``/``include_val`` for
    msmt17).
    """
    format = format or guess_format(root)
    get_parser(format)  # unknown format: error before looking at the disk
    if not Path(root).exists():
        raise FileNotFoundError(f"dataset root does not exist: {root}")
    dataset = parse(root, format, name=name, **kw)
    if strict and dataset.problems:
        more = f" (+{len(dataset.problems) - 1} more)" if len(dataset.problems) > 1 else ""
        raise ValueError(f"{format} dataset at {root}: {dataset.problems[0]}{more}; "
                         f"run `reidbench data check {root} --format {format}` for the full list")
    return dataset
