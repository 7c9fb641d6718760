"""Synthetic benchmark: the identities x cameras preview picture."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reidbench.harness.data.synth import generate_domain, render_preview


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_domain(tmp_path_factory.mktemp("synth") / "A", "A", num_ids=6, image_size=(32, 16),
                           progress=False)


def test_grid_has_one_row_per_identity_and_one_column_per_camera(tiny: Path, tmp_path: Path):
    cams = {int(p.name.split("_c")[1][0]) for p in tiny.rglob("*.jpg")}
    out = render_preview(tiny, tmp_path / "p.png", num_ids=3, cell_height=64)
    with Image.open(out) as img:
        # label column 92 px + cells of 32 x 64 with 4 px gaps; header row 26 px
        assert img.size == (92 + len(cams) * (32 + 4), 26 + 3 * (64 + 4))
    out2 = render_preview(tiny, tmp_path / "sub" / "q.png", num_ids=2, num_cams=2, cell_height=64)
    with Image.open(out2) as img:
        assert img.size == (92 + 2 * 36, 26 + 2 * 68)


def test_missing_or_empty_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        render_preview(tmp_path / "nope", tmp_path / "p.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images named like Market-1501"):
        render_preview(tmp_path / "empty", tmp_path / "p.png")
