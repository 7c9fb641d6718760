"""Draw one person with Pillow primitives: a few dozen polygons, thick lines and ellipses.

Geometry is expressed as fractions of the person's height ``u`` so the same code draws any size.
Garments with a pattern are drawn into a mask and filled from a cached texture image anchored to
the body, so stripes and checks move with the person rather than with the picture.

``draw_person(..., labels=L)`` also draws every shape, with the same geometry, into the label
image ``L`` (see ``parts``): pictures are identical with or without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .domains import RGB
from .identity import Identity, Texture
from .parts import BACKGROUND, HEAD, LOWER, SHOES, UPPER, LabelledDraw


@dataclass(frozen=True)
class Pose:
    view: str  # "front" | "back" | "side"
    facing: int  # side view: +1 walks towards the right of the picture, -1 towards the left
    cx: float  # body centre x in canvas pixels
    foot_y: float  # bottom of the feet in canvas pixels
    height_px: float  # head-to-feet height in canvas pixels
    phase: float  # gait phase in radians


def shade(colour: RGB, factor: float) -> RGB:
    return tuple(max(0, min(255, int(c * factor))) for c in colour)  # type: ignore[return-value]


@lru_cache(maxsize=512)
def texture_image(texture: Texture, period_px: int, size: tuple[int, int]) -> Image.Image:
    """A texture tile covering ``size`` plus one period; pattern origin at (0, 0). Never mutate it."""
    p = max(2, period_px)
    w, h = size[0] + p, size[1] + p
    if texture.pattern == "checks":
        yy, xx = np.indices((h, w))
        on = ((yy // max(1, p // 2)) + (xx // max(1, p // 2))) % 2 == 1
        arr = np.where(on[..., None], np.array(texture.second, np.uint8), np.array(texture.colour, np.uint8))
        return Image.fromarray(arr.astype(np.uint8), "RGB")
    img = Image.new("RGB", (w, h), texture.colour)
    draw = ImageDraw.Draw(img)
    if texture.pattern == "stripes":
        band = max(1, int(p * 0.45 + 0.5))  # stripe thickness, rounded half up
        for y in range(0, h, p):
            draw.rectangle((0, y, w, y + band - 1), fill=texture.second)
    elif texture.pattern == "dots":
        r = max(1.0, p * 0.22)
        for row, y in enumerate(range(0, h + p, p)):
            shift = (p // 2) if row % 2 else 0
            for x in range(-p, w + p, p):
                draw.ellipse((x + shift - r, y - r, x + shift + r, y + r), fill=texture.second)
    return img


class _Garment:
    """Draws shapes in a garment's base colour, and (patterned garments) records them in a mask."""

    def __init__(self, img: Image.Image, draw: LabelledDraw, texture: Texture, period_px: int, region: int):
        self.img, self.draw, self.texture, self.period_px = img, draw, texture, period_px
        self.region = region  # the parsing label of everything this garment draws
        self.mask: Image.Image | None = None
        self.mdraw: ImageDraw.ImageDraw | None = None
        if texture.pattern != "plain":
            self.mask = Image.new("L", img.size, 0)
            self.mdraw = ImageDraw.Draw(self.mask)

    def polygon(self, pts: list[tuple[float, float]]) -> None:
        self.draw.at(self.region).polygon(pts, fill=self.texture.colour)
        if self.mdraw is not None:
            self.mdraw.polygon(pts, fill=255)

    def line(self, pts: list[tuple[float, float]], width: float) -> None:
        w = max(1, int(round(width)))
        self.draw.at(self.region).line(pts, fill=self.texture.colour, width=w, joint="curve")
        if self.mdraw is not None:
            self.mdraw.line(pts, fill=255, width=w, joint="curve")

    def flush(self, anchor: tuple[float, float]) -> None:
        """Fill the recorded shapes with the pattern, phase-locked to ``anchor``."""
        if self.mask is None:
            return
        tex = texture_image(self.texture, self.period_px, self.img.size)
        p = max(2, self.period_px)
        x0, y0 = int(-anchor[0]) % p, int(-anchor[1]) % p
        self.img.paste(tex.crop((x0, y0, x0 + self.img.width, y0 + self.img.height)), (0, 0), self.mask)


