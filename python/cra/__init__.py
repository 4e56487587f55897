"""CRA credit-risk scoring in Python: the server's model runtime, over Arrow.

>>> import cra
>>> model = cra.Model.load("models/default")
>>> scores = model.score(table)            # pyarrow Table / RecordBatch, or a pandas DataFrame

``score`` runs the code the server and ``cra score`` run (validation, preprocessing, the compiled
trees, the explanations) in Rust, without the GIL, so the probabilities are the server's to the
last bit. Data crosses through the Arrow C Data Interface: no copy per row in Python.

- :class:`Model`: one model bundle; :class:`Models`: a models file (champion, challengers,
  shadows), routed as the server routes (sticky by ``application_id``).
- :func:`export_sklearn`: a fitted scikit-learn pipeline (ColumnTransformer with StandardScaler
  and OrdinalEncoder, then XGBClassifier) written as a CRA bundle that ``cra serve`` serves.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import pyarrow as pa

from . import _native
from ._native import CATEGORICAL_INPUTS, FEATURES, NUMERIC_INPUTS, ModelError

__all__ = [
    "Model",
    "Models",
    "ModelError",
    "export_sklearn",
    "sklearn_spec",
    "ExportError",
    "FEATURES",
    "NUMERIC_INPUTS",
    "CATEGORICAL_INPUTS",
    "SCORE_COLUMNS",
]

#: The columns of :meth:`Model.score`'s answer after the id column (``application_id`` when
#: the data has it, else ``row``), in order.
SCORE_COLUMNS = [
    "probability_default",
    "risk_score",
    "risk_level",
    "prediction",
    "margin",
    "model_version",
    "error",
]


def _as_arrow(data: Any):
    """``data`` as an Arrow stream the native scorer reads without a copy per row."""
    if isinstance(data, (pa.Table, pa.RecordBatchReader)):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if hasattr(data, "__arrow_c_stream__"):
        return data
    raise TypeError(
        f"cannot score a {type(data).__name__}: pass a pyarrow Table, RecordBatch or "
        "RecordBatchReader, or a pandas DataFrame, with the contract's 17 columns"
    )


class Model:
    """A model bundle, loaded and verified as the server loads it (checksums, manifest,
    canaries). Thread-safe; load it once and score many times."""

    def __init__(self, handle: "_native.ModelSetHandle"):
        self._handle = handle

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "Model":
        """Loads the bundle directory ``path`` (``booster.json``, ``bundle.json``, ...)."""
        return cls(_native.ModelSetHandle.load_bundle(os.fspath(path)))

    @property
    def version(self) -> str:
        """The champion's model version (``cra-`` and a prefix of the booster's SHA-256)."""
        return self._handle.members()[0][0]

    @property
    def members(self) -> list:
        """``[(model_version, role, weight, dir)]``: live models first, then shadows."""
        return self._handle.members()

    @property
    def manifest(self) -> dict:
        """The champion's ``bundle.json``: thresholds, preprocessing, features, canaries."""
        return json.loads(self._handle.manifest_json())

    def score(
        self,
        data: Any,
        explain: bool = False,
        threads: Optional[int] = None,
        row_offset: int = 0,
    ) -> pa.Table:
        """Scores every row of ``data`` and returns a pyarrow Table, one row per input row,
        in order: the id (``application_id`` when ``data`` has it, else ``row``, counted from
        ``row_offset``), then ``probability_default``, ``risk_score``, ``risk_level``,
        ``prediction``, ``margin``, ``model_version`` and ``error``. An invalid row has null
        scores and an ``error`` naming every violation (``age: must be between 18 and 120;
        got 10; ...``). With ``explain=True``, also ``reason_codes``, ``reasons``,
        ``base_margin`` and ``contribution_<feature>`` for every model feature.

        ``data``: a pyarrow Table, RecordBatch or RecordBatchReader, or a pandas DataFrame,
        with the 14 numeric and 3 categorical input columns (``application_id`` optional,
        other columns ignored; in a DataFrame a NaN is a missing value, as pandas has it).
        ``threads``: scoring threads (default: the CPUs available).
        A missing or mistyped column raises ``ValueError`` naming every one.
        """
        return self._handle.score(_as_arrow(data), bool(explain), int(threads or 0), int(row_offset))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{v} ({r})' for v, r, _, _ in self.members)})"


class Models(Model):
    """A models file (TOML, as ``cra serve --models`` reads): a champion, challengers sharing
    live traffic by weight (sticky by ``application_id``; random without one) and shadows
    (loaded and verified, but not scored here)."""

    @classmethod
    def load(cls, models_toml: "str | os.PathLike[str]") -> "Models":
        """Loads the models file and every bundle it names (paths relative to the file)."""
        return cls(_native.ModelSetHandle.load_file(os.fspath(models_toml)))


from .sklearn import ExportError, export_sklearn, sklearn_spec  # noqa: E402
