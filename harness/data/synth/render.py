"""Render one ``ImageJob`` into a PIL image: background, person, occluders, camera.

The picture is drawn at ``supersample`` times the output size and reduced (anti-aliasing), then
the camera model degrades it. All randomness comes from RNGs keyed by the job, so rendering is
independent of order and of which other images are rendered.

``render_with_masks`` also returns the image's ground-truth parsing as five soft region maps
(``parts``): the same drawing calls go to a label image too, so the picture is the one ``render``
gives, pixel for pixel. Camera effects (resolution, blur, noise, light) and the junk images' blur
change no label: the maps are the geometry of what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .camera import Lighting, apply_camera, combine, lighting_for
from .domains import VIEWS, DomainSpec
from .identity import Identity, sample_identity
from .layout import ImageJob
from .parts import new_label_image, soft_masks
from .person import Pose, draw_person
from .scene import SCENES_PER_CAMERA, camera_scene, draw_occluder
from .seeding import pick, pick_index, random_sign, rng_for

PASSERBY_POOL = 256  # people who are not in the dataset: occluders and distractors
VIEW_CHANGE_PROB = 0.12  # a tracklet's viewpoint is mostly fixed (one walk past the camera)
PARTIAL_CROP_PROB = 0.08


@dataclass(frozen=True)
class Tracklet:
    """What stays (nearly) fixed while one person walks past one camera."""

    view: str
    facing: int
    scene: int
    pan: float  # background offset, fraction of the scene's free width
    pan_step: float
    height_frac: float  # person height / crop height
    cx_offset: float  # horizontal offset of the body centre, fraction of crop width
    phase0: float
    phase_step: float
    light: Lighting


class Renderer:
    def __init__(self, domain: DomainSpec, seed: int, image_size: tuple[int, int], supersample: int = 2):
        height, width = image_size
        if height < 16 or width < 8:
            raise ValueError(f"image_size={image_size} is too small: use at least (16, 8) pixels (height, width)")
        self.domain, self.seed, self.image_size = domain, int(seed), (int(height), int(width))
        self.ss = int(supersample)
        self.canvas_size = (int(width) * self.ss, int(height) * self.ss)  # PIL order: (w, h)
        self._identities: dict[tuple[str, int], Identity] = {}
        self._tracklets: dict[tuple[int, int], Tracklet] = {}

    # ---- cached, seed-keyed draws --------------------------------------------------------
    def identity(self, pid: int, purpose: str = "identity") -> Identity:
        key = (purpose, pid)
        if key not in self._identities:
            if len(self._identities) > 4096:
                self._identities.clear()
            self._identities[key] = sample_identity(self.domain, rng_for(self.seed, self.domain.name, purpose, pid))
        return self._identities[key]

    def tracklet(self, pid: int, cam: int) -> Tracklet:
        key = (pid, cam)
        if key not in self._tracklets:
            if len(self._tracklets) > 4096:
                self._tracklets.clear()
            self._tracklets[key] = self._new_tracklet(pid, cam)
        return self._tracklets[key]

    def _new_tracklet(self, pid: int, cam: int) -> Tracklet:
        spec = self.domain.cameras[cam - 1]
        rng = rng_for(self.seed, self.domain.name, "tracklet", pid, cam)
        return Tracklet(
            view=self._view(spec.view_weights, rng),
            facing=1 if rng.random() < 0.5 else -1,
            scene=int(rng.integers(SCENES_PER_CAMERA)),
            pan=float(rng.uniform(0, 1)),
            pan_step=float(rng.uniform(-0.04, 0.04)),
            height_frac=float(rng.uniform(*spec.person_height)),
            cx_offset=float(rng.normal(0, 0.04)),
            phase0=float(rng.uniform(0, 2 * np.pi)),
            phase_step=float(rng.uniform(0.9, 2.2)),
            light=lighting_for(spec, rng, spread=1.0),
        )

    @staticmethod
    def _view(weights: tuple[float, float, float], rng: np.random.Generator) -> str:
        return VIEWS[pick_index(rng, weights)]

    def _background(self, cam: int, scene: int, pan: float) -> Image.Image:
        img = camera_scene(self.domain.name, self.seed, cam, scene, self.canvas_size)
        w, h = self.canvas_size
        x = int(round(min(1.0, max(0.0, pan)) * (img.width - w)))
        return img.crop((x, 0, x + w, h))

    # ---- rendering -----------------------------------------------------------------------
    def render(self, job: ImageJob) -> Image.Image:
        return self._render(job, None)

    def render_with_masks(self, job: ImageJob) -> tuple[Image.Image, np.ndarray]:
        """The image ``render`` gives and its parsing: uint8 ``5 × H × W`` (``parts.REGIONS`` order, × 255)."""
        labels = new_label_image(self.canvas_size)
        image = self._render(job, labels)
        return image, soft_masks(labels, self.ss)

    def _render(self, job: ImageJob, labels: Image.Image | None) -> Image.Image:
        if job.kind == "person":
            return self._render_person(job, labels)
        if job.kind == "distractor":
            return self._render_distractor(job, labels)
        if job.kind == "junk":
            return self._render_junk(job, labels)
        raise ValueError(f"unknown image kind {job.kind!r}; valid: person, distractor, junk")

    def _finish(self, canvas: Image.Image, cam: int, light: Lighting, rng: np.random.Generator) -> Image.Image:
        img = canvas.reduce(self.ss) if self.ss > 1 else canvas
        return apply_camera(img, self.domain.cameras[cam - 1], light, rng)

    def _passerby_pose(self, rng: np.random.Generator, cam: int, cx: float, height_scale: float = 1.0) -> Pose:
        w, h = self.canvas_size
        spec = self.domain.cameras[cam - 1]
        return Pose(view=self._view(spec.view_weights, rng), facing=1 if rng.random() < 0.5 else -1, cx=cx,
                    foot_y=h * float(rng.uniform(0.95, 1.02)),
                    height_px=h * float(rng.uniform(*spec.person_height)) * height_scale,
                    phase=float(rng.uniform(0, 2 * np.pi)))

    def _draw_passerby(self, canvas: Image.Image, rng: np.random.Generator, cam: int, cx: float,
                       height_scale: float = 1.0, labels: Image.Image | None = None) -> None:
        ident = self.identity(int(rng.integers(PASSERBY_POOL)), purpose="passerby")
        draw_person(canvas, ident, self._passerby_pose(rng, cam, cx, height_scale * ident.height), labels)

    def _render_person(self, job: ImageJob, labels: Image.Image | None = None) -> Image.Image:
        spec = self.domain.cameras[job.cam - 1]
        ident = self.identity(job.pid)
        tr = self.tracklet(job.pid, job.cam)
        rng = rng_for(self.seed, self.domain.name, "image", job.pid, job.cam, job.index)
        w, h = self.canvas_size
        view, facing = tr.view, tr.facing
        if rng.random() < VIEW_CHANGE_PROB:
            view, facing = self._view(spec.view_weights, rng), (1 if rng.random() < 0.5 else -1)
        canvas = self._background(job.cam, tr.scene, tr.pan + job.index * tr.pan_step)
        height = h * tr.height_frac * ident.height * float(rng.uniform(0.97, 1.03))
        cx = w * (0.5 + tr.cx_offset + float(rng.normal(0, 0.035)))
        foot_y = h * (0.985 + float(rng.normal(0, 0.012)))
        if rng.random() < PARTIAL_CROP_PROB:  # detector boxes that cut the person
            r = rng.random()
            if r < 0.4:  # box too small: legs cut
                height *= float(rng.uniform(1.15, 1.4))
                foot_y += height * float(rng.uniform(0.1, 0.25))
            elif r < 0.7:  # box too low: head cut
                foot_y, height = h * float(rng.uniform(0.8, 0.9)), height * float(rng.uniform(1.0, 1.1))
            else:  # box shifted sideways
                cx += w * random_sign(rng) * float(rng.uniform(0.18, 0.3))
        occluded = rng.random() < spec.occlusion_prob
        occluder = pick(rng, ("pole", "low", "bush", "sign", "person", "person")) if occluded else ""
        if occluder == "person" and rng.random() < 0.5:  # someone walking behind
            self._draw_passerby(canvas, rng, job.cam, cx + w * random_sign(rng) * float(rng.uniform(0.4, 0.6)),
                                labels=labels)
            occluder = ""
        pose = Pose(view=view, facing=facing, cx=cx, foot_y=foot_y, height_px=height,
                    phase=tr.phase0 + job.index * tr.phase_step)
        draw_person(canvas, ident, pose, labels)
        if occluder == "person":  # someone walking in front, partly covering
            self._draw_passerby(canvas, rng, job.cam, cx + w * random_sign(rng) * float(rng.uniform(0.5, 0.75)),
                                height_scale=1.05, labels=labels)
        elif occluder:
            draw_occluder(canvas, occluder, rng, self.domain.object_colours, labels)
        light = combine(tr.light, lighting_for(spec, rng, spread=0.3), spec)
        return self._finish(canvas, job.cam, light, rng)

    def _render_distractor(self, job: ImageJob, labels: Image.Image | None = None) -> Image.Image:
        """Identity 0000: false detections — background, body fragments, or unrelated passers-by."""
        spec = self.domain.cameras[job.cam - 1]
        rng = rng_for(self.seed, self.domain.name, "distractor", job.index)
        w, _ = self.canvas_size
        canvas = self._background(job.cam, int(rng.integers(SCENES_PER_CAMERA)), float(rng.uniform(0, 1)))
        r = rng.random()
        if r < 0.4:
            draw_occluder(canvas, pick(rng, ("pole", "low", "bush", "sign")), rng, self.domain.object_colours, labels)
        elif r < 0.8:
            side = random_sign(rng)
            self._draw_passerby(canvas, rng, job.cam, w * (0.5 + side * float(rng.uniform(0.45, 0.7))),
                                height_scale=float(rng.uniform(1.0, 1.6)), labels=labels)
        else:
            self._draw_passerby(canvas, rng, job.cam, w * float(rng.uniform(0.4, 0.6)), labels=labels)
        return self._finish(canvas, job.cam, lighting_for(spec, rng), rng)

    def _render_junk(self, job: ImageJob, labels: Image.Image | None = None) -> Image.Image:
        """Identity -1: fragments of a test person (head and shoulders, or legs), often blurred."""
        spec = self.domain.cameras[job.cam - 1]
        rng = rng_for(self.seed, self.domain.name, "junk", job.index)
        ident = self.identity(job.pid)
        tr = self.tracklet(job.pid, job.cam)
        w, h = self.canvas_size
        canvas = self._background(job.cam, tr.scene, tr.pan)
        height = h * float(rng.uniform(1.8, 3.0))
        foot_y = h + height * 0.62 if rng.random() < 0.5 else h * float(rng.uniform(0.6, 1.0))
        pose = Pose(view=tr.view, facing=tr.facing, cx=w * float(rng.uniform(0.3, 0.7)), foot_y=foot_y,
                    height_px=height, phase=float(rng.uniform(0, 2 * np.pi)))
        draw_person(canvas, ident, pose, labels)
        if rng.random() < 0.5:
            canvas = canvas.filter(ImageFilter.GaussianBlur(2.0 * self.ss))
        return self._finish(canvas, job.cam, combine(tr.light, lighting_for(spec, rng, 0.3), spec), rng)
