"""What a run records about where it ran (recorded, never hashed)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("reidbench", "torch", "torchvision", "timm", "numpy", "pillow")


def git_commit() -> str | None:
    """Commit of the reidbench source tree, with ``+dirty`` when it has local changes; None outside git."""
    root = Path(__file__).resolve().parents[2]  # the repository root (harness/execution/ → .)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_description(device: Any) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def environment(device: Any) -> dict[str, Any]:
    return {"git_commit": git_commit(), "versions": library_versions(), "device": device_description(device),
            "host": platform.node()}
