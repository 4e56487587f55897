"""The `cra` wheel scores as the server and `cra score` do, to the last bit, and names every
violation of an invalid row."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cra
from conftest import DEFAULT_MODEL, ROOT, run_cra

CONTRACT = list(cra.NUMERIC_INPUTS) + list(cra.CATEGORICAL_INPUTS)


def bits(column):
    """The IEEE bits of a float column (nulls as a marker that no float has)."""
    values = column.to_numpy(zero_copy_only=False)
    out = values.astype(np.float64).view(np.uint64).copy()
    out[np.isnan(values)] = 0xDEAD
    return out


def with_bad_rows(path, out):
    """The file at `path` with application ids and a few invalid rows at known places."""
    t = pq.read_table(path)
    n = t.num_rows
    ids = pa.array([f"A-{i}" for i in range(n)])
    t = t.append_column("application_id", ids)
    d = t.to_pydict()
    d["age"][3] = 10                      # under 18
    d["loan_term"][5] = None               # required
    d["employment_status"][5] = "astronaut"
    d["credit_score"][7] = 299             # under 300
    d["income"][7] = float("nan")
    t = pa.table({k: pa.array(v, type=t.schema.field(k).type) for k, v in d.items()})
    pq.write_table(t, out)
    return out


@pytest.fixture(scope="module")
def scored_file(generated, tmp_path_factory):
    """A 20,000-row file with bad rows, and `cra score`'s output of it (read back)."""
    d = tmp_path_factory.mktemp("score")
    src = with_bad_rows(generated(20_000, 7), str(d / "in.parquet"))
    out = str(d / "out.parquet")
    run_cra("score", "--model", DEFAULT_MODEL, "--data", src, "--out", out, "--quiet")
    return src, pq.read_table(out)


def test_probabilities_are_bit_identical_to_cra_score(scored_file):
    src, expected = scored_file
    got = cra.Model.load(DEFAULT_MODEL).score(pq.read_table(src))
    assert got.num_rows == expected.num_rows == 20_000
    assert got.column_names == expected.column_names
    for c in ("probability_default", "risk_score", "margin"):
        assert (bits(got[c]) == bits(expected[c])).all(), c
    for c in ("application_id", "risk_level", "prediction", "model_version", "error"):
        assert got[c].to_pylist() == expected[c].to_pylist(), c
    # The table's rows were scored, not copied: they differ from each other.
    assert len(set(got["probability_default"].to_pylist())) > 10_000


def test_every_violation_of_an_invalid_row_is_named(scored_file):
    src, _ = scored_file
    got = cra.Model.load(DEFAULT_MODEL).score(pq.read_table(src)).to_pydict()
    errors = got["error"]
    assert errors[3] == "age: must be between 18 and 120; got 10"
    assert "loan_term: is required" in errors[5] and 'employment_status: has unknown value "astronaut"' in errors[5]
    assert "credit_score: must be between 300 and 850; got 299" in errors[7]
    assert "income: must be a finite number greater than 0" in errors[7]
    for i in (3, 5, 7):
        assert got["probability_default"][i] is None and got["model_version"][i] is None
    assert sum(e is not None for e in errors) == 3


def test_pandas_record_batches_and_readers_give_the_same_scores(scored_file):
    src, expected = scored_file
    model = cra.Model.load(DEFAULT_MODEL)
    table = pq.read_table(src)
    from_pandas = model.score(table.to_pandas(), threads=1)
    from_batch = model.score(table.combine_chunks().to_batches()[0], threads=2)
    from_reader = model.score(pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=999)))
    for got in (from_pandas, from_batch, from_reader):
        assert (bits(got["probability_default"]) == bits(expected["probability_default"])).all()
    for got in (from_batch, from_reader):
        assert got["error"].to_pylist() == expected["error"].to_pylist()
    # In pandas a NaN is a missing value (pyarrow's from_pandas reads it as null): row 7's
    # income is then absent, not "not a finite number".
    errors = from_pandas["error"].to_pylist()
    assert errors[7].startswith("income: is required"), errors[7]
    assert errors[:7] == expected["error"].to_pylist()[:7]


