"""clients/spark/score_parquet.py in Spark's local mode on 1,000,000 rows: as many rows out as
in, and the values of `cra score` on the same file, to the last bit."""
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import DEFAULT_MODEL, ROOT, run_cra

ROWS = int(os.environ.get("CRA_SPARK_ROWS", "1000000"))


def test_the_spark_job_scores_every_row_as_cra_score_does(generated, tmp_path):
    pytest.importorskip("pyspark")
    t = pq.read_table(generated(ROWS, 99))
    ids = pa.array([f"L-{i:07d}" for i in range(t.num_rows)])
    t = t.append_column("application_id", ids)
    # A few invalid rows, so that the error column travels too.
    age = t["age"].to_numpy(zero_copy_only=False).astype(np.float64)
    age[::100_000] = 7
    t = t.set_column(t.schema.get_field_index("age"), "age", pa.array(age))
    src = str(tmp_path / "loans.parquet")
    pq.write_table(t, src, row_group_size=125_000)

    expected_file = str(tmp_path / "cra-score.parquet")
    started = time.perf_counter()
    run_cra("score", "--model", DEFAULT_MODEL, "--data", src, "--out", expected_file, "--quiet")
    cra_score_s = time.perf_counter() - started

    out = str(tmp_path / "spark-out")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    started = time.perf_counter()
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "clients", "spark", "score_parquet.py"),
         "--master", "local[2]", "--model", DEFAULT_MODEL, "--input", src, "--output", out],
        capture_output=True, text=True, env=env, timeout=600,
    )
    spark_s = time.perf_counter() - started
    assert p.returncode == 0, p.stderr[-5000:]
    print(f"\n{p.stdout.strip()}; whole job {spark_s:.1f}s; cra score {cra_score_s:.1f}s")

    got = pq.read_table(out).sort_by("application_id")
    expected = pq.read_table(expected_file).sort_by("application_id")
    assert got.num_rows == expected.num_rows == ROWS
    assert got.column_names == expected.column_names
    for c in got.column_names:
        a, b = got[c].combine_chunks(), expected[c].combine_chunks()
        if pa.types.is_floating(a.type):
            valid = a.is_valid()
            assert valid.equals(b.is_valid()), c
            bits = lambda x: pc.filter(x, valid).to_numpy().view(np.uint64)  # noqa: E731
            assert np.array_equal(bits(a), bits(b)), c
        else:
            assert a.equals(b), c
    assert got["error"].null_count == ROWS - 10
