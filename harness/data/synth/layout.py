"""Which images a synthetic domain has, and their Market-1501 names. Pure: no drawing, no I/O.

Market-1501 conventions reproduced here:

* ``bounding_box_train/``, ``bounding_box_test/`` (the gallery) and ``query/``;
* names ``PPPP_cXsY_FFFFFF_BB.jpg``: 4-digit identity, camera X, sequence Y, 6-digit frame,
  2-digit box index within the frame;
* train and test identities are disjoint (about half each);
* each test identity gets one query per camera it appears in; its other images in that camera
  go to the gallery, and since it appears in at least two cameras every query has a true match
  under another camera;
* the gallery also holds distractors (identity ``0000``: background and badly placed boxes) and
  junk (identity ``-1``: fragments of people, ignored by the evaluation).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .domains import DomainSpec
from .seeding import rng_for

SPLIT_DIRS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
NAME_PATTERN = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
MAX_IDS = 9999  # four digits in the file name


@dataclass(frozen=True)
class ImageJob:
    """One image to render. ``index`` keys its RNG; ``pid`` is the identity drawn in it."""

    split: str  # "train" | "query" | "gallery"
    kind: str  # "person" | "distractor" | "junk"
    pid: int  # person: its identity; junk: the test identity it is a fragment of; distractor: 0
    cam: int  # 1-based
    seq: int
    frame: int
    box: int
    index: int  # person: position in its (pid, cam) tracklet; distractor/junk: running number

    @property
    def label(self) -> int:
        """The identity written in the file name (0 for distractors, -1 for junk)."""
        return {"person": self.pid, "distractor": 0, "junk": -1}[self.kind]

    @property
    def filename(self) -> str:
        pid = "-1" if self.label == -1 else f"{self.label:04d}"
        return f"{pid}_c{self.cam}s{self.seq}_{self.frame:06d}_{self.box:02d}.jpg"

    @property
    def relpath(self) -> str:
        return f"{SPLIT_DIRS[self.split]}/{self.filename}"


@dataclass(frozen=True)
class Plan:
    jobs: tuple[ImageJob, ...]
    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]


def _weights(values: tuple[float, ...]) -> np.ndarray:
    p = np.asarray(values, dtype=float)
    return p / p.sum()


def plan_domain(domain: DomainSpec, num_ids: int, seed: int) -> Plan:
    """Every image of a domain with ``num_ids`` identities (numbered 1..num_ids)."""
    if not 2 <= num_ids <= MAX_IDS:
        raise ValueError(f"num_ids={num_ids} is not valid: use 2..{MAX_IDS} (half train, half test identities)")
    if domain.test_imgs_per_cam[0] < 2:
        raise ValueError(f"domain {domain.name}: test_imgs_per_cam must start at 2 or more (one query + gallery)")
    num_cams = domain.num_cams
    traffic = _weights(tuple(c.traffic for c in domain.cameras))
    order = rng_for(seed, domain.name, "split").permutation(num_ids) + 1
    num_train = math.ceil(num_ids / 2)
    train_ids = tuple(sorted(int(p) for p in order[:num_train]))
    test_ids = tuple(sorted(int(p) for p in order[num_train:]))
    test_set = set(test_ids)

    jobs: list[ImageJob] = []
    appearances: dict[int, list[tuple[int, int]]] = {}  # test pid -> [(cam, seq)]
    max_track = max(domain.train_imgs_per_cam[1], domain.test_imgs_per_cam[1])
    for pid in range(1, num_ids + 1):
        rng = rng_for(seed, domain.name, "cameras", pid)
        k_options = tuple(range(2, 2 + len(domain.cams_per_id_weights)))
        k = min(num_cams, int(rng.choice(k_options, p=_weights(domain.cams_per_id_weights))))
        cams = sorted(int(c) + 1 for c in rng.choice(num_cams, size=k, replace=False, p=traffic))
        is_test = pid in test_set
        for cam in cams:
            # One RNG per (identity, camera), drawing the same numbers whatever the split, so a
            # track does not change when other identities are added or change split.
            trng = rng_for(seed, domain.name, "track", pid, cam)
            n_train = int(trng.integers(domain.train_imgs_per_cam[0], domain.train_imgs_per_cam[1] + 1))
            n_test = int(trng.integers(domain.test_imgs_per_cam[0], domain.test_imgs_per_cam[1] + 1))
            query_index = int(trng.random() * n_test)
            seq = int(trng.integers(1, domain.seqs_per_cam + 1))
            frames = int(trng.integers(100, 150_000)) + np.cumsum(trng.integers(5, 40, size=max_track))
            boxes = trng.integers(1, 4, size=max_track)
            for i in range(n_test if is_test else n_train):  # consecutive detections of one walk
                split = "train" if not is_test else ("query" if i == query_index else "gallery")
                jobs.append(ImageJob(split, "person", pid, cam, seq, int(frames[i]), int(boxes[i]), i))
            if is_test:
                appearances.setdefault(pid, []).append((cam, seq))

    num_true_gallery = sum(1 for j in jobs if j.split == "gallery")
    used = {j.relpath for j in jobs}
    rng = rng_for(seed, domain.name, "distractors")
    num_distractors = max(1, round(domain.distractor_fraction * num_true_gallery))
    for i in range(num_distractors):
        cam = int(rng.choice(num_cams, p=traffic)) + 1
        job = _unique(used, rng, "distractor", 0, cam, int(rng.integers(1, domain.seqs_per_cam + 1)), i)
        jobs.append(job)
    rng = rng_for(seed, domain.name, "junk")
    num_junk = max(1, round(domain.junk_fraction * num_true_gallery)) if test_ids else 0
    for i in range(num_junk):
        pid = test_ids[int(rng.integers(len(test_ids)))]
        cam, seq = appearances[pid][int(rng.integers(len(appearances[pid])))]
        jobs.append(_unique(used, rng, "junk", pid, cam, seq, i))
    return Plan(jobs=tuple(jobs), train_ids=train_ids, test_ids=test_ids)


def _unique(used: set[str], rng: np.random.Generator, kind: str, pid: int, cam: int, seq: int, index: int) -> ImageJob:
    """A gallery job with a frame/box whose file name is not taken yet."""
    while True:
        job = ImageJob("gallery", kind, pid, cam, seq, int(rng.integers(100, 200_000)), int(rng.integers(1, 9)), index)
        if job.relpath not in used:
            used.add(job.relpath)
            return job
