"""cra.export_sklearn and `cra import`: a pipeline of the original's shape, trained on our data,
served by `cra serve` within 1e-6 of its own predict_proba; what cannot be reproduced exactly is
refused, naming the step."""
import json

import numpy as np
import pandas as pd
import pytest

import cra
from conftest import run_cra
from pipeline import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, build_pipeline, fit

CONTRACT = list(cra.NUMERIC_INPUTS) + list(cra.CATEGORICAL_INPUTS)


@pytest.fixture(scope="module")
def fitted(generated):
    """The pipeline fitted on 3,000 generated rows, and a test file of other rows."""
    pipe, _ = fit(generated(3000, 42))
    test = pd.read_parquet(generated(5000, 4242))
    return pipe, test


def proba(pipe, df):
    return pipe.predict_proba(df[FEATURES])[:, 1].astype(np.float64)


def test_the_exported_bundle_scores_every_row_within_1e6_of_predict_proba(fitted, tmp_path, serve):
    pipe, test = fitted
    out = tmp_path / "from-python"
    model = cra.export_sklearn(pipe, out)
    for f in ("booster.json", "bundle.json", "metrics.json", "checksums.sha256"):
        assert (out / f).exists(), f
    manifest = model.manifest
    cats = {c["name"]: c["categories"] for c in manifest["preprocessor"]["categorical"]}
    assert cats["employment_status"] == sorted(cats["employment_status"]), "scikit-learn's order"
    assert len(manifest["canary"]["rows"]) >= 64
    assert any(r["credit_score"] is None for r in manifest["canary"]["rows"])

    expected = proba(pipe, test)
    wheel = model.score(test).column("probability_default").to_numpy()
    assert np.abs(wheel - expected).max() <= 1e-6

    # The real server, through the REST batch endpoint, every row of the test file.
    server = serve("--model", str(out))
    served = []
    records = test[CONTRACT].astype(object).where(test[CONTRACT].notna(), None).to_dict("records")
    for start in range(0, len(records), 2500):
        answer = server.post("/predict/batch", {"applications": records[start:start + 2500]})
        served += [p["probability_default"] for p in answer["predictions"]]
    served = np.array(served)
    assert len(served) == len(test) == 5000
    assert np.abs(served - expected).max() <= 1e-6
    assert (served == wheel).all(), "the server and the wheel: the same bits"


def test_a_contract_value_the_encoder_never_saw_gets_its_unknown_value(generated, tmp_path):
    df = pd.read_parquet(generated(3000, 42))
    train = df[df["employment_status"] != "student"]
    pipe = build_pipeline(n_estimators=20)
    pipe.fit(train[FEATURES], train["default"].astype(int))
    model = cra.export_sklearn(pipe, tmp_path / "m")
    students = df[df["employment_status"] == "student"].head(50)
    assert len(students) > 5
    got = model.score(students).column("probability_default").to_numpy()
    assert np.abs(got - proba(pipe, students)).max() <= 1e-6


def refused(pipe, tmp_path):
    with pytest.raises(cra.ExportError) as e:
        cra.export_sklearn(pipe, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    return str(e.value)


@pytest.fixture(scope="module")
def train_rows(generated):
    df = pd.read_parquet(generated(1000, 42))
    return df[FEATURES], df["default"].astype(int)


def fitted_with(train_rows, num=None, cat=None, extra_steps=(), **classifier):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler
    from xgboost import XGBClassifier

    pre = ColumnTransformer([
        ("num", num if num is not None else StandardScaler(), NUMERIC_FEATURES),
        ("cat", cat if cat is not None else OrdinalEncoder(), CATEGORICAL_FEATURES),
    ])
    params = dict(n_estimators=5, max_depth=3, n_jobs=1)
    params.update(classifier)
    pipe = Pipeline([("preprocessor", pre), *extra_steps, ("classifier", XGBClassifier(**params))])
    X, y = train_rows
    pipe.fit(X, y)
    return pipe


def test_another_transformer_is_refused_naming_the_step(train_rows, tmp_path):
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

    msg = refused(fitted_with(train_rows, num=MinMaxScaler()), tmp_path)
    assert "step 'preprocessor'" in msg and "'num' is MinMaxScaler" in msg, msg
    msg = refused(fitted_with(train_rows, cat=OneHotEncoder()), tmp_path)
    assert "'cat' is OneHotEncoder" in msg, msg


def test_an_extra_step_is_refused_naming_it(train_rows, tmp_path):
    from sklearn.feature_selection import VarianceThreshold

    msg = refused(fitted_with(train_rows, extra_steps=[("select", VarianceThreshold())]), tmp_path)
    assert "select (VarianceThreshold)" in msg, msg


def test_an_unknown_category_policy_it_cannot_reproduce_is_refused(train_rows, tmp_path):
    from sklearn.preprocessing import OrdinalEncoder

    enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
    msg = refused(fitted_with(train_rows, cat=enc), tmp_path)
    assert "'cat'" in msg and "unknown_value=nan" in msg, msg
    enc = OrdinalEncoder(min_frequency=50)
    msg = refused(fitted_with(train_rows, cat=enc), tmp_path)
    assert "'cat'" in msg and "infrequent" in msg, msg


def test_another_objective_booster_or_missing_value_is_refused(train_rows, tmp_path):
    msg = refused(fitted_with(train_rows, objective="binary:logitraw"), tmp_path)
    assert "step 'classifier'" in msg and "binary:logitraw" in msg, msg
    msg = refused(fitted_with(train_rows, booster="dart"), tmp_path)
    assert "booster='dart'" in msg, msg
    msg = refused(fitted_with(train_rows, missing=0.0), tmp_path)
    assert "missing=0.0" in msg, msg


def test_columns_in_another_order_are_refused(train_rows, tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler
    from xgboost import XGBClassifier

    pre = ColumnTransformer([
        ("cat", OrdinalEncoder(), CATEGORICAL_FEATURES),
        ("num", StandardScaler(), NUMERIC_FEATURES),
    ])
    pipe = Pipeline([("preprocessor", pre), ("classifier", XGBClassifier(n_estimators=3, n_jobs=1))])
    pipe.fit(*train_rows)
    msg = refused(pipe, tmp_path)
    assert "in this order" in msg, msg


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_cra_import_of_files_saved_by_python(fitted, tmp_path, suffix):
    pipe, test = fitted
    spec, booster = cra.sklearn_spec(pipe)
    model_file = tmp_path / f"model.{suffix}"
    booster.save_model(str(model_file))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "imported"
    p = run_cra("import", "--booster", str(model_file), "--preprocessing", str(spec_file), "--out", str(out))
    assert "canary rows reproduced" in p.stdout, p.stdout
    got = cra.Model.load(out).score(test).column("probability_default").to_numpy()
    assert np.abs(got - proba(pipe, test)).max() <= 1e-6

    # A spec whose canaries the booster does not reproduce: refused, nothing written.
    spec["canary"]["probabilities"][0] += 0.01
    spec_file.write_text(json.dumps(spec))
    p = run_cra("import", "--booster", str(model_file), "--preprocessing", str(spec_file),
                "--out", str(tmp_path / "bad"), check=False)
    assert p.returncode != 0 and "does not reproduce the original pipeline" in p.stderr, p.stderr
    assert not (tmp_path / "bad").exists()
