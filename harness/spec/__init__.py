"""The run spec: sections (``sections``), files and profiles (``loading``), identities (``hashing``).

Pure data: importing this package does not import torch; component registries are consulted
lazily when a spec is loaded from plain data.
"""

from reidbench.harness.spec.loading import (
    FILE_ONLY_KEYS,
    legacy_loss_terms,
    load_base_file,
    load_spec_file,
    load_yaml,
    merge_dicts,
    spec_from_dict,
    spec_from_json,
    spec_from_stored,
    with_epochs,
)
from reidbench.harness.spec.sections import (
    AMP_MODES,
    GRANULARITIES,
    METRICS,
    NECKS,
    PROFILES,
    DataSpec,
    EvalSpec,
    GroupSpec,
    LossSpec,
    LossTermSpec,
    ModelSpec,
    OptimSpec,
    RunSpec,
    ScheduleSpec,
    SpecError,
    StageSpec,
    TrainSpec,
    canonical_json,
    replace_section,
    to_jsonable,
    with_options,
)

__all__ = [
    "AMP_MODES", "FILE_ONLY_KEYS", "GRANULARITIES", "METRICS", "NECKS", "PROFILES", "DataSpec", "EvalSpec", "GroupSpec", "LossSpec",
    "LossTermSpec", "ModelSpec", "OptimSpec", "RunSpec", "ScheduleSpec", "SpecError", "StageSpec", "TrainSpec",
    "canonical_json", "legacy_loss_terms", "load_base_file", "load_spec_file", "load_yaml", "merge_dicts",
    "replace_section", "spec_from_dict", "spec_from_json", "spec_from_stored", "to_jsonable", "with_epochs",
    "with_options",
]
