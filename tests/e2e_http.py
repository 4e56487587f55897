#!/usr/bin/env python3
"""End-to-end checks of CRA's HTTP port and its Open Inference Protocol with real clients:

- the OpenAPI document at /openapi.json, validated by openapi-spec-validator (OpenAPI 3.1);
- tritonclient (PyPI tritonclient[grpc,http]) over gRPC and over HTTP: server live and ready,
  model metadata, and an inference of 100 rows (a quarter without a credit-bureau file: NaN),
  with raw contents (tritonclient's default: raw_input_contents on gRPC, the binary tensor data
  extension on HTTP) and with typed ones (JSON data on HTTP, where tritonclient writes NaN as
  Python's json does; typed InferTensorContents on gRPC, built with tritonclient's own
  generated stubs); every probability equal to the REST API's for the same application.

  e2e_http.py --grpc HOST:PORT --http HOST:PORT

Prints one line per check and "http clients: N of M checks ok"; exits 1 on any failure.
"""
import argparse
import json
import math
import random
import sys
import urllib.request

import numpy as np

NUMBER_FIELDS = [
    "age", "income", "employment_length", "credit_score", "num_credit_lines",
    "credit_utilization", "debt_to_income", "total_debt", "savings", "loan_amount",
    "loan_term", "num_late_payments", "num_bankruptcies", "inquiries_last_6m",
]
BUREAU = {"credit_score", "num_credit_lines", "credit_utilization", "num_late_payments",
          "num_bankruptcies", "inquiries_last_6m"}
CATEGORIES = {
    "employment_status": ["employed", "self_employed", "unemployed", "retired", "student"],
    "home_ownership": ["mortgage", "rent", "own", "other"],
    "loan_purpose": ["debt_consolidation", "home_improvement", "auto", "business",
                     "education", "medical", "personal", "other"],
}

checks = []


def check(name, ok, detail=""):
    checks.append(ok)
    print(f"{'ok' if ok else 'FAILED'}: {name}{(' (' + detail + ')') if detail else ''}")


def applications(n, seed=3):
    rng = random.Random(seed)
    apps = []
    for i in range(n):
        income = max(8000, round(rng.lognormvariate(10.9, 0.5)))
        a = {
            "age": rng.randint(18, 80), "income": income,
            "employment_length": rng.randint(0, 30), "credit_score": rng.randint(450, 850),
            "num_credit_lines": rng.randint(0, 20),
            "credit_utilization": round(rng.random(), 3),
            "debt_to_income": round(rng.random() * 1.2, 3),
            "total_debt": rng.randint(0, 90000), "savings": rng.randint(0, 60000),
            "loan_amount": rng.randint(10, 400) * 100, "loan_term": rng.choice([12, 36, 60]),
            "num_late_payments": rng.randint(0, 5), "num_bankruptcies": rng.choice([0, 0, 1]),
            "inquiries_last_6m": rng.randint(0, 6),
        }
        if i % 4 == 3:  # no credit-bureau file
            for f in BUREAU:
                a[f] = None
        for k, values in CATEGORIES.items():
            a[k] = rng.choice(values)
        apps.append(a)
    return apps


