"""`reidbench data check`: find everything wrong with a dataset folder, as one line per problem.

Never raises for bad data: a missing folder, odd file names, corrupt images, list files that
point nowhere all end up in ``CheckReport.problems``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .formats import MAX_EXAMPLES, SPLITS, ReidDataset, guess_format, parse


@dataclass(frozen=True)
class SplitStats:
    name: str
    num_ids: int
    num_images: int
    num_cams: int


@dataclass(frozen=True)
class CheckReport:
    root: str
    format: str
    splits: tuple[SplitStats, ...]
    problems: tuple[str, ...]  # one clear line each; empty when the dataset is usable
    notes: tuple[str, ...] = ()  # harmless facts (junk dropped, non-image files ignored)
    num_images_verified: int | None = None  # None when verification was skipped

    @property
    def ok(self) -> bool:
        return not self.problems

    def split(self, name: str) -> SplitStats:
        return next(s for s in self.splits if s.name == name)


def _verify_image(path: str) -> str | None:
    """None if ``path`` decodes as an image, else a short reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums, without decoding pixels
        with Image.open(path) as image:  # verify() leaves the image unusable: reopen to decode
            image.load()  # catches truncated data that verify() lets through
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        message = str(error).splitlines()[0] if str(error) else ""
        reason = message.replace(repr(path), "").replace(path, "").strip(" :")  # path is printed anyway
        return (reason or type(error).__name__)[:80]
    return None


def _verify_images(paths: Sequence[str], num_threads: int, progress: bool) -> list[tuple[str, str]]:
    # Pillow releases the GIL while decoding, so threads scale without pickling anything.
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = pool.map(_verify_image, paths, chunksize=64)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="verify images", unit="img")
        return [(path, reason) for path, reason in zip(paths, results) if reason is not None]


def _split_stats(dataset: ReidDataset) -> tuple[SplitStats, ...]:
    stats = []
    for name in SPLITS:
        records = dataset.split(name)
        stats.append(SplitStats(name, len({r.orig_pid for r in records}), len(records),
                                len({r.camid for r in records})))
    return tuple(stats)


def _query_problems(dataset: ReidDataset) -> list[str]:
    if not dataset.query or not dataset.gallery:
        return []
    gallery_ids = {r.orig_pid for r in dataset.gallery}
    absent = sorted({r.orig_pid for r in dataset.query} - gallery_ids)
    if not absent:
        return []
    shown = ", ".join(str(pid) for pid in absent[:MAX_EXAMPLES]) + (", ..." if len(absent) > MAX_EXAMPLES else "")
    what = "identity never appears" if len(absent) == 1 else "identities never appear"
    return [f"query: {len(absent)} query {what} in the gallery, so those queries cannot be "
            f"evaluated (e.g. pid {shown})"]


def check_dataset(
    root: str | os.PathLike,
    format: str | None = None,
    verify_images: bool = True,
    num_threads: int | None = None,
    progress: bool = False,
    masks_dir: str | os.PathLike | None = None,
    **parser_kw,
) -> CheckReport:
    """Parse ``root`` as ``format`` (guessed when None) and report every problem found.

    ``verify_images`` opens every image with Pillow (``verify()`` then a full decode) on
    ``num_threads`` threads (default: all cores, at most 8). An unknown ``format`` is a user
    error and raises ``ValueError``; everything wrong with the data is a reported problem.
    ``masks_dir``: also check the part masks there (``harness/data/masks.py``, ``check_masks``):
    missing, unreadable or wrongly sized files and foregrounds that are not the sum of the parts.
    """
    format = format or guess_format(root)
    dataset = parse(root, format, **parser_kw)
    problems = list(dataset.problems) + _query_problems(dataset)
    verified: int | None = None
    if verify_images:
        paths = sorted({r.path for split in SPLITS for r in dataset.split(split)})
        threads = num_threads or min(8, os.cpu_count() or 1)
        bad = _verify_images(paths, threads, progress)
        verified = len(paths)
        if bad:
            base = Path(dataset.root)
            examples = []
            for path, reason in bad[:MAX_EXAMPLES]:
                try:
                    shown = str(Path(path).relative_to(base))
                except ValueError:
                    shown = path
                examples.append(f"{shown}: {reason}")
            more = ", ..." if len(bad) > MAX_EXAMPLES else ""
            problems.append(f"{len(bad)} unreadable or corrupt image(s) (e.g. {'; '.join(examples)}{more})")
    notes = list(dataset.notes)
    if masks_dir is not None:
        from .masks import check_masks

        records = [r for split in SPLITS for r in dataset.split(split)]
        mask_problems, mask_notes = check_masks(records, dataset.root, masks_dir)
        problems.extend(mask_problems)
        notes.extend(mask_notes)
    return CheckReport(
        root=dataset.root,
        format=format,
        splits=_split_stats(dataset),
        problems=tuple(problems),
        notes=tuple(notes),
        num_images_verified=verified,
    )


def format_report(report: CheckReport) -> str:
    """Human-readable table of the split statistics followed by notes and problems."""
    lines = [f"dataset: {report.root}  (format: {report.format})", ""]
    header = ("split", "ids", "images", "cameras")
    rows = [(s.name, str(s.num_ids), str(s.num_images), str(s.num_cams)) for s in report.splits]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    lines.append("")
    if report.num_images_verified is not None:
        lines.append(f"images verified: {report.num_images_verified}")
    else:
        lines.append("images verified: skipped")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines.extend(f"  - {problem}" for problem in report.problems)
    else:
        lines.append("no problems found")
    return "\n".join(lines)
