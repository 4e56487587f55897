#!/usr/bin/env python3
"""Writes the request bodies of scripts/bench-http.sh into OUTDIR, from N generated
applications (valid for CRA and for the original Flask service alike):

- predict.json: one application (the original's example) for POST /predict;
- batch.json: {"applications": [N applications]} for POST /predict/batch;
- v2.grpc: the same N applications as one Open Inference Protocol ModelInfer request with raw
  contents, framed for gRPC (1 flag byte, 4-byte big-endian length, the message), for h2load;
- stream.txt: nothing else; `cra bench --mode stream` makes its own.

  http-bodies.py OUTDIR [N]      (needs tritonclient's generated protobuf stubs)
"""
import json
import random
import struct
import sys

from tritonclient.grpc import service_pb2

NUMBER_FIELDS = [
    "age", "income", "employment_length", "credit_score", "num_credit_lines",
    "credit_utilization", "debt_to_income", "total_debt", "savings", "loan_amount",
    "loan_term", "num_late_payments", "num_bankruptcies", "inquiries_last_6m",
]
CATEGORIES = {
    "employment_status": ["employed", "self_employed", "unemployed", "retired", "student"],
    "home_ownership": ["mortgage", "rent", "own", "other"],
    "loan_purpose": ["debt_consolidation", "home_improvement", "auto", "business",
                     "education", "medical", "personal", "other"],
}
EXAMPLE = {
    "age": 45, "income": 75000, "employment_length": 10, "credit_score": 720,
    "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.35,
    "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
    "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
    "employment_status": "employed", "home_ownership": "mortgage",
    "loan_purpose": "debt_consolidation",
}


def applications(n, seed=11):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
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
        for k, values in CATEGORIES.items():
            a[k] = rng.choice(values)
        out.append(a)
    return out


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    apps = applications(n)
    with open(f"{out}/predict.json", "w") as f:
        json.dump(EXAMPLE, f)
    with open(f"{out}/batch.json", "w") as f:
        json.dump({"applications": apps}, f)
    req = service_pb2.ModelInferRequest(model_name="credit-risk")
    for name in NUMBER_FIELDS:
        req.inputs.add(name=name, datatype="FP64", shape=[n])
        req.raw_input_contents.append(struct.pack(f"<{n}d", *[float(a[name]) for a in apps]))
    for name in CATEGORIES:
        req.inputs.add(name=name, datatype="BYTES", shape=[n])
        raw = b"".join(struct.pack("<I", len(a[name])) + a[name].encode() for a in apps)
        req.raw_input_contents.append(raw)
    msg = req.SerializeToString()
    with open(f"{out}/v2.grpc", "wb") as f:
        f.write(b"\x00" + struct.pack(">I", len(msg)) + msg)
    print(f"bodies for {n} applications in {out}: v2.grpc is {len(msg) + 5} bytes")


if __name__ == "__main__":
    main()
