"""A labelled identities x cameras picture of a dataset folder in Market-1501 naming."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .layout import SPLIT_DIRS

# Lenient on purpose: also reads DukeMTMC-reID names (0005_c2_f0046985.jpg).
_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _index(root: Path) -> dict[int, dict[int, list[Path]]]:
    """pid -> camera -> image paths (true identities only), gallery/query before train."""
    folders = [root / d for d in (SPLIT_DIRS["gallery"], SPLIT_DIRS["query"], SPLIT_DIRS["train"])]
    folders = [f for f in folders if f.is_dir()] or [root]
    found: dict[int, dict[int, list[Path]]] = {}
    for folder in folders:
        paths = folder.iterdir() if folder != root else root.rglob("*")
        for path in sorted(paths):
            m = _NAME.match(path.name)
            if not m or path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid > 0:
                found.setdefault(pid, {}).setdefault(cam, []).append(path)
    return found


def render_preview(root: str | Path, out_png: str | Path, num_ids: int = 8, num_cams: int | None = None,
                   cell_height: int = 192, colours: int | None = 256) -> Path:
    """Draw ``num_ids`` identities (rows) x cameras (columns) of dataset ``root`` into ``out_png``.

    Identities seen by the most cameras come first; an empty cell means the identity never
    passed that camera. ``num_cams`` keeps the first cameras only. ``colours`` quantises the
    picture to a palette (a noisy RGB grid is ~4x larger as PNG); None keeps full RGB.
    """
    root, out_png = Path(root), Path(out_png)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    if num_ids < 1:
        raise ValueError(f"num_ids={num_ids} is not valid: use 1 or more rows")
    index = _index(root)
    if not index:
        raise ValueError(f"{root}: no images named like Market-1501 (PPPP_cX...jpg) found")
    cams = sorted({c for per_cam in index.values() for c in per_cam})
    if num_cams is not None:
        if num_cams < 1:
            raise ValueError(f"num_cams={num_cams} is not valid: use 1 or more columns, or None for all")
        cams = cams[:num_cams]
    pids = sorted(index, key=lambda p: (-sum(c in index[p] for c in cams), p))[:num_ids]

    cell_w, cell_h, gap = cell_height // 2, cell_height, 4
    label_w, header_h = 92, 26
    font = _font(max(10, cell_height // 12))
    sheet = Image.new("RGB", (label_w + len(cams) * (cell_w + gap), header_h + len(pids) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, cam in enumerate(cams):
        draw.text((label_w + j * (cell_w + gap) + cell_w // 2 - 8, 5), f"c{cam}", fill="black", font=font)
    for i, pid in enumerate(pids):
        y = header_h + i * (cell_h + gap)
        draw.text((6, y + cell_h // 2 - 8), f"id {pid:04d}", fill="black", font=font)
        for j, cam in enumerate(cams):
            x = label_w + j * (cell_w + gap)
            paths = index[pid].get(cam)
            if not paths:
                draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=(225, 225, 225))
                continue
            with Image.open(paths[0]) as img:
                sheet.paste(img.convert("RGB").resize((cell_w, cell_h), Image.Resampling.BICUBIC), (x, y))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if colours is not None:
        sheet = sheet.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    sheet.save(out_png, optimize=True)
    return out_png
