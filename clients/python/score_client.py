#!/usr/bin/env python3
"""A minimal CRA client in Python: generates the stubs from proto/ with grpcio-tools, then scores
the original service's example application and checks the health of the service.

    python clients/python/score_client.py --addr 127.0.0.1:50051

Exit status 0 when the server answered with a well-formed score, non-zero otherwise.
"""
import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO = "creditrisk/v1/credit_risk.proto"


def generate_stubs(out_dir):
    """Compiles proto/ into Python modules in out_dir and imports them."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}", os.path.join(PROTO_DIR, PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed with status {rc}")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("creditrisk.v1.credit_risk_pb2")
    grpc_pb2 = importlib.import_module("creditrisk.v1.credit_risk_pb2_grpc")
    return pb2, grpc_pb2


def example_application(pb2):
    """The original Flask service's documented example request."""
    return pb2.CreditApplication(
        application_id="python-client-1", age=45, income=75000, employment_length=10,
        credit_score=720, num_credit_lines=5, credit_utilization=0.3, debt_to_income=0.35,
        total_debt=25000, savings=15000, loan_amount=20000, loan_term=36, num_late_payments=0,
        num_bankruptcies=0, inquiries_last_6m=1,
        employment_status=pb2.EMPLOYMENT_STATUS_EMPLOYED,
        home_ownership=pb2.HOME_OWNERSHIP_MORTGAGE,
        loan_purpose=pb2.LOAN_PURPOSE_DEBT_CONSOLIDATION)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="host:port of cra serve")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out_dir:
        pb2, grpc_pb2 = generate_stubs(out_dir)
        with grpc.insecure_channel(args.addr) as channel:
            stub = grpc_pb2.CreditRiskServiceStub(channel)
            resp = stub.Score(pb2.ScoreRequest(application=example_application(pb2)),
                              timeout=args.timeout, metadata=[("x-request-id", "py-req-1")])
            s = resp.score
            print(f"request_id={s.request_id} application_id={s.application_id} "
                  f"prediction={s.prediction} risk_score={s.risk_score:.2f} "
                  f"risk_level={pb2.RiskLevel.Name(s.risk_level)} "
                  f"p_default={s.probability_default:.4f} model={s.model_version}")
            checks = [
                (s.request_id == "py-req-1", "request_id echoes x-request-id"),
                (s.application_id == "python-client-1", "application_id echoed"),
                (0.0 <= s.probability_default <= 1.0, "probability in [0, 1]"),
                (abs(s.probability_default + s.probability_repayment - 1.0) < 1e-9,
                 "probabilities sum to 1"),
                (abs(s.risk_score - round(s.probability_default * 100, 2)) < 0.006,
                 "risk_score = 100 * p_default"),
                (s.risk_level != pb2.RISK_LEVEL_UNSPECIFIED, "risk_level set"),
                (s.model_version != "", "model_version set"),
            ]
            # An invalid application must come back as INVALID_ARGUMENT, never as a score.
            bad = example_application(pb2)
            bad.age = 7
            bad.employment_status = pb2.EMPLOYMENT_STATUS_UNSPECIFIED
            try:
                stub.Score(pb2.ScoreRequest(application=bad), timeout=args.timeout)
                checks.append((False, "invalid application rejected"))
            except grpc.RpcError as err:
                ok = err.code() == grpc.StatusCode.INVALID_ARGUMENT
                ok = ok and "age" in err.details() and "employment_status" in err.details()
                print(f"invalid application -> {err.code().name}: {err.details()}")
                checks.append((ok, "invalid application rejected naming both fields"))
    failed = [name for ok, name in checks if not ok]
    for name in failed:
        print(f"FAILED: {name}", file=sys.stderr)
    print(f"python client: {len(checks) - len(failed)} of {len(checks)} checks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
