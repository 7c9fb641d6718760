"""``reidbench data ...``: check real datasets, build and preview the synthetic benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from reidbench.harness.cli.common import EXIT_PROBLEMS, UserError, parse_data_options, parse_size, user_errors

@click.group()
def data() -> None:
    """Check real datasets, build and preview the synthetic benchmark."""


@data.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "market", "duke", "msmt17", "cuhk03np"]),
              default="auto", show_default=True, help="Dataset layout; auto guesses from the folder name.")
@click.option("--no-verify-images", is_flag=True, help="Skip decoding every image (faster).")
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also check SPReID part masks in this folder: one .npz (5 maps) or LIP-label .png per image, at "
                   "the image's relative path (a synthetic folder's own: PATH/masks).")
def data_check(path: Path, fmt: str, no_verify_images: bool, masks_dir: Path | None) -> None:
    """Print identities, images and cameras per split and every problem found in PATH.

    Exit code 1 when problems were found, 0 otherwise.
    """
    from reidbench.harness.data.check import check_dataset, format_report
    from reidbench.harness.data.formats import guess_format

    try:
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        use = guess_format(path.name) if fmt == "auto" else fmt
        report = check_dataset(path, use, verify_images=not no_verify_images, masks_dir=masks_dir)
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
@click.option("--masks", is_flag=True, help="Also write each image's ground-truth parsing (5 soft maps: foreground, "
                                            "head, upper, lower, shoes) to --out/masks, for SPReID (data.masks: "
                                            "oracle). The images are the same with or without.")
def data_synth(out_dir: Path, domain: str, num_ids: int | None, seed: int, size: str, masks: bool) -> None:
    """Write a synthetic dataset in exact Market-1501 layout to --out."""
    _data_synth(out_dir, domain, num_ids, seed, size, masks)



@user_errors
def _data_synth(out_dir: Path, domain: str, num_ids: int | None, seed: int, size: str, masks: bool = False) -> None:
    image_size = parse_size(size)
    from reidbench.harness.data.synth import generate_domain

    root = generate_domain(out_dir, domain=domain, num_ids=num_ids, seed=seed, image_size=image_size,
                           progress=sys.stderr.isatty(), masks=masks)
    click.echo(f"wrote {root}" + (f" (parsing masks in {root / 'masks'})" if masks else ""))


@data.command("list")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH", help="Also show these real datasets.")
def data_list(data_items: tuple[str, ...]) -> None:
    """Show the available datasets: the embedded synthetic ones and those given with --data."""
    _data_list(data_items)


@user_errors
def _data_list(data_items: tuple[str, ...]) -> None:
    from reidbench.harness.data.named import describe_datasets

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


@user_errors
def _data_preview(name: str, out_png: Path, num_ids: int, data_items: tuple[str, ...]) -> None:
    from reidbench.harness.data.synth import render_preview
    from reidbench.harness.data.named import dataset_root

    root = dataset_root(name, parse_data_options(data_items))
    render_preview(root, out_png, num_ids=num_ids)
    click.echo(f"wrote {out_png}")
