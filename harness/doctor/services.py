"""Optional services and packages: Slurm, submitit, the PostgreSQL driver, TensorBoard, MLflow.

None of them is needed by the default workflow (local runs, SQLite), so a missing one is advice
(``!``), never a failure; the database check fails instead when ``--db`` names PostgreSQL and no
driver is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
from typing import Sequence

from reidbench.harness.doctor.record import OK, WARN, Check

SLURM_TOOLS = ("sbatch", "squeue", "srun", "sinfo")  # the slurm executor submits, watches and runs with these
SINFO_TIMEOUT_S = 5


def _version(distributions: Sequence[str]) -> str:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "version unknown"


def _importable(module: str) -> str | None:
    """None when ``module`` imports; else why not (one line)."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else module}"
    except Exception as err:  # noqa: BLE001 - a broken install is reported, not raised
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def slurm_check() -> Check:
    found = {tool: shutil.which(tool) for tool in SLURM_TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    data = {"tools": found, "answers": None}
    if missing:
        return Check("Slurm", WARN, f"{', '.join(missing)} not on PATH: only --executor slurm needs Slurm "
                                    "(load its module or install its client tools)", data)
    try:
        done = subprocess.run([found["sinfo"], "-h", "-o", "%P"], capture_output=True, text=True,
                              timeout=SINFO_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        reason = f"no answer within {SINFO_TIMEOUT_S} s"
    except OSError as err:
        reason = str(err)
    else:
        if done.returncode == 0:
            partitions = done.stdout.split()
            data["answers"] = True
            data["partitions"] = partitions
            listed = ", ".join(partitions) if partitions else "no partitions"
            return Check("Slurm", OK, f"sinfo answers: {listed} (* = default)", data)
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit code {done.returncode}"
    data["answers"] = False
    return Check("Slurm", WARN, f"tools found but sinfo does not answer ({reason[:160]}): is slurmctld reachable "
                                "(SLURM_CONF)? Only --executor slurm needs it", data)


def submitit_check() -> Check:
    why = _importable("submitit")
    if why is None:
        return Check("submitit", OK, f"{_version(['submitit'])} (--executor submitit|slurm)", {"installed": True})
    return Check("submitit", WARN, f"not importable ({why}): pip install 'reidbench[slurm]' for "
                                   "--executor submitit|slurm", {"installed": False})


def postgres_driver_check() -> Check:
    """psycopg 3 (the ``postgres`` extra) or psycopg2: what a plain postgresql:// URL uses (store/engine.py)."""
    for module, dists in (("psycopg2", ("psycopg2", "psycopg2-binary")), ("psycopg", ("psycopg",))):
        if importlib.util.find_spec(module) is not None and _importable(module) is None:
            return Check("PostgreSQL", OK, f"driver {module} {_version(dists)} (for --db postgresql://...)",
                         {"driver": module})
    return Check("PostgreSQL", WARN, "no driver: pip install 'reidbench[postgres]' to use --db postgresql://... "
                                     "(a database shared between machines)", {"driver": None})


def optional_package_check(name: str, module: str, distributions: Sequence[str], extra: str, purpose: str) -> Check:
    """Installed or not, found without importing it (TensorBoard and MLflow take seconds to import)."""
    if importlib.util.find_spec(module) is not None:
        return Check(name, OK, f"{_version(distributions)} ({purpose})", {"installed": True})
    return Check(name, WARN, f"not installed: pip install 'reidbench[{extra}]' for {purpose}", {"installed": False})


def service_checks() -> list[Check]:
    return [
        slurm_check(),
        submitit_check(),
        postgres_driver_check(),
        optional_package_check("TensorBoard", "tensorboard", ["tensorboard"], "tensorboard",
                               "event files in every run folder"),
        optional_package_check("MLflow", "mlflow", ["mlflow-skinny", "mlflow"], "mlflow", "runs export --to mlflow"),
    ]
