"""A fitted scikit-learn pipeline of the original service's shape, written as a CRA bundle.

The pipeline CRA reproduces exactly::

    Pipeline([
        ("preprocessor", ColumnTransformer([
            ("num", StandardScaler(), NUMERIC_FEATURES),      # the 14 inputs + 2 derived
            ("cat", OrdinalEncoder(...), CATEGORICAL_FEATURES),
        ])),
        ("classifier", XGBClassifier(objective="binary:logistic", ...)),
    ])

with the columns in CRA's feature order (``cra.FEATURES``). ``monthly_payment`` and
``payment_to_income`` are inputs of the pipeline but derived by CRA (the loan amortised at
``annual_rate``, 10% a year as the original computed them), so the pipeline must have been
trained on them computed that way. Anything else, whose numbers CRA could not reproduce
exactly, is refused with :class:`ExportError` naming the step: another transformer or step, an
encoder policy for unknown or infrequent categories other than ``error`` or
``use_encoded_value``, an objective other than ``binary:logistic``, a booster other than
``gbtree``, another missing-value marker, categorical splits.

The bundle holds the booster in XGBoost's JSON, the fitted scaler and encoder, the feature
schema, and canary rows with the probabilities ``pipeline.predict_proba`` gave them; CRA checks
them when it writes the bundle and whenever it loads it, to 1e-6.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from . import _native

__all__ = ["ExportError", "export_sklearn", "sklearn_spec"]

#: Canary rows drawn from CRA's generator; more are added so that every category and the
#: missing bureau fields are covered.
CANARY_GENERATED = 48
CANARY_SEED = 20261201
#: The credit-bureau fields an applicant without a bureau file lacks.
BUREAU_FIELDS = [
    "credit_score",
    "num_credit_lines",
    "credit_utilization",
    "num_late_payments",
    "num_bankruptcies",
    "inquiries_last_6m",
]
NUMERIC_FEATURES = list(_native.FEATURES[:16])
CATEGORICAL_FEATURES = list(_native.FEATURES[16:])


class ExportError(ValueError):
    """The pipeline has a step or a setting whose numbers CRA cannot reproduce exactly."""


def _name(obj: Any) -> str:
    return type(obj).__name__


def _columns(step: str, columns: Any) -> list:
    if isinstance(columns, str):
        columns = [columns]
    try:
        columns = list(columns)
    except TypeError:
        raise ExportError(
            f"ColumnTransformer step {step!r} selects its columns with {columns!r}; "
            "select them by name (a list of column names)"
        ) from None
    if not all(isinstance(c, str) for c in columns):
        raise ExportError(
            f"ColumnTransformer step {step!r} selects its columns by position ({columns!r}); "
            "select them by name, so that CRA knows which input each one is"
        )
    return columns


def _scaler(step: str, scaler: Any, columns: list) -> list:
    mean = getattr(scaler, "mean_", None) if scaler.with_mean else None
    scale = getattr(scaler, "scale_", None) if scaler.with_std else None
    if (scaler.with_mean and mean is None) or (scaler.with_std and scale is None):
        raise ExportError(f"ColumnTransformer step {step!r} (StandardScaler) is not fitted")
    out = []
    for i, c in enumerate(columns):
        m = float(mean[i]) if mean is not None else 0.0
        s = float(scale[i]) if scale is not None else 1.0
        if not (math.isfinite(m) and math.isfinite(s) and s > 0):
            raise ExportError(
                f"ColumnTransformer step {step!r} (StandardScaler) has mean {m} and scale {s} "
                f"for {c}; refit it on data where {c} has finite values"
            )
        out.append({"name": c, "mean": m, "std": s})
    return out


def _encoder(step: str, encoder: Any, columns: list) -> list:
    policy = encoder.handle_unknown
    if policy not in ("error", "use_encoded_value"):
        raise ExportError(
            f"ColumnTransformer step {step!r} (OrdinalEncoder) has handle_unknown={policy!r}; "
            "CRA reproduces 'error' and 'use_encoded_value' only"
        )
    if getattr(encoder, "min_frequency", None) is not None or getattr(encoder, "max_categories", None) is not None:
        raise ExportError(
            f"ColumnTransformer step {step!r} (OrdinalEncoder) groups infrequent categories "
            "(min_frequency or max_categories); CRA encodes every category on its own: "
            "refit it without them"
        )
    unknown = None
    if policy == "use_encoded_value":
        unknown = encoder.unknown_value
        if unknown is None or not math.isfinite(float(unknown)):
            raise ExportError(
                f"ColumnTransformer step {step!r} (OrdinalEncoder) has unknown_value={unknown!r}; "
                "CRA reproduces a finite unknown_value (such as -1) only"
            )
        unknown = float(unknown)
    out = []
    for c, cats in zip(columns, encoder.categories_):
        values = list(cats)
        # A missing category seen in training is encoded last; CRA never sends one (the
        # categoricals are required), so it is left out.
        if values and not isinstance(values[-1], str) and values[-1] != values[-1]:
            values = values[:-1]
        if not all(isinstance(v, str) for v in values):
            raise ExportError(
                f"ColumnTransformer step {step!r} (OrdinalEncoder) has non-text categories "
                f"{values!r} for {c}; CRA's categories are text"
            )
        out.append({"name": c, "categories": values, **({"unknown_value": unknown} if unknown is not None else {})})
    return out


def _preprocessor(ct: Any, annual_rate: float) -> dict:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler

    if not isinstance(ct, ColumnTransformer):
        raise ExportError(f"the first step is {_name(ct)}; CRA reproduces a ColumnTransformer there")
    if not hasattr(ct, "transformers_"):
        raise ExportError("the ColumnTransformer is not fitted; fit the pipeline first")
    numeric: list = []
    categorical: list = []
    order: list = []
    for step, transformer, columns in ct.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        columns = _columns(step, columns)
        if not columns:
            continue
        if isinstance(transformer, str) and transformer == "passthrough":
            raise ExportError(
                f"ColumnTransformer step {step!r} passes {columns} through unscaled; "
                "CRA scales every numeric input (StandardScaler) and encodes every categorical "
                "one (OrdinalEncoder): drop them, or scale or encode them"
            )
        if type(transformer) is StandardScaler:
            numeric += _scaler(step, transformer, columns)
        elif type(transformer) is OrdinalEncoder:
            categorical += _encoder(step, transformer, columns)
        else:
            raise ExportError(
                f"ColumnTransformer step {step!r} is {_name(transformer)}; CRA reproduces "
                "StandardScaler on the numeric features and OrdinalEncoder on the categorical "
                "ones, nothing else"
            )
        order += columns
    if order != list(_native.FEATURES):
        raise ExportError(
            f"the ColumnTransformer's output columns are {order}; CRA's model features are "
            f"{list(_native.FEATURES)} in this order (StandardScaler on the first 16, "
            "OrdinalEncoder on the last 3)"
        )
    wrong = [c["name"] for c in numeric if c["name"] not in NUMERIC_FEATURES]
    wrong += [c["name"] for c in categorical if c["name"] not in CATEGORICAL_FEATURES]
    if wrong:
        raise ExportError(
            f"the ColumnTransformer scales or encodes {wrong} the other way round; CRA scales "
            f"{NUMERIC_FEATURES} and encodes {CATEGORICAL_FEATURES}"
        )
    return {"params": {"annual_rate": annual_rate}, "numeric": numeric, "categorical": categorical}


def _classifier(step: str, clf: Any):
    """The booster the classifier predicts with, checked, and its description."""
    try:
        from xgboost import XGBClassifier
    except ImportError:  # pragma: no cover
        raise ExportError("xgboost is not installed, so the classifier cannot be read") from None
    if not isinstance(clf, XGBClassifier):
        raise ExportError(f"step {step!r} is {_name(clf)}; CRA reproduces an XGBClassifier there")
    if not hasattr(clf, "classes_"):
        raise ExportError(f"step {step!r} (XGBClassifier) is not fitted; fit the pipeline first")
    classes = [int(c) if not isinstance(c, str) else c for c in list(clf.classes_)]
    if classes != [0, 1]:
        raise ExportError(
            f"step {step!r} (XGBClassifier) has classes {classes}; CRA serves a binary model "
            "whose class 1 is default"
        )
    objective = clf.objective if isinstance(clf.objective, str) else None
    if objective != "binary:logistic":
        raise ExportError(
            f"step {step!r} (XGBClassifier) has objective {clf.objective!r}; CRA reproduces "
            "'binary:logistic' only"
        )
    if clf.booster not in (None, "gbtree"):
        raise ExportError(
            f"step {step!r} (XGBClassifier) has booster={clf.booster!r}; CRA reproduces 'gbtree' only"
        )
    missing = clf.missing
    if missing is not None and not (isinstance(missing, float) and math.isnan(missing)):
        raise ExportError(
            f"step {step!r} (XGBClassifier) has missing={missing!r}; CRA treats NaN (an absent "
            "value) as missing, so the classifier must have missing=nan"
        )
    if clf.enable_categorical:
        raise ExportError(
            f"step {step!r} (XGBClassifier) has enable_categorical=True; CRA reproduces "
            "numeric splits on the encoded categories only"
        )
    booster = clf.get_booster()
    best = getattr(clf, "best_iteration", None) if clf.early_stopping_rounds is not None else None
    if best is not None:
        # predict_proba uses the trees up to the best iteration after early stopping.
        booster = booster[: best + 1]
    params = {k: v for k, v in clf.get_xgb_params().items() if v is not None}
    return booster, params


def _canary_frame(annual_rate: float, pipeline: Any):
    """Canary rows: CRA's generator, every category once, and applicants without a bureau
    file; with the derived columns as CRA computes them."""
    import numpy as np

    df = _native.synthetic_applications(CANARY_GENERATED, CANARY_SEED, annual_rate).to_pandas()
    extra = []
    for column, values in _native.CATEGORIES.items():
        for i, v in enumerate(values):
            row = df.iloc[i % len(df)].copy()
            row[column] = v
            extra.append(row)
    for i in range(4):
        row = df.iloc[-1 - i].copy()
        for f in BUREAU_FIELDS:
            row[f] = np.nan
        extra.append(row)
    import pandas as pd

    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    wanted = getattr(pipeline, "feature_names_in_", None)
    return df, (df[list(wanted)] if wanted is not None else df)


def sklearn_spec(pipeline: Any, annual_rate: float = 0.10) -> tuple:
    """The preprocessing spec of a fitted pipeline (``cra import --preprocessing``'s JSON, as
    a dict) and its booster (an ``xgboost.Booster`` to save with ``save_model``), checked.
    Raises :class:`ExportError` naming the step CRA cannot reproduce exactly."""
    try:
        from sklearn.pipeline import Pipeline
    except ImportError:  # pragma: no cover
        raise ExportError("scikit-learn is not installed, so the pipeline cannot be read") from None
    import sklearn

    if not isinstance(pipeline, Pipeline):
        raise ExportError(f"expected a fitted sklearn.pipeline.Pipeline, got {_name(pipeline)}")
    steps = [(n, s) for n, s in pipeline.steps if s is not None and s != "passthrough"]
    if len(steps) != 2:
        raise ExportError(
            f"the pipeline has the steps {[f'{n} ({_name(s)})' for n, s in steps]}; CRA reproduces "
            "exactly two: a ColumnTransformer, then an XGBClassifier"
        )
    (ct_name, ct), (clf_name, clf) = steps
    try:
        preprocessor = _preprocessor(ct, annual_rate)
    except ExportError as e:
        raise ExportError(f"step {ct_name!r}: {e}") from None
    booster, params = _classifier(clf_name, clf)
    full, frame = _canary_frame(annual_rate, pipeline)
    probabilities = [float(p) for p in pipeline.predict_proba(frame)[:, 1]]
    rows = []
    for record in full[list(_native.NUMERIC_INPUTS) + list(_native.CATEGORICAL_INPUTS)].to_dict("records"):
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    scaler_rows = [getattr(t, "n_samples_seen_", 0) for _, t, _ in ct.transformers_ if hasattr(t, "n_samples_seen_")]
    training_rows = int(max((int(max(n)) if hasattr(n, "__len__") else int(n)) for n in scaler_rows)) if scaler_rows else 0
    import xgboost

    hyper = {f"xgboost.{k}": str(v) for k, v in sorted(params.items())}
    hyper.update(
        {
            "source": "scikit-learn Pipeline exported by cra.export_sklearn",
            "steps": ", ".join(f"{n}: {_name(s)}" for n, s in steps),
            "scikit-learn": sklearn.__version__,
            "xgboost": xgboost.__version__,
            "trees": str(booster.num_boosted_rounds()),
        }
    )
    spec = {
        "format_version": 1,
        "preprocessor": preprocessor,
        "canary": {"rows": rows, "probabilities": probabilities},
        "hyperparameters": hyper,
        "training_rows": training_rows,
    }
    return spec, booster


def export_sklearn(
    pipeline: Any,
    out_dir: "str | os.PathLike[str]",
    reason_codes: Optional[Any] = None,
    annual_rate: float = 0.10,
):
    """Writes ``pipeline`` (fitted) as a CRA model bundle in ``out_dir`` (which must not exist)
    and returns it loaded, as :class:`cra.Model`. ``cra serve --model out_dir`` then serves it.

    ``reason_codes``: the reason-code table (a dict, or the path of a ``reason_codes.json``);
    the standard table when None. Raises :class:`ExportError` naming the step CRA cannot
    reproduce exactly, and :class:`cra.ModelError` when the written model does not reproduce
    the pipeline's own probabilities on the canary rows to 1e-6 (nothing is left in
    ``out_dir`` then).
    """
    from . import Model

    spec, booster = sklearn_spec(pipeline, annual_rate)
    raw = bytes(booster.save_raw(raw_format="json"))
    table = None
    if reason_codes is not None:
        if isinstance(reason_codes, (str, os.PathLike)):
            with open(reason_codes, encoding="utf-8") as f:
                table = f.read()
        else:
            table = json.dumps(reason_codes)
    _native.import_model(raw, json.dumps(spec), os.fspath(out_dir), table)
    return Model.load(out_dir)
