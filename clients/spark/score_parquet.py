#!/usr/bin/env python3
"""Scores a Parquet dataset on Spark with CRA's model runtime (the `cra` wheel).

Each partition goes through ``DataFrame.mapInArrow``: Spark hands the Python worker Arrow
record batches, the wheel scores them in Rust (the server's validation, preprocessing and trees,
so the same numbers to the last bit as ``cra serve`` and ``cra score``) and hands Arrow batches
back. The model is loaded and verified once per Python worker process and reused by every task
it runs. The output is Parquet: ``application_id``, ``probability_default``, ``risk_score``,
``risk_level``, ``prediction``, ``margin``, ``model_version``, ``error`` (every violation of an
invalid row), and with ``--explain`` the reasons and every feature's contribution.

    spark-submit clients/spark/score_parquet.py --model models/default \\
        --input applications.parquet --output scores.parquet [--explain]

An input without ``application_id`` gets one: Spark's ``monotonically_increasing_id()`` (unique,
not consecutive), so that every score can be joined back to its row. The model folder (or the
models file and its bundles) must be readable at the same path on every executor; see
docs/BATCH.md for shipping it and the wheel to a cluster.
"""
import argparse
import os
import sys
import time


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="model bundle directory (default: models/default)")
    src.add_argument("--models", help="models file (TOML): champion, challengers, shadows")
    ap.add_argument("--input", required=True, help="Parquet file or folder to score")
    ap.add_argument("--output", required=True, help="Parquet folder to write (replaced)")
    ap.add_argument("--explain", action="store_true", help="add the reasons and contributions")
    ap.add_argument("--partitions", type=int, default=0,
                    help="repartition the input into this many partitions first (0: as read)")
    ap.add_argument("--batch-rows", type=int, default=10_000,
                    help="rows per Arrow batch handed to Python (spark.sql.execution.arrow.maxRecordsPerBatch)")
    ap.add_argument("--master", default=None, help="Spark master when run with plain python (e.g. local[2])")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from pyspark.sql import SparkSession, functions as F
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    import cra.batch

    builder = SparkSession.builder.appName("cra-score-parquet")
    if args.master:
        builder = builder.master(args.master)
    spark = (
        builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_rows))
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    path = os.path.abspath(args.models or args.model or "models/default")
    scorer = cra.batch.arrow_scorer(path, models_file=bool(args.models), explain=args.explain)

    started = time.perf_counter()
    df = spark.read.parquet(args.input)
    if "application_id" not in df.columns:
        df = df.withColumn("application_id", F.monotonically_increasing_id().cast("string"))
    # Only the contract's columns travel to Python.
    wanted = [c for c in df.columns if c in set(cra.NUMERIC_INPUTS) | set(cra.CATEGORICAL_INPUTS) | {"application_id"}]
    df = df.select(*wanted)
    if args.partitions > 0:
        df = df.repartition(args.partitions)
    schema = from_arrow_schema(scorer.output_schema(to_arrow_schema(df.schema)))
    scored = df.mapInArrow(scorer, schema)
    scored.write.mode("overwrite").parquet(args.output)
    seconds = time.perf_counter() - started
    rows = spark.read.parquet(args.output).count()
    print(f"scored {rows} rows -> {args.output} in {seconds:.1f}s ({rows / seconds:,.0f} rows/s)")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
