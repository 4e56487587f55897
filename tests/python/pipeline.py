"""A scikit-learn pipeline of the original service's shape, fitted on CRA's generated data.

The same code shape as the original's train_model.py: a ColumnTransformer with StandardScaler on
the 16 numeric features (14 inputs and the 2 derived ones) and OrdinalEncoder on the 3
categoricals, in front of an XGBClassifier with the original's hyper-parameters, split 70/30
stratified with a fixed seed. The tests export it with cra.export_sklearn.

    python tests/python/pipeline.py DATA.parquet OUT.pkl
"""
import pickle
import sys

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder, StandardScaler
from xgboost import XGBClassifier

NUMERIC_FEATURES = [
    "age", "income", "employment_length", "credit_score", "num_credit_lines",
    "credit_utilization", "debt_to_income", "total_debt", "savings", "loan_amount",
    "loan_term", "num_late_payments", "num_bankruptcies", "inquiries_last_6m",
    "monthly_payment", "payment_to_income",
]
CATEGORICAL_FEATURES = ["employment_status", "home_ownership", "loan_purpose"]
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
TARGET = "default"


def build_pipeline(seed=42, n_estimators=100, **classifier):
    pre = ColumnTransformer([
        ("num", StandardScaler(), NUMERIC_FEATURES),
        ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
         CATEGORICAL_FEATURES),
    ])
    params = dict(
        n_estimators=n_estimators,
        max_depth=6,
        learning_rate=0.1,
        reg_alpha=0.1,
        reg_lambda=1.0,
        eval_metric="logloss",
        random_state=seed,
        n_jobs=1,
    )
    params.update(classifier)
    return Pipeline([("preprocessor", pre), ("classifier", XGBClassifier(**params))])


def fit(data_path, seed=42, **classifier):
    """The fitted pipeline and its test rows (a DataFrame with the label)."""
    df = pd.read_parquet(data_path)
    X, y = df[FEATURES], df[TARGET].astype(int)
    X_tr, X_te, y_tr, _ = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    pipe = build_pipeline(seed, **classifier)
    pipe.fit(X_tr, y_tr)
    return pipe, X_te


if __name__ == "__main__":
    pipe, _ = fit(sys.argv[1])
    with open(sys.argv[2], "wb") as f:
        pickle.dump(pipe, f)
