"""``reidbench data ...``: check real datasets, build and preview the synthetic benchmark."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from reidbench.harness.cli.common import EXIT_PROBLEMS, DataOptions, UserError, command_options, parse_size


@click.group()
def data() -> None:
    """Check real datasets, build and preview the synthetic benchmark."""


@dataclass(frozen=True)
class CheckOptions:
    path: Path
    fmt: str
    no_verify_images: bool
    masks_dir: Path | None


@data.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "market", "duke", "msmt17", "cuhk03np"]),
              default="auto", show_default=True, help="Dataset layout; auto guesses from the folder name.")
@click.option("--no-verify-images", is_flag=True, help="Skip decoding every image (faster).")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also check SPReID part masks in this folder: one .npz (5 maps) or LIP-label .png per image, at "
                   "the image's relative path (a synthetic folder's own: PATH/masks).")
@command_options(CheckOptions)
def data_check(opts: CheckOptions) -> None:
    """Print identities, images and cameras per split and every problem found in PATH.

    Exit code 1 when problems were found, 0 otherwise.
    """
    from reidbench.harness.data.check import check_dataset, format_report
    from reidbench.harness.data.formats import guess_format

    if not opts.path.exists():
        raise UserError(f"{opts.path}: no such folder")
    use = guess_format(opts.path.name) if opts.fmt == "auto" else opts.fmt
    report = check_dataset(opts.path, use, verify_images=not opts.no_verify_images, masks_dir=opts.masks_dir)
    click.echo(format_report(report))
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


@dataclass(frozen=True)
class SynthOptions:
    out_dir: Path
    domain: str
    num_ids: int | None
    seed: int
    size: str
    masks: bool


@data.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", default="A", show_default=True, help="Synthetic domain (A: 6 cameras, B: 8 cameras, ...).")
@click.option("--ids", "num_ids", type=int, default=None, help="Number of identities [default: the domain's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", "size", default="128x64", show_default=True, help="Image size HxW in pixels.")
@click.option("--masks", is_flag=True, help="Also write each image's ground-truth parsing (5 soft maps: foreground, "
                                            "head, upper, lower, shoes) to --out/masks, for SPReID (data.masks: "
                                            "oracle). The images are the same with or without.")
@command_options(SynthOptions)
def data_synth(opts: SynthOptions) -> None:
    """Write a synthetic dataset in exact Market-1501 layout to --out."""
    image_size = parse_size(opts.size)
    from reidbench.harness.data.synth import generate_domain

    root = generate_domain(opts.out_dir, domain=opts.domain, num_ids=opts.num_ids, seed=opts.seed,
                           image_size=image_size, progress=sys.stderr.isatty(), masks=opts.masks)
    click.echo(f"wrote {root}" + (f" (parsing masks in {root / 'masks'})" if opts.masks else ""))


@dataclass(frozen=True)
class ListOptions:
    data: DataOptions


@data.command("list")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH", help="Also show these real datasets.")
@command_options(ListOptions)
def data_list(opts: ListOptions) -> None:
    """Show the available datasets: the embedded synthetic ones and those given with --data."""
    from reidbench.harness.data.named import describe_datasets

    for line in describe_datasets(opts.data.paths):
        click.echo(line)


@dataclass(frozen=True)
class PreviewOptions:
    name: str
    out_png: Path
    num_ids: int
    data: DataOptions


@data.command("preview")
@click.argument("name")
@click.option("--out", "out_png", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ids", "num_ids", type=int, default=8, show_default=True, help="Identities (rows).")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH")
@command_options(PreviewOptions)
def data_preview(opts: PreviewOptions) -> None:
    """Draw identities x cameras of dataset NAME as one picture."""
    from reidbench.harness.data.named import dataset_root
    from reidbench.harness.data.synth import render_preview

    root = dataset_root(opts.name, opts.data.paths)
    render_preview(root, opts.out_png, num_ids=opts.num_ids)
    click.echo(f"wrote {opts.out_png}")
