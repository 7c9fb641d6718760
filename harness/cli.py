"""The ``reidbench`` command line.

Only click is imported at module level: every heavy import (torch, timm, pandas, ...) happens
inside the command that needs it, so ``reidbench --help`` and every ``--help`` stay instant.
User errors become one line on stderr and exit code 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

EXIT_USAGE = 2
EXIT_PROBLEMS = 1


class UserError(click.ClickException):
    """A one-line error for the user (exit code 2)."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"reidbench: error: {self.format_message()}", err=True, file=file)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing exceptions into one-line CLI errors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError, PermissionError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise UserError(str(msg).splitlines()[0] if str(msg) else type(exc).__name__) from None

    return wrapper


def parse_data_options(items: Sequence[str]) -> dict[str, str]:
    """``--data NAME=PATH`` pairs → {name: path}; a bad item fails naming it."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data {item!r} is not valid: use NAME=PATH, e.g. --data market=/data/Market-1501")
        out[name.strip()] = path.strip()
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="reidbench")
def main() -> None:
    """reidbench: which person re-identification training tricks matter, on your data.

    Train Bag-of-Tricks runs, evaluate them same- and cross-domain, and keep every result.
    With no --data, everything runs on the embedded synthetic benchmark (domains synth-a, synth-b).
    """


# --------------------------------------------------------------------------- train


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH",
              help="Dataset folder for a name used in the spec (repeatable). Format from the name: "
                   "market*, duke*, msmt17*, cuhk03*; anything else is read as Market layout.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for checkpoints and logs [default: runs/<hash>].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--profile", type=click.Choice(["paper", "cpu"]), default=None,
              help="Profile overlay from the spec file [default: the file's own profile].")
@click.option("--epochs", type=int, default=None, help="Shorten the schedule to N epochs (milestones scale).")
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("--workers", type=int, default=None, help="Data loader worker processes [default: auto].")
def train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
          profile: str | None, epochs: int | None, seed: int | None, workers: int | None) -> None:
    """Train and evaluate one run described by SPEC_FILE (YAML).

    Resumable: re-running the same command continues from the run folder's last checkpoint.
    """
    _train(spec_file, data_items, out_dir, device, profile, epochs, seed, workers)


@_user_errors
def _train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
           profile: str | None, epochs: int | None, seed: int | None, workers: int | None) -> None:
    from reidbench.harness.hashing import run_hash
    from reidbench.harness.spec import load_spec_file, replace_section, with_epochs

    spec = load_spec_file(spec_file, profile)
    if epochs is not None:
        spec = with_epochs(spec, epochs)
    if seed is not None:
        spec = replace_section(spec, "train", seed=seed)
    data_paths = parse_data_options(data_items)
    from reidbench.harness.runner import RuntimeOptions, execute

    rhash = run_hash(spec)
    runtime = RuntimeOptions(
        out_dir=out_dir or Path("runs") / rhash[:12],
        device=device,
        num_workers=workers,
        data_paths=data_paths,
    )
    result = execute(spec, runtime)
    click.echo(result.summary_table())


# --------------------------------------------------------------------------- evaluate


@main.command()
@click.option("--features", "features_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="npz with q_feats, g_feats, q_pids, g_pids, q_camids, g_camids.")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--metric", type=click.Choice(["cosine", "euclidean", "sqeuclidean"]), default="euclidean",
              show_default=True)
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="L2-normalise features before computing distances.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def evaluate(features_file: Path, rerank: bool, metric: str, normalize: bool, as_json: bool) -> None:
    """Score externally computed features with the Market protocol (R1/R5/R10/mAP/mINP)."""
    _evaluate(features_file, rerank, metric, normalize, as_json)


@_user_errors
def _evaluate(features_file: Path, rerank: bool, metric: str, normalize: bool, as_json: bool) -> None:
    from reidbench.harness.evaluation import load_features_npz, score

    arrays = load_features_npz(features_file)
    result = score(**arrays, metric=metric, normalize=normalize, rerank=rerank)
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    if as_json:
        click.echo(json.dumps({k: float(result[k]) for k in keys} | {"num_valid_queries": int(result["num_valid_queries"])}))
    else:
        click.echo("  ".join(f"{k} {100 * float(result[k]):5.1f}" for k in keys)
                   + f"  ({int(result['num_valid_queries'])} valid queries)")


# --------------------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Check real datasets, build and preview the synthetic benchmark."""


@data.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "market", "duke", "msmt17", "cuhk03np"]),
              default="auto", show_default=True, help="Dataset layout; auto guesses from the folder name.")
@click.option("--no-verify-images", is_flag=True, help="Skip decoding every image (faster).")
def data_check(path: Path, fmt: str, no_verify_images: bool) -> None:
    """Print identities, images and cameras per split and every problem found in PATH.

    Exit code 1 when problems were found, 0 otherwise.
    """
    from reidbench.harness.data.check import check_dataset, format_report
    from reidbench.harness.data.datasets import guess_format

    try:
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        use = guess_format(path.name) if fmt == "auto" else fmt
        report = check_dataset(path, use, verify_images=not no_verify_images)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    click.echo(format_report(report))
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


@data.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", default="A", show_default=True, help="Synthetic domain (A: 6 cameras, B: 8 cameras, ...).")
@click.option("--ids", "num_ids", type=int, default=None, help="Number of identities [default: the domain's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", "size", default="128x64", show_default=True, help="Image size HxW in pixels.")
def data_synth(out_dir: Path, domain: str, num_ids: int | None, seed: int, size: str) -> None:
    """Write a synthetic dataset in exact Market-1501 layout to --out."""
    _data_synth(out_dir, domain, num_ids, seed, size)


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 1 or int(w) < 1:
        raise UserError(f"{option} {text!r} is not valid: use HxW in pixels, e.g. 128x64")
    return int(h), int(w)


@_user_errors
def _data_synth(out_dir: Path, domain: str, num_ids: int | None, seed: int, size: str) -> None:
    image_size = parse_size(size)
    from reidbench.harness.data.synth import generate_domain

    root = generate_domain(out_dir, domain=domain, num_ids=num_ids, seed=seed, image_size=image_size,
                           progress=sys.stderr.isatty())
    click.echo(f"wrote {root}")


@data.command("list")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH", help="Also show these real datasets.")
def data_list(data_items: tuple[str, ...]) -> None:
    """Show the available datasets: the embedded synthetic ones and those given with --data."""
    _data_list(data_items)


@_user_errors
def _data_list(data_items: tuple[str, ...]) -> None:
    from reidbench.harness.datasets import describe_datasets

    for line in describe_datasets(parse_data_options(data_items)):
        click.echo(line)


@data.command("preview")
@click.argument("name")
@click.option("--out", "out_png", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ids", "num_ids", type=int, default=8, show_default=True, help="Identities (rows).")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH")
def data_preview(name: str, out_png: Path, num_ids: int, data_items: tuple[str, ...]) -> None:
    """Draw identities x cameras of dataset NAME as one picture."""
    _data_preview(name, out_png, num_ids, data_items)


@_user_errors
def _data_preview(name: str, out_png: Path, num_ids: int, data_items: tuple[str, ...]) -> None:
    from reidbench.harness.data.synth import render_preview
    from reidbench.harness.datasets import dataset_root

    root = dataset_root(name, parse_data_options(data_items))
    render_preview(root, out_png, num_ids=num_ids)
    click.echo(f"wrote {out_png}")


if __name__ == "__main__":  # pragma: no cover
    main()
