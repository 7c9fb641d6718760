"""The CLI answers --help for every command without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = r"""
import sys
from click.testing import CliRunner
from reidbench.harness.cli import main

def walk(cmd, path):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from walk(sub, path + [name])

runner = CliRunner()
for path in walk(main, []):
    result = runner.invoke(main, path + ["--help"])
    assert result.exit_code == 0, (path, result.output)
    assert "Usage:" in result.output, path
heavy = sorted(m for m in ("torch", "timm", "torchvision", "pandas", "matplotlib", "optuna") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
print("COMMANDS:" + str(sum(1 for _ in walk(main, []))))
"""


def test_every_help_works_without_heavy_imports():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY:\n" in out.stdout, out.stdout
    assert int(out.stdout.split("COMMANDS:")[1]) >= 6


def test_console_script_is_installed():
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).with_name("reidbench")
    assert exe.exists() or shutil.which("reidbench"), "console script 'reidbench' missing: pip install -e ."
    out = subprocess.run([str(exe) if exe.exists() else "reidbench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["train", "nope.yaml"], "nope.yaml: spec file not found"),
    (["data", "synth", "--out", "x", "--size", "12by3"], "--size '12by3' is not valid"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, fragment, tmp_path):
    from click.testing import CliRunner

    from reidbench.harness.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0


def test_every_package_is_listed_for_installation():
    # setup.cfg lists packages explicitly (package_dir maps the folders): a subpackage missing there
    # works in an editable install and is absent from a real one.
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = {"reidbench"} | {"reidbench." + str(p.parent.relative_to(root)).replace("/", ".")
                             for top in ("harness", "models", "tricks") for p in (root / top).rglob("__init__.py")}
    assert found == listed
