"""The results database: runs, their evaluations and final metrics, training curves and ablations
(SQLAlchemy 2.0).

``Store(url)`` opens (and creates) the database; any SQLAlchemy URL works, SQLite by default.
"""

from reidbench.harness.store.errors import StoreError
from reidbench.harness.store.records import (
    AblationRecord,
    EpochRecord,
    EvaluationRecord,
    MetricRecord,
    RunRecord,
)
from reidbench.harness.store.store import Store

__all__ = ["Store", "StoreError", "RunRecord", "EvaluationRecord", "MetricRecord", "EpochRecord", "AblationRecord"]
