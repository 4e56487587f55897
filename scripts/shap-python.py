#!/usr/bin/env python3
"""Python xgboost's TreeSHAP (pred_contribs) on one thread, on the rows the engine's own
benchmark used (crates/cra-model shap::tests::shap_speed with CRA_SHAP_ROWS_OUT=FILE):

  shap-python.py FILE BOOSTER_JSON [REPEATS]

FILE holds the preprocessed feature matrix as little-endian f32, row-major, NaN for missing;
its width is the booster's feature count. Prints the best wall and on-CPU time per row over
REPEATS (default 3) calls of Booster.predict(pred_contribs=True) with nthread=1.
"""
import sys
import time

import numpy as np
import xgboost as xgb

path, booster_json = sys.argv[1], sys.argv[2]
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
booster = xgb.Booster(model_file=booster_json)
booster.set_param({"nthread": 1})
nf = booster.num_features()
m = np.fromfile(path, dtype="<f4").reshape(-1, nf)
dm = xgb.DMatrix(m, missing=np.nan, nthread=1)
best_wall = best_cpu = float("inf")
for _ in range(repeats):
    t, c = time.perf_counter(), time.thread_time()
    out = booster.predict(dm, pred_contribs=True)
    best_wall = min(best_wall, (time.perf_counter() - t) * 1e6 / len(m))
    best_cpu = min(best_cpu, (time.thread_time() - c) * 1e6 / len(m))
print(f"python xgboost {xgb.__version__} pred_contribs, nthread=1: {best_wall:.2f} us/row wall, "
      f"{best_cpu:.2f} us/row on CPU (best of {repeats}, {len(m)} rows x {nf} features; "
      f"output {out.shape})")
