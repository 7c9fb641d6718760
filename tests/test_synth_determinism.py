"""Synthetic benchmark: byte-identical output for the same arguments, different for another seed."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from reidbench.harness.data.synth import generate_domain, get_domain
from reidbench.harness.data.synth.generate import JPEG_QUALITY, JPEG_SUBSAMPLING
from reidbench.harness.data.synth.layout import plan_domain
from reidbench.harness.data.synth.render import Renderer


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_arguments_give_identical_trees_other_seed_differs(tmp_path: Path):
    kwargs = dict(domain="A", num_ids=6, image_size=(64, 32), progress=False)
    first = tree_hash(generate_domain(tmp_path / "one", seed=5, **kwargs))
    second = tree_hash(generate_domain(tmp_path / "two", seed=5, **kwargs))
    other = tree_hash(generate_domain(tmp_path / "three", seed=6, **kwargs))
    assert first == second
    assert other != first


def test_one_image_rendered_alone_equals_the_file(tmp_path: Path):
    """Order independence: a fresh renderer (empty caches) re-creates any single file exactly."""
    root = generate_domain(tmp_path / "b", "B", num_ids=4, seed=2, image_size=(64, 32), progress=False)
    plan = plan_domain(get_domain("B"), 4, seed=2)
    for job in (plan.jobs[-1], plan.jobs[len(plan.jobs) // 2], plan.jobs[0]):  # junk, a person, ...
        buf = io.BytesIO()
        Renderer(get_domain("B"), 2, (64, 32)).render(job).save(buf, "JPEG", quality=JPEG_QUALITY,
                                                                  subsampling=JPEG_SUBSAMPLING)
        assert buf.getvalue() == (root / job.relpath).read_bytes(), job.relpath


def test_more_identities_keep_the_existing_identities_tracks():
    """Tracks are keyed by identity, not by position, so growing a domain does not reshuffle them."""
    small = plan_domain(get_domain("A"), 10, seed=0)
    large = plan_domain(get_domain("A"), 20, seed=0)
    same_split = {p for p in range(1, 11) if (p in small.train_ids) == (p in large.train_ids)}
    assert len(same_split) >= 3

    def tracks(plan, pids):
        return {(j.pid, j.cam, j.seq, j.frame, j.box, j.index, j.split) for j in plan.jobs
                if j.kind == "person" and j.pid in pids}

    assert tracks(small, same_split) == tracks(large, same_split)
