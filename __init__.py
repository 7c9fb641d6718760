"""reidbench: Bag-of-Tricks person re-identification ablations with a results database.

The repository root is the ``reidbench`` package (see ``package_dir`` in setup.cfg); its
sub-packages live in harness/, models/ and tricks/. Nothing here imports torch, so the CLI's
``--help`` stays fast.
"""

from typing import Any

__version__ = "0.1.0"


def load_spec(*args: Any, **kwargs: Any) -> Any:
    """``reidbench.api.load_spec``: a base file's validated spec with profile, preset, epochs and tricks."""
    from reidbench.api import load_spec as load

    return load(*args, **kwargs)


def build(*args: Any, **kwargs: Any) -> Any:
    """``reidbench.api.build``: model, objective, optimiser and LR schedule of a spec, no dataset needed."""
    from reidbench.api import build as build_spec

    return build_spec(*args, **kwargs)


__all__ = ["__version__", "build", "load_spec"]