def test_without_application_ids_the_id_is_the_row_number(generated):
    t = pq.read_table(generated(1000, 11)).select(CONTRACT)
    got = cra.Model.load(DEFAULT_MODEL).score(t, row_offset=500)
    assert got.column_names == ["row"] + cra.SCORE_COLUMNS
    assert got["row"].to_pylist() == list(range(500, 1500))


def test_missing_and_mistyped_columns_are_all_named(generated):
    t = pq.read_table(generated(1000, 11))
    bad = t.drop_columns(["age", "loan_purpose"]).set_column(
        t.schema.get_field_index("income") - 1, "income", pa.array(["x"] * t.num_rows)
    )
    with pytest.raises(ValueError) as e:
        cra.Model.load(DEFAULT_MODEL).score(bad)
    msg = str(e.value)
    assert "age" in msg and "loan_purpose" in msg and "income is Utf8" in msg, msg
    with pytest.raises(TypeError):
        cra.Model.load(DEFAULT_MODEL).score([1, 2, 3])


def test_a_bad_bundle_is_refused_with_what_to_fix(tmp_path):
    with pytest.raises(cra.ModelError) as e:
        cra.Model.load(tmp_path)
    assert "cra train" in str(e.value)


def test_explanations_match_cra_score_explain(generated, tmp_path):
    src = generated(2000, 13)
    out = str(tmp_path / "explained.parquet")
    run_cra("score", "--model", DEFAULT_MODEL, "--data", src, "--out", out, "--explain", "--quiet")
    expected = pq.read_table(out)
    got = cra.Model.load(DEFAULT_MODEL).score(pq.read_table(src), explain=True)
    assert got.column_names == expected.column_names
    assert any(c.startswith("contribution_") for c in got.column_names)
    for c in got.column_names:
        if got.schema.field(c).type == pa.float64():
            assert (bits(got[c]) == bits(expected[c])).all(), c
        else:
            assert got[c].to_pylist() == expected[c].to_pylist(), c
    assert got["reason_codes"].null_count == 0


def test_a_models_file_routes_as_cra_score_does(generated, tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text(
        f'[[models]]\npath = "{DEFAULT_MODEL}"\nrole = "champion"\nweight = 50\n'
        f'[[models]]\npath = "{os.path.join(ROOT, "models", "challenger")}"\nrole = "challenger"\nweight = 50\n'
    )
    t = pq.read_table(generated(5000, 17))
    t = t.append_column("application_id", pa.array([f"id-{i}" for i in range(t.num_rows)]))
    src = str(tmp_path / "in.parquet")
    pq.write_table(t, src)
    out = str(tmp_path / "out.parquet")
    run_cra("score", "--models", str(toml), "--data", src, "--out", out, "--quiet")
    expected = pq.read_table(out)
    models = cra.Models.load(toml)
    assert [r for _, r, _, _ in models.members] == ["champion", "challenger"]
    got = models.score(t)
    assert got["model_version"].to_pylist() == expected["model_version"].to_pylist()
    assert len(set(got["model_version"].to_pylist())) == 2
    assert (bits(got["probability_default"]) == bits(expected["probability_default"])).all()


def test_probabilities_are_bit_identical_to_the_server(serve, scored_file):
    src, _ = scored_file
    t = pq.read_table(src).slice(0, 3000)
    ok = [i for i, e in enumerate(cra.Model.load(DEFAULT_MODEL).score(t)["error"].to_pylist()) if e is None]
    rows = t.take(ok).select(CONTRACT + ["application_id"]).to_pylist()
    server = serve("--model", DEFAULT_MODEL)
    answer = server.post("/predict/batch", {"applications": rows})
    served = np.array([p["probability_default"] for p in answer["predictions"]], dtype=np.float64)
    got = cra.Model.load(DEFAULT_MODEL).score(t.take(ok))
    assert len(served) == len(ok) == got.num_rows > 2900
    assert (served.view(np.uint64) == bits(got["probability_default"])).all()
