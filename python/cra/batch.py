"""Scoring on distributed engines (Spark's ``mapInArrow``, Ray Data's ``map_batches``): a
scorer that each worker process builds once and reuses for every batch it is given.

>>> score = cra.batch.arrow_scorer("models/default")          # picklable; loads lazily
>>> df.mapInArrow(score, schema)                                # Spark
>>> ds.map_batches(score.batch, batch_format="pyarrow")         # Ray Data
"""
from __future__ import annotations

import os
import threading
from typing import Iterable, Iterator, Optional

import pyarrow as pa

_lock = threading.Lock()
_loaded: dict = {}


def cached_model(path: str, models_file: bool = False):
    """The model at ``path`` (a bundle directory, or a models file when ``models_file``),
    loaded and verified once per process and shared by every task the process runs."""
    from . import Model, Models

    key = (os.path.abspath(path), models_file)
    with _lock:
        model = _loaded.get(key)
        if model is None:
            model = (Models if models_file else Model).load(path)
            _loaded[key] = model
    return model


class ArrowScorer:
    """Scores Arrow record batches with the model at ``path``; pickled to the workers by its
    path only, and loaded there once per worker process (:func:`cached_model`)."""

    def __init__(self, path: str, models_file: bool = False, explain: bool = False,
                 threads: Optional[int] = None):
        self.path = os.fspath(path)
        self.models_file = models_file
        self.explain = explain
        self.threads = threads

    def batch(self, batch) -> pa.Table:
        """One batch (a RecordBatch or Table) scored: Ray Data's ``map_batches`` form."""
        model = cached_model(self.path, self.models_file)
        return model.score(batch, explain=self.explain, threads=self.threads)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Every batch of a partition scored: Spark's ``mapInArrow`` form."""
        for b in batches:
            yield from self.batch(b).to_batches()

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The Arrow schema of the scores of data with ``input_schema``."""
        empty = pa.Table.from_batches([], schema=input_schema)
        return self.batch(empty).schema


def arrow_scorer(path: str, models_file: bool = False, explain: bool = False,
                 threads: Optional[int] = None) -> ArrowScorer:
    """A scorer for ``mapInArrow`` / ``map_batches`` (see :class:`ArrowScorer`)."""
    return ArrowScorer(path, models_file, explain, threads)
