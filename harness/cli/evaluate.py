"""``reidbench evaluate``: score features or a stored run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from reidbench.harness.cli.common import user_errors

@click.command()
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


@user_errors
def _evaluate(features_file: Path, rerank: bool, metric: str, normalize: bool, as_json: bool) -> None:
    from reidbench.harness.evaluation.protocol import load_features_npz, score

    arrays = load_features_npz(features_file)
    result = score(**arrays, metric=metric, normalize=normalize, rerank=rerank)
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    if as_json:
        click.echo(json.dumps({k: float(result[k]) for k in keys} | {"num_valid_queries": int(result["num_valid_queries"])}))
    else:
        click.echo("  ".join(f"{k} {100 * float(result[k]):5.1f}" for k in keys)
                   + f"  ({int(result['num_valid_queries'])} valid queries)")
