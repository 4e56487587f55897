#!/usr/bin/env python3
"""The wheel against the pipeline it was exported from, in one Python process, on the same rows
and the same threads:

  1. cra.Model.score(table): validation, preprocessing, trees, decisions, Arrow output;
  2. pipeline.predict_proba(df): the fitted scikit-learn pipeline (ColumnTransformer + XGBoost);
  3. booster.inplace_predict(X): XGBoost alone, on the matrix the ColumnTransformer made
     (preprocessing not timed).

    python scripts/bench-python.py --train TRAIN.parquet --data ROWS.parquet [--threads 2] [--repeat 3]

Prints one line per contender (best of --repeat, seconds and rows/s) and the ratios; every
contender's probabilities are checked against predict_proba (at most 1e-6 apart).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))

import cra  # noqa: E402
from pipeline import FEATURES, fit  # noqa: E402


def best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    pipe, _ = fit(a.train)
    pipe.named_steps["classifier"].set_params(n_jobs=a.threads)
    booster = pipe.named_steps["classifier"].get_booster()
    booster.set_param({"nthread": a.threads})
    with tempfile.TemporaryDirectory() as d:
        model = cra.export_sklearn(pipe, os.path.join(d, "bundle"))
    table = pq.read_table(a.data)
    df = table.to_pandas()[FEATURES]
    X = pipe.named_steps["preprocessor"].transform(df)
    n = table.num_rows

    t_cra, scored = best(lambda: model.score(table, threads=a.threads), a.repeat)
    t_sk, proba = best(lambda: pipe.predict_proba(df)[:, 1], a.repeat)
    t_xgb, raw = best(lambda: booster.inplace_predict(X), a.repeat)
    got = scored.column("probability_default").to_numpy()
    assert np.abs(got - proba).max() <= 1e-6 and np.abs(raw - proba).max() <= 1e-6

    print(f"rows {n:,}, threads {a.threads}, best of {a.repeat}")
    for name, t in [("cra.Model.score(table)", t_cra), ("pipeline.predict_proba(df)", t_sk),
                    ("booster.inplace_predict(X)", t_xgb)]:
        print(f"  {name:30s} {t:7.3f} s  {n / t:12,.0f} rows/s")
    print(f"  cra vs predict_proba: {t_sk / t_cra:.1f}x; cra vs inplace_predict: {t_xgb / t_cra:.2f}x")


if __name__ == "__main__":
    main()
