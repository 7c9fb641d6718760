"""Registry of synthetic domains: palettes, cameras and split sizes.

A domain is pure data. Everything random about an image is drawn later from RNGs seeded by
(seed, domain, identity, camera, index), so editing one camera here changes only that camera's
images — but it does change the pixels, so bump ``GENERATOR_VERSION`` (generate.py) when you do.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class CameraSpec:
    """One camera: what it sees (viewpoints, scenes) and how it distorts (light, optics, noise)."""

    view_weights: tuple[float, float, float]  # front, back, side
    gain: float  # overall brightness multiplier
    cast: tuple[float, float, float]  # per-channel colour multipliers (white balance)
    gamma: float  # >1 darkens mid-tones
    haze: float  # additive offset in 0-255 units (fog, flare, washed-out sensors)
    resolution: tuple[float, float]  # range of effective sampling factor (1 = full resolution)
    blur_px: tuple[float, float]  # range of Gaussian blur radius in output pixels
    noise_std: float  # sensor noise std in 0-255 units
    wall_colours: tuple[RGB, ...]
    ground_colours: tuple[RGB, ...]
    person_height: tuple[float, float] = (0.84, 0.97)  # person height / box height
    occlusion_prob: float = 0.15
    traffic: float = 1.0  # relative chance that an identity passes this camera
    horizon: tuple[float, float] = (0.25, 0.6)  # wall/ground boundary as a fraction of height


@dataclass(frozen=True)
class DomainSpec:
    """A family of cameras and people (one 'dataset' in the Market/Duke sense)."""

    name: str
    description: str
    cameras: tuple[CameraSpec, ...]
    upper_colours: tuple[RGB, ...]
    lower_colours: tuple[RGB, ...]
    accent_colours: tuple[RGB, ...]  # logos, bags, hats, shoes, texture second colours
    object_colours: tuple[RGB, ...]  # scene objects (signs, bins, cars)
    skin_tones: tuple[RGB, ...] = (
        (236, 200, 170), (214, 166, 128), (182, 130, 92), (140, 94, 62), (96, 64, 44),
    )
    hair_colours: tuple[RGB, ...] = (
        (25, 20, 18), (60, 40, 28), (105, 70, 40), (200, 170, 110), (150, 150, 150),
    )
    default_num_ids: int = 360
    # probability of an identity appearing in k cameras, k = 2, 3, ...
    cams_per_id_weights: tuple[float, ...] = (0.12, 0.28, 0.32, 0.2, 0.08)
    train_imgs_per_cam: tuple[int, int] = (3, 5)  # inclusive range
    test_imgs_per_cam: tuple[int, int] = (3, 5)  # one of them becomes the query
    distractor_fraction: float = 0.11  # pid 0000 images / true gallery images
    junk_fraction: float = 0.07  # pid -1 images / true gallery images
    seqs_per_cam: int = 6
    # colour i of a palette is drawn with weight 1 / (1 + palette_skew * i): larger values make
    # the first (dull) colours dominate, so more identities share their clothing colours
    palette_skew: float = 0.25
    upper_pattern_weights: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2)  # plain, stripes, checks, dots
    # clothing style probabilities
    skirt_prob: float = 0.15
    shorts_prob: float = 0.15
    coat_prob: float = 0.1
    short_sleeve_prob: float = 0.5

    @property
    def num_cams(self) -> int:
        return len(self.cameras)


def _cam(views: tuple[float, float, float], gain: float, cast: tuple[float, float, float], gamma: float,
         haze: float, resolution: tuple[float, float], blur_px: tuple[float, float], noise_std: float,
         walls: tuple[RGB, ...], grounds: tuple[RGB, ...], **kwargs: object) -> CameraSpec:
    return CameraSpec(view_weights=views, gain=gain, cast=cast, gamma=gamma, haze=haze,
                      resolution=resolution, blur_px=blur_px, noise_std=noise_std,
                      wall_colours=walls, ground_colours=grounds, **kwargs)  # type: ignore[arg-type]


# Domain A: a bright summer campus with 6 cameras (Market-1501-like). Saturated clothes.
_DOMAIN_A = DomainSpec(
    name="A",
    description="bright summer campus, 6 cameras (Market-1501-like)",
    cameras=(
        _cam((0.55, 0.2, 0.25), 0.92, (1.0, 0.97, 1.05), 1.05, 10, (0.8, 1.0), (0.3, 0.6), 5,
             ((88, 86, 96), (70, 76, 70)), ((96, 94, 104), (84, 86, 92))),
        _cam((0.2, 0.5, 0.3), 1.0, (1.06, 0.98, 0.92), 0.95, 4, (0.75, 1.0), (0.3, 0.7), 4,
             ((62, 112, 70), (60, 90, 120)), ((118, 104, 112), (104, 96, 100)), traffic=1.2),
        _cam((0.25, 0.25, 0.5), 1.08, (1.0, 1.02, 0.95), 0.9, 22, (0.85, 1.0), (0.2, 0.5), 4,
             ((196, 196, 186), (170, 176, 168)), ((176, 176, 166), (160, 162, 150)),
             person_height=(0.78, 0.92)),
        _cam((0.45, 0.3, 0.25), 0.95, (0.92, 1.04, 0.98), 1.0, 8, (0.7, 0.95), (0.4, 0.8), 6,
             ((46, 98, 52), (120, 40, 70)), ((96, 96, 96), (110, 104, 98)), occlusion_prob=0.25),
        _cam((0.5, 0.25, 0.25), 1.05, (1.04, 0.94, 1.08), 1.0, 14, (0.85, 1.0), (0.2, 0.5), 5,
             ((170, 150, 190), (150, 140, 170)), ((180, 168, 190), (160, 150, 170)), traffic=1.1),
        _cam((0.3, 0.45, 0.25), 0.98, (0.96, 0.98, 1.1), 1.05, 16, (0.65, 0.9), (0.4, 0.8), 7,
             ((120, 124, 150), (100, 100, 120)), ((140, 140, 160), (120, 122, 136)), traffic=0.6),
    ),
    upper_colours=(
        (236, 236, 230), (34, 34, 38), (206, 44, 52), (232, 96, 156), (236, 214, 62),
        (72, 196, 196), (52, 92, 206), (74, 150, 62), (132, 72, 164), (136, 136, 140),
    ),
    lower_colours=(
        (30, 30, 34), (72, 72, 78), (48, 66, 130), (112, 140, 190), (190, 160, 112),
        (112, 76, 46), (230, 92, 160), (232, 222, 60),
    ),
    accent_colours=(
        (240, 240, 240), (20, 20, 24), (220, 40, 40), (240, 200, 40), (40, 90, 220),
        (40, 170, 90), (240, 120, 30), (160, 60, 200), (90, 200, 220),
    ),
    object_colours=(
        (220, 40, 110), (40, 40, 160), (60, 140, 60), (230, 230, 120), (200, 200, 210), (150, 100, 60),
    ),
    default_num_ids=360,
    cams_per_id_weights=(0.1, 0.25, 0.33, 0.22, 0.1),
    train_imgs_per_cam=(3, 4),
    seqs_per_cam=6,
)

# Domain B: a darker, blurrier winter campus with 8 cameras (DukeMTMC-reID-like). Dark clothes,
# more coats and skirts, stronger colour casts, lower effective resolution.
_DOMAIN_B = DomainSpec(
    name="B",
    description="darker, blurrier winter campus, 8 cameras (DukeMTMC-reID-like)",
    cameras=(
        _cam((0.5, 0.25, 0.25), 0.8, (0.95, 1.0, 1.0), 1.15, 12, (0.45, 0.70), (0.75, 1.25), 6,
             ((110, 120, 100), (90, 100, 90)), ((150, 150, 160), (130, 130, 140))),
        _cam((0.35, 0.4, 0.25), 0.85, (1.08, 0.95, 0.95), 1.1, 18, (0.50, 0.75), (0.65, 1.15), 6,
             ((190, 160, 150), (150, 120, 110)), ((200, 180, 190), (170, 150, 160))),
        _cam((0.2, 0.2, 0.6), 0.9, (0.95, 1.1, 0.9), 1.0, 20, (0.40, 0.65), (0.85, 1.45), 7,
             ((40, 70, 50), (60, 90, 60)), ((180, 230, 170), (150, 200, 140)), person_height=(0.8, 0.95)),
        _cam((0.4, 0.35, 0.25), 0.82, (1.0, 0.92, 1.1), 1.1, 10, (0.45, 0.70), (0.75, 1.25), 7,
             ((120, 20, 24), (90, 30, 40)), ((150, 130, 190), (130, 120, 170)), occlusion_prob=0.25),
        _cam((0.45, 0.3, 0.25), 0.88, (0.92, 1.05, 0.98), 1.05, 14, (0.50, 0.75), (0.65, 1.15), 6,
             ((40, 52, 44), (56, 70, 60)), ((190, 230, 200), (160, 200, 170))),
        _cam((0.3, 0.45, 0.25), 0.78, (1.1, 0.98, 0.9), 1.15, 12, (0.40, 0.65), (0.85, 1.35), 8,
             ((110, 24, 30), (80, 40, 40)), ((130, 110, 120), (150, 120, 130)), traffic=0.9),
        _cam((0.35, 0.3, 0.35), 0.86, (1.0, 1.0, 0.9), 1.1, 16, (0.45, 0.70), (0.75, 1.25), 7,
             ((130, 120, 100), (110, 100, 90)), ((170, 150, 150), (150, 140, 140)), traffic=0.8),
        _cam((0.4, 0.3, 0.3), 0.75, (0.95, 0.98, 1.08), 1.2, 8, (0.40, 0.60), (0.95, 1.55), 9,
             ((36, 40, 36), (50, 54, 48)), ((180, 180, 150), (160, 160, 130)), traffic=0.7,
             occlusion_prob=0.2),
    ),
    upper_colours=(
        (26, 26, 30), (56, 56, 62), (36, 42, 82), (42, 72, 52), (112, 32, 42), (96, 66, 46),
        (124, 124, 130), (192, 178, 152), (226, 226, 222), (98, 78, 142),
    ),
    lower_colours=(
        (24, 24, 28), (54, 54, 60), (40, 52, 92), (82, 102, 150), (100, 64, 40), (120, 120, 126),
        (186, 168, 130), (70, 50, 90),
    ),
    accent_colours=(
        (230, 230, 230), (16, 16, 18), (160, 40, 40), (200, 170, 60), (60, 80, 160), (60, 120, 80),
        (180, 120, 200), (120, 200, 120),
    ),
    object_colours=(
        (200, 160, 220), (120, 200, 120), (180, 60, 70), (140, 140, 200), (90, 90, 90), (220, 200, 170),
    ),
    default_num_ids=340,
    cams_per_id_weights=(0.16, 0.3, 0.3, 0.16, 0.08),
    train_imgs_per_cam=(3, 5),
    test_imgs_per_cam=(3, 5),
    seqs_per_cam=4,
    palette_skew=0.6,
    upper_pattern_weights=(0.62, 0.14, 0.14, 0.1),  # winter clothes: mostly plain
    skirt_prob=0.22,
    shorts_prob=0.05,
    coat_prob=0.3,
    short_sleeve_prob=0.2,
)

# Domain C: an indoor mall at night with 4 cameras: warm artificial light, strong casts,
# heavy noise. Small, for quick cross-domain checks.
_DOMAIN_C = DomainSpec(
    name="C",
    description="indoor mall under artificial light, 4 cameras (small, noisy)",
    cameras=(
        _cam((0.5, 0.3, 0.2), 0.9, (1.15, 1.0, 0.78), 1.0, 6, (0.6, 0.85), (0.5, 0.9), 10,
             ((200, 180, 140), (170, 150, 120)), ((150, 130, 110), (120, 110, 100))),
        _cam((0.3, 0.4, 0.3), 0.85, (0.85, 1.05, 1.15), 1.05, 10, (0.6, 0.85), (0.5, 0.9), 11,
             ((140, 170, 190), (110, 140, 160)), ((200, 200, 200), (170, 170, 170))),
        _cam((0.3, 0.3, 0.4), 0.8, (1.1, 0.9, 1.05), 1.1, 8, (0.55, 0.8), (0.6, 1.0), 12,
             ((90, 60, 90), (120, 80, 60)), ((110, 90, 80), (90, 80, 80)), occlusion_prob=0.3),
        _cam((0.45, 0.3, 0.25), 0.95, (1.0, 1.08, 0.9), 0.95, 14, (0.65, 0.9), (0.4, 0.8), 9,
             ((220, 220, 210), (190, 190, 180)), ((170, 160, 150), (150, 140, 130))),
    ),
    upper_colours=(
        (236, 236, 230), (34, 34, 38), (190, 50, 60), (60, 90, 180), (70, 140, 70), (220, 200, 80),
        (120, 120, 126), (150, 90, 160),
    ),
    lower_colours=((30, 30, 34), (70, 70, 78), (48, 66, 130), (112, 140, 190), (180, 150, 110), (100, 70, 50)),
    accent_colours=((240, 240, 240), (20, 20, 24), (220, 40, 40), (240, 200, 40), (40, 90, 220), (40, 170, 90)),
    object_colours=((230, 60, 60), (60, 60, 200), (230, 230, 230), (40, 160, 160), (200, 140, 40)),
    default_num_ids=160,
    cams_per_id_weights=(0.3, 0.4, 0.3),
    seqs_per_cam=3,
)

DOMAINS: dict[str, DomainSpec] = {d.name: d for d in (_DOMAIN_A, _DOMAIN_B, _DOMAIN_C)}


def get_domain(name: str) -> DomainSpec:
    """The registered domain called ``name`` (case-insensitive)."""
    key = str(name).strip().upper()
    if key not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {name!r}; valid domains: {', '.join(DOMAINS)}")
    return DOMAINS[key]
