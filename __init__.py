"""reidbench: Bag-of-Tricks person re-identification ablations with a results database.

The repository root is the ``reidbench`` package (see ``package_dir`` in setup.cfg); its
sub-packages live in harness/, models/ and tricks/. Nothing here imports torch, so the CLI's
``--help`` stays fast.
"""

__version__ = "0.1.0"
