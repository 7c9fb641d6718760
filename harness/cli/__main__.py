"""``python -m reidbench.harness.cli`` = the ``reidbench`` command."""

from reidbench.harness.cli import main

main()