def rest_probabilities(http, apps):
    body = json.dumps({"applications": apps}).encode()
    req = urllib.request.Request(f"http://{http}/predict/batch", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.load(r)
    return [p["probability_default"] for p in out["predictions"]]


def column(apps, field):
    if field in CATEGORIES:
        return np.array([a[field].encode() for a in apps], dtype=np.object_).reshape(-1, 1)
    return np.array([math.nan if a[field] is None else float(a[field]) for a in apps],
                    dtype=np.float64).reshape(-1, 1)


def same(got, expected):
    got = [float(x) for x in np.asarray(got).reshape(-1)]
    return len(got) == len(expected) and all(
        np.float64(g).tobytes() == np.float64(e).tobytes() for g, e in zip(got, expected))


def openapi(http):
    from openapi_spec_validator import validate
    with urllib.request.urlopen(f"http://{http}/openapi.json", timeout=10) as r:
        doc = json.load(r)
    try:
        validate(doc)
        check("openapi.json is a valid OpenAPI 3.1 document", doc.get("openapi") == "3.1.0")
    except Exception as e:  # noqa: BLE001 - report the validator's reason
        check("openapi.json is a valid OpenAPI 3.1 document", False, str(e)[:300])


def triton_http(http, apps, expected):
    import tritonclient.http as th
    c = th.InferenceServerClient(url=http)
    check("tritonclient http: server live", c.is_server_live())
    check("tritonclient http: server ready", c.is_server_ready())
    check("tritonclient http: model ready", c.is_model_ready("credit-risk"))
    meta = c.get_model_metadata("credit-risk")
    names = {i["name"] for i in meta["inputs"]}
    check("tritonclient http: model metadata lists every contract field",
          names >= set(NUMBER_FIELDS) | set(CATEGORIES), f"{len(names)} inputs")
    for binary in (True, False):
        rows, want = apps, expected
        inputs = []
        for i in meta["inputs"]:
            if i["name"] == "application_id":
                continue
            t = th.InferInput(i["name"], [len(rows), 1], i["datatype"])
            t.set_data_from_numpy(column(rows, i["name"]), binary_data=binary)
            inputs.append(t)
        outputs = [th.InferRequestedOutput("probability_default", binary_data=binary),
                   th.InferRequestedOutput("risk_level", binary_data=binary)]
        r = c.infer("credit-risk", inputs, outputs=outputs)
        probs = r.as_numpy("probability_default")
        label = "binary" if binary else "JSON"
        check(f"tritonclient http ({label}): {len(rows)} rows equal the REST API's probabilities",
              same(probs, want), f"shape {None if probs is None else probs.shape}")
        levels = r.as_numpy("risk_level")
        check(f"tritonclient http ({label}): risk levels are low/medium/high",
              levels is not None and all((x.decode() if isinstance(x, bytes) else x) in
                                         ("low", "medium", "high") for x in levels.reshape(-1)))


def triton_grpc(grpc_addr, apps, expected):
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    import grpc
    c = tg.InferenceServerClient(url=grpc_addr)
    check("tritonclient grpc: server live", c.is_server_live())
    check("tritonclient grpc: server ready", c.is_server_ready())
    check("tritonclient grpc: model ready", c.is_model_ready("credit-risk"))
    meta = c.get_model_metadata("credit-risk")
    check("tritonclient grpc: model metadata", len(meta.inputs) == 18 and len(meta.outputs) == 6,
          f"{len(meta.inputs)} inputs, {len(meta.outputs)} outputs")
    inputs = []
    for i in meta.inputs:
        if i.name == "application_id":
            continue
        t = tg.InferInput(i.name, [len(apps), 1], i.datatype)
        t.set_data_from_numpy(column(apps, i.name))
        inputs.append(t)
    r = c.infer("credit-risk", inputs)
    check("tritonclient grpc (raw contents): 100 rows equal the REST API's probabilities",
          same(r.as_numpy("probability_default"), expected))
    ids = r.as_numpy("decision_id")
    check("tritonclient grpc: every row has a decision id",
          ids is not None and all(len(x) == 36 for x in ids.reshape(-1)))
    # Typed contents, with tritonclient's own generated stubs.
    req = service_pb2.ModelInferRequest(model_name="credit-risk")
    for i in meta.inputs:
        if i.name == "application_id":
            continue
        t = req.inputs.add(name=i.name, datatype=i.datatype, shape=[len(apps)])
        col = column(apps, i.name).reshape(-1)
        if i.datatype == "BYTES":
            t.contents.bytes_contents.extend(list(col))
        else:
            t.contents.fp64_contents.extend(col.tolist())
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_addr))
    resp = stub.ModelInfer(req, timeout=30)
    out = {o.name: o for o in resp.outputs}
    check("tritonclient grpc stubs (typed contents): 100 rows equal the REST API's probabilities",
          same(list(out["probability_default"].contents.fp64_contents), expected))
    # A bad row is INVALID_ARGUMENT naming the row and the field.
    req.inputs[0].contents.fp64_contents[5] = 12.0  # age 12
    try:
        stub.ModelInfer(req, timeout=30)
        check("tritonclient grpc stubs: a bad row is refused", False, "it was scored")
    except grpc.RpcError as e:
        check("tritonclient grpc stubs: a bad row is INVALID_ARGUMENT naming age[5]",
              e.code() == grpc.StatusCode.INVALID_ARGUMENT and "age" in e.details(),
              f"{e.code()}: {e.details()[:120]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--http", required=True)
    args = ap.parse_args()
    apps = applications(100)
    expected = rest_probabilities(args.http, apps)
    openapi(args.http)
    triton_http(args.http, apps, expected)
    triton_grpc(args.grpc, apps, expected)
    print(f"http clients: {sum(checks)} of {len(checks)} checks ok")
    sys.exit(0 if all(checks) else 1)


if __name__ == "__main__":
    main()