def _ellipse(draw: ImageDraw.ImageDraw | LabelledDraw, cx: float, cy: float, rx: float, ry: float, fill: RGB) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def draw_person(img: Image.Image, ident: Identity, pose: Pose, labels: Image.Image | None = None) -> None:
    """Draw ``ident`` in ``pose`` onto ``img`` (RGB, modified in place) and, if given, its parsing into ``labels``."""
    draw = LabelledDraw(img, labels)
    u = pose.height_px
    top = pose.foot_y - u
    cx = pose.cx
    side = pose.view == "side"
    f = pose.facing if side else 1
    s = math.sin(pose.phase)

    def y(frac: float) -> float:
        return top + frac * u

    bw = ident.width
    shoulder_y, hip_y, crotch_y, knee_y, ankle_y = y(0.185), y(0.5), y(0.565), y(0.75), y(0.955)
    hem_y = y(0.69) if ident.coat else y(0.53)
    half_sh = (0.155 if not side else 0.085) * u * bw  # shoulder half-width (or half body depth)
    half_hip = (0.125 if not side else 0.08) * u * bw
    leg_w = 0.085 * u * min(1.15, bw)
    arm_w = 0.062 * u * min(1.15, bw)
    head_cy, head_rx, head_ry = y(0.078), 0.066 * u, 0.074 * u
    # Pattern periods follow the canvas, not this image's body size, so one cached texture serves
    # every image of an identity (the body size varies by a few percent only).
    nominal_u = 0.9 * img.height
    upper = _Garment(img, draw, ident.upper, int(round(ident.upper.period * nominal_u)), UPPER)
    lower = _Garment(img, draw, ident.lower, int(round(ident.lower.period * nominal_u)), LOWER)
    # The person's right side is on the picture's left when seen from the front.
    carry_x = -ident.carry_side if pose.view == "front" else ident.carry_side
    carry_visible = (not side) or (ident.carry_side == (-1 if f > 0 else 1))

    # --- legs and feet -------------------------------------------------------------------
    if side:
        stride = 0.12 * u
        feet = [(cx - f * stride * s, ankle_y), (cx + f * stride * s, ankle_y)]  # far, near
        knees = [((cx + fx) / 2 + f * 0.025 * u * abs(s), knee_y) for fx, _ in feet]
        hips = [(cx - f * 0.01 * u, hip_y), (cx + f * 0.01 * u, hip_y)]
    else:
        lift = 0.025 * u
        spread = 0.066 * u * bw
        feet = [(cx - spread - 0.01 * u * s, ankle_y - lift * max(0.0, s)),
                (cx + spread + 0.01 * u * s, ankle_y - lift * max(0.0, -s))]
        knees = [(cx - spread * 0.95, knee_y), (cx + spread * 0.95, knee_y)]
        hips = [(cx - spread * 0.8, hip_y), (cx + spread * 0.8, hip_y)]
    trousers = ident.lower_style == "trousers"
    for i in range(2):
        far = side and i == 0
        legs_colour = shade(ident.lower.colour if trousers else ident.skin, 0.78 if far else 1.0)
        pts = [hips[i], knees[i], feet[i]]
        if trousers and not far:
            lower.line(pts, leg_w)
        else:
            width = max(1, int(round(leg_w * (1.0 if trousers else 0.8))))  # bare legs are thinner
            draw.at(LOWER).line(pts, fill=legs_colour, width=width, joint="curve")
        if ident.lower_style == "shorts":
            mid = ((hips[i][0] + knees[i][0]) / 2, (hips[i][1] + knees[i][1]) / 2 + 0.04 * u)
            if far:
                draw.at(LOWER).line([hips[i], mid], fill=shade(ident.lower.colour, 0.78), width=max(1, int(leg_w * 1.1)))
            else:
                lower.line([hips[i], mid], leg_w * 1.1)
        fx, fy = feet[i]
        shoe_fwd = f * 0.03 * u if side else 0.0
        draw.at(SHOES).ellipse((fx - 0.04 * u + min(0.0, shoe_fwd), fy - 0.018 * u,
                      fx + 0.04 * u + max(0.0, shoe_fwd), fy + 0.04 * u),
                     fill=shade(ident.shoes, 0.8 if far else 1.0))
    # hip block / skirt
    if ident.lower_style == "skirt":
        flare = 1.55
        lower.polygon([(cx - half_hip, hip_y - 0.03 * u), (cx + half_hip, hip_y - 0.03 * u),
                       (cx + half_hip * flare, knee_y - 0.01 * u), (cx - half_hip * flare, knee_y - 0.01 * u)])
    else:
        lower.polygon([(cx - half_hip, hip_y - 0.03 * u), (cx + half_hip, hip_y - 0.03 * u),
                       (cx + half_hip * 0.9, crotch_y), (cx - half_hip * 0.9, crotch_y)])
    lower.flush((cx, top))

    # --- things behind the body ----------------------------------------------------------
    if side and ident.carry == "backpack":
        bx = cx - f * (half_sh + 0.06 * u)
        draw.at(BACKGROUND).rounded_rectangle((min(bx, cx - f * half_sh * 0.6), y(0.2), max(bx, cx - f * half_sh * 0.6), y(0.44)),
                               radius=0.02 * u, fill=ident.carry_colour)
    if side and ident.carry in ("shoulder_bag", "handbag") and not carry_visible:
        bx = cx - f * 0.02 * u
        draw.at(BACKGROUND).rectangle((bx - 0.05 * u, y(0.46), bx + 0.05 * u, y(0.56)), fill=shade(ident.carry_colour, 0.8))
    if ident.hair_style == "long" and pose.view != "back":
        hx = cx - f * 0.03 * u if side else cx
        draw.at(HEAD).rectangle((hx - head_rx * 1.05, head_cy, hx + head_rx * 1.05, y(0.25)), fill=ident.hair)
    if side:  # far arm, darker, swinging opposite to the near arm
        sh_pt = (cx - f * 0.01 * u, shoulder_y + 0.012 * u)
        hand = (cx + f * 0.09 * u * s, y(0.52))
        elbow = ((sh_pt[0] + hand[0]) / 2 - f * 0.01 * u, y(0.36))
        colour = ident.upper.colour if ident.long_sleeves else ident.skin
        draw.at(UPPER).line([sh_pt, elbow, hand], fill=shade(colour, 0.75), width=max(1, int(arm_w)), joint="curve")

    # --- upper body ----------------------------------------------------------------------
    draw.at(HEAD).rectangle((cx - 0.024 * u, y(0.125), cx + 0.024 * u, shoulder_y + 0.01 * u), fill=ident.skin)
    lean = f * 0.012 * u if side else 0.0
    upper.polygon([
        (cx - half_sh * 0.75 + lean, shoulder_y - 0.012 * u), (cx + half_sh * 0.75 + lean, shoulder_y - 0.012 * u),
        (cx + half_sh + lean, shoulder_y + 0.02 * u), (cx + half_hip * (1.15 if ident.coat else 1.0), hem_y),
        (cx - half_hip * (1.15 if ident.coat else 1.0), hem_y), (cx - half_sh + lean, shoulder_y + 0.02 * u),
    ])
    arms: list[list[tuple[float, float]]] = []
    if side:
        sh_pt = (cx + f * 0.005 * u + lean, shoulder_y + 0.015 * u)
        hand = (cx - f * 0.09 * u * s, y(0.525))
        arms.append([sh_pt, ((sh_pt[0] + hand[0]) / 2 + f * 0.012 * u, y(0.36)), hand])
    else:
        swing = 0.012 * u * s
        for k in (-1, 1):
            sh_pt = (cx + k * (half_sh - arm_w * 0.35), shoulder_y + 0.02 * u)
            hand = (cx + k * (half_sh + 0.012 * u) + k * swing, y(0.53))
            arms.append([sh_pt, ((sh_pt[0] + hand[0]) / 2 + k * 0.008 * u, y(0.36)), hand])
    for arm in arms:
        if ident.long_sleeves:
            upper.line(arm, arm_w)
        else:
            upper.line([arm[0], ((arm[0][0] + arm[1][0]) / 2, (arm[0][1] + arm[1][1]) / 2 + 0.02 * u)], arm_w * 1.15)
    upper.flush((cx, top))
    for arm in arms:
        if not ident.long_sleeves:
            start = ((arm[0][0] + arm[1][0]) / 2, (arm[0][1] + arm[1][1]) / 2 + 0.02 * u)
            draw.at(UPPER).line([start, arm[1], arm[2]], fill=ident.skin, width=max(1, int(arm_w * 0.85)), joint="curve")
        hx, hy = arm[2]
        _ellipse(draw.at(UPPER), hx, hy + 0.01 * u, 0.022 * u, 0.026 * u, ident.skin)

    # --- details on the body -------------------------------------------------------------
    if ident.logo is not None and pose.view == "front":
        draw.at(UPPER)
        lx, ly, r = cx + 0.035 * u, y(0.27), 0.03 * u
        if ident.logo_shape == "circle":
            _ellipse(draw, lx, ly, r, r, ident.logo)
        elif ident.logo_shape == "square":
            draw.rectangle((lx - r, ly - r, lx + r, ly + r), fill=ident.logo)
        elif ident.logo_shape == "triangle":
            draw.polygon([(lx, ly - r), (lx + r * 1.1, ly + r), (lx - r * 1.1, ly + r)], fill=ident.logo)
        else:
            draw.rectangle((cx - half_sh * 0.7, ly - r * 0.5, cx + half_sh * 0.7, ly + r * 0.5), fill=ident.logo)
    strap_w = max(1, int(0.016 * u))
    draw.at(BACKGROUND)  # bags, backpacks and straps are background in LIP
    if ident.carry == "backpack" and not side:
        if pose.view == "back":
            draw.rounded_rectangle((cx - 0.085 * u * bw, y(0.2), cx + 0.085 * u * bw, y(0.45)),
                                   radius=0.02 * u, fill=ident.carry_colour)
            draw.rectangle((cx - 0.06 * u * bw, y(0.35), cx + 0.06 * u * bw, y(0.43)),
                           fill=shade(ident.carry_colour, 0.75))
        else:
            for k in (-1, 1):
                draw.line([(cx + k * 0.075 * u, shoulder_y), (cx + k * 0.07 * u, y(0.38))],
                          fill=ident.carry_colour, width=strap_w)
    if side and ident.carry == "backpack":
        draw.line([(cx - f * half_sh * 0.5, shoulder_y + 0.01 * u), (cx - f * half_sh * 0.3, y(0.38))],
                  fill=ident.carry_colour, width=strap_w)
    if ident.carry == "shoulder_bag" and carry_visible:
        if side:
            bx = cx + f * 0.01 * u
            draw.line([(cx, shoulder_y + 0.01 * u), (bx, y(0.47))], fill=ident.carry_colour, width=strap_w)
            draw.rectangle((bx - 0.055 * u, y(0.45), bx + 0.055 * u, y(0.555)), fill=ident.carry_colour)
        else:
            bx = cx + carry_x * (half_hip + 0.02 * u)
            draw.line([(cx - carry_x * half_sh * 0.7, shoulder_y + 0.01 * u), (bx, y(0.47))],
                      fill=ident.carry_colour, width=strap_w)
            draw.rectangle((bx - 0.045 * u, y(0.45), bx + 0.045 * u, y(0.55)), fill=ident.carry_colour)
    if ident.carry == "handbag" and carry_visible:
        hand = arms[0][2] if side else arms[0 if carry_x < 0 else 1][2]
        draw.rectangle((hand[0] - 0.04 * u, hand[1] + 0.02 * u, hand[0] + 0.04 * u, hand[1] + 0.1 * u),
                       fill=ident.carry_colour)

    # --- head ----------------------------------------------------------------------------
    hcx = cx + lean
    draw.at(HEAD)
    head_box = (hcx - head_rx, head_cy - head_ry, hcx + head_rx, head_cy + head_ry)
    hair_box = (hcx - head_rx * 1.08, head_cy - head_ry * 1.1, hcx + head_rx * 1.08, head_cy + head_ry * 1.02)
    if pose.view == "back":
        draw.ellipse(head_box, fill=ident.skin)
        if ident.hair_style != "bald":
            draw.ellipse(hair_box, fill=ident.hair)
        if ident.hair_style == "long":
            draw.rounded_rectangle((hcx - head_rx * 1.1, head_cy, hcx + head_rx * 1.1, y(0.29)),
                                   radius=0.02 * u, fill=ident.hair)
    else:
        draw.ellipse(head_box, fill=ident.skin)
        if ident.hair_style != "bald":
            if side:
                # hair covers the top and the back half of the head
                start, end = (110.0, 330.0) if f > 0 else (210.0, 430.0)
                draw.chord(hair_box, start=start, end=end, fill=ident.hair)
            else:
                draw.chord(hair_box, start=180, end=360, fill=ident.hair)
        if ident.glasses:
            gy = head_cy + 0.005 * u
            gw = max(1, int(0.018 * u))
            if side:
                draw.line([(hcx + f * 0.15 * head_rx, gy), (hcx + f * 1.0 * head_rx, gy)], fill=(20, 20, 20), width=gw)
            else:
                draw.line([(hcx - 0.75 * head_rx, gy), (hcx + 0.75 * head_rx, gy)], fill=(20, 20, 20), width=gw)
    if ident.hair_style == "bun":
        bx = hcx - f * head_rx * 0.8 if side else hcx
        by = head_cy - head_ry * (0.6 if side else 1.0)
        _ellipse(draw, bx, by, head_rx * 0.45, head_ry * 0.38, ident.hair)
    if ident.hat is not None:
        draw.chord((hcx - head_rx * 1.12, head_cy - head_ry * 1.22, hcx + head_rx * 1.12, head_cy + head_ry * 0.5),
                   start=180, end=360, fill=ident.hat)
        brim_y = head_cy - head_ry * 0.36
        if side:
            x0, x1 = sorted((hcx, hcx + f * head_rx * 1.7))
            draw.rectangle((x0, brim_y - 0.01 * u, x1, brim_y + 0.006 * u), fill=ident.hat)
        elif pose.view == "front":
            draw.rectangle((hcx - head_rx * 1.1, brim_y - 0.01 * u, hcx + head_rx * 1.1, brim_y + 0.008 * u),
                           fill=shade(ident.hat, 0.8))
