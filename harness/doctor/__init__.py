"""``reidbench doctor``: is this machine ready? Each check is a small function returning a ``Check``.

Modules: ``record`` (the Check record, exit code), ``device`` (torch/CUDA/cuDNN, GPUs, AMP and
channels_last probes), ``loader`` (workers, decode and augment rates, synthetic cache), ``weights``
(where each shipped profile's backbone weights come from), ``database`` (the results database, read
only), ``services`` (Slurm, submitit, PostgreSQL driver, TensorBoard, MLflow). ``run_checks`` runs
them in screen order; nothing here writes anywhere.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from reidbench.harness.doctor.record import FAIL, OK, SYMBOLS, WARN, Check, exit_code

__all__ = ["Check", "FAIL", "OK", "SYMBOLS", "WARN", "environment", "exit_code", "run_checks"]

DEFAULT_BASE = "bot"  # what `reidbench ablate` runs without --base


def experiments_folder() -> Path:
    return Path(__file__).resolve().parents[2] / "experiments"


def environment() -> dict[str, Any]:
    try:
        from importlib.metadata import version

        reidbench_version = version("reidbench")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        reidbench_version = "unknown"
    return {"reidbench": reidbench_version, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "cpu_cores": os.cpu_count() or 1, "executable": sys.executable}


def _guarded(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    """A check that raises becomes its own failed line: one broken check never hides the others."""
    try:
        out = fn()
    except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return [Check(name, FAIL, f"could not be checked ({type(err).__name__}: {text[:200]})")]
    return out if isinstance(out, list) else [out]


def run_checks(db_url: str | None = None, data_paths: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order of the screen. ``db_url``: --db (None: $REIDBENCH_DB or results.db);
    ``data_paths``: --data NAME=PATH pairs (None or empty: the embedded synthetic benchmark)."""
    from reidbench.harness.doctor import device, loader, weights

    checks: list[Check] = []
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - nothing that trains can work: say so, check the rest
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        checks.append(Check("torch", FAIL, f"cannot be imported ({text[:200]}): reinstall torch "
                                           "(https://pytorch.org/get-started/locally/)"))
        return checks + _database_and_services(db_url)
    checks += _guarded("torch", device.torch_check)
    gpus = _guarded_value(device.list_gpus, [])
    checks += _guarded("GPU", lambda: device.gpu_check(gpus, torch.version.cuda))
    dev = "cuda:0" if gpus else "cpu"
    profile = "paper" if gpus else "cpu"  # as cli.common.default_profile
    checks += _guarded("AMP", lambda: device.amp_check(dev))
    checks += _guarded("channels_last", lambda: device.channels_last_check(dev))

    base = experiments_folder() / f"{DEFAULT_BASE}.yaml"

    def loader_lines() -> list[Check]:
        from reidbench.harness.spec.loading import load_base_file

        spec, _ = load_base_file(base, profile)
        return loader.loader_checks(data_paths or {}, torch.device(dev).type, spec.data.image_size, spec.data)

    checks += _guarded("loader", loader_lines)
    if not data_paths:
        checks += _guarded("synthetic", loader.synthetic_cache_check)
    checks += _guarded("weights", lambda: weights.weights_checks(weights.shipped_uses(experiments_folder()),
                                                                 blocking=[(DEFAULT_BASE, profile)]))
    return checks + _database_and_services(db_url)


def _database_and_services(db_url: str | None) -> list[Check]:
    from reidbench.harness.doctor import database, services
    from reidbench.harness.store import Store

    if db_url is not None:
        url, origin = db_url, ""
    else:
        url, origin = Store.default_url(), "$REIDBENCH_DB" if os.environ.get("REIDBENCH_DB") else "default"
    checks = _guarded("database", lambda: database.database_check(url, origin))
    return checks + _guarded("services", services.service_checks)


def _guarded_value(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - reported by the check that uses it
        return default
