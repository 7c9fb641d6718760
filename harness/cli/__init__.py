"""The ``reidbench`` command line: one module per command group, sharing only ``cli.common``.

Only click is imported at module level: every heavy import (torch, timm, pandas, ...) happens
inside the command that needs it, so ``reidbench --help`` and every ``--help`` stay instant.
User errors become one line on stderr and exit code 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import click

from reidbench.harness.cli import ablate, bases, components, data, design, evaluate, report, runs, study, train


def _offline(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:  # an environment variable, so that executor processes started by the command inherit it
        import os

        os.environ["REIDBENCH_OFFLINE"] = "1"
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="reidbench")
@click.option("--offline", is_flag=True, expose_value=False, callback=_offline, is_eager=True,
              help="Never download pretrained weights (same as REIDBENCH_OFFLINE=1): use a file, an installed "
                   "package or the torch hub / Hugging Face caches.")
def main() -> None:
    """reidbench: which person re-identification training tricks matter, on your data.

    Train Bag-of-Tricks runs, evaluate them same- and cross-domain, and keep every result.
    With no --data, everything runs on the embedded synthetic benchmark (domains synth-a, synth-b).
    """


for command in (train.train, evaluate.evaluate, data.data, ablate.tricks_cmd, components.components, components.models,
                bases.bases, ablate.ablate,
                runs.runs,
                report.report, report.plot, study.study):
    main.add_command(command)
for command in (design.plot_effects_cmd, design.plot_interactions_cmd):  # factorial designs (cli/design.py)
    report.plot.add_command(command)
from reidbench.harness.cli.doctor import doctor as _doctor  # noqa: E402 - registered alone: `reidbench doctor`
main.add_command(_doctor)

if __name__ == "__main__":  # pragma: no cover
    main()
