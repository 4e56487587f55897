"""Traces end to end: the real `cra serve` exporting to a real OTLP/gRPC receiver.

The receiver is opentelemetry-proto's TraceService, served here with grpcio. The server is
started with --otlp-endpoint pointing at it, the decision log on (a fresh database) and JSON
logs at debug level for cra. Calls carry W3C traceparent headers: a gRPC Score and a ScoreBatch
stream (grpcurl, metadata), a REST /predict (header), and a REST /predict without one (a new
root trace). After SIGTERM (which sends the buffered spans), the checks:

- each call's span arrived, in the caller's trace, with the caller's span as its parent, and
  with its attributes: rpc, model_version, outcome, decision_id (one decision) or decisions;
- the decision rows hold the span's trace id (the root call's too), and the span's decision id
  is the row's;
- the JSON log line about the call carries its request_id, decision_id and trace_id.

  tests/e2e_otel.py --cra target/debug/cra --database-url postgres://…/db --grpcurl PATH
Prints one "ok: …" line per check; exits non-zero on the first failure.
"""
import argparse
import concurrent.futures
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

APPLICATION = {
    "age": 35, "income": 75000, "employment_length": 8, "credit_score": 720,
    "num_credit_lines": 5, "credit_utilization": 0.3, "debt_to_income": 0.25,
    "total_debt": 25000, "savings": 15000, "loan_amount": 20000, "loan_term": 36,
    "num_late_payments": 0, "num_bankruptcies": 0, "inquiries_last_6m": 1,
    "employment_status": "employed", "home_ownership": "mortgage", "loan_purpose": "auto",
}
GRPC_APPLICATION = dict(
    APPLICATION,
    employment_status="EMPLOYMENT_STATUS_EMPLOYED",
    home_ownership="HOME_OWNERSHIP_MORTGAGE",
    loan_purpose="LOAN_PURPOSE_AUTO",
)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for rs in request.resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append((service, s))
        return trace_service_pb2.ExportTraceServiceResponse()


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value or (v.int_value if v.HasField("int_value") else v.string_value)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def traceparent():
    trace, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace, parent, f"00-{trace}-{parent}-01"


def fail(msg):
    print(f"e2e_otel.py: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{' '.join(cmd[:1])} exited with {r.returncode}: {r.stderr}")
    return r.stdout


def psql(url, sql):
    return subprocess.run(["psql", "-tAq", url, "-c", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cra", required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--grpcurl", required=True)
    args = ap.parse_args()

    receiver = Receiver()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    grpc_port, http_port = free_port(), free_port()
    work = tempfile.mkdtemp()
    log_path = os.path.join(work, "serve.log")
    env = dict(os.environ, DATABASE_URL=args.database_url, RUST_LOG="info,cra=debug",
               OTEL_SERVICE_NAME="cra-e2e")
    env.pop("CRA_OTLP_ENDPOINT", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [args.cra, "serve", "--listen", f"127.0.0.1:{grpc_port}",
             "--http-listen", f"127.0.0.1:{http_port}", "--spool-dir", os.path.join(work, "spool"),
             "--require-database", "--log-format", "json",
             "--otlp-endpoint", f"http://127.0.0.1:{otlp_port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if proc.poll() is not None:
                fail("cra serve exited:\n" + open(log_path).read())
            time.sleep(0.2)
        else:
            fail("cra serve never became ready:\n" + open(log_path).read())

        # gRPC Score with a traceparent in the metadata.
        g_trace, g_parent, g_header = traceparent()
        out = run(
            [args.grpcurl, "-plaintext", "-H", f"traceparent: {g_header}",
             "-H", "x-request-id: otel-grpc-1",
             "-d", json.dumps({"application": dict(GRPC_APPLICATION, application_id="otel-grpc")}),
             f"127.0.0.1:{grpc_port}", "creditrisk.v1.CreditRiskService/Score"])
        g_decision = json.loads(out)["score"]["decisionId"]

        # A ScoreBatch stream of 3 applications in one trace.
        s_trace, s_parent, s_header = traceparent()
        batch = json.dumps({"applications": [
            dict(GRPC_APPLICATION, application_id=f"otel-stream-{i}") for i in range(3)]})
        run([args.grpcurl, "-plaintext", "-H", f"traceparent: {s_header}", "-d", batch,
             f"127.0.0.1:{grpc_port}", "creditrisk.v1.CreditRiskService/ScoreBatch"])

        # REST /predict with a traceparent header, and one without.
        def predict(headers):
            req = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/predict", data=json.dumps(APPLICATION).encode(),
                headers=dict({"Content-Type": "application/json"}, **headers))
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.load(r)

        r_trace, r_parent, r_header = traceparent()
        r_decision = predict({"traceparent": r_header, "X-Request-ID": "otel-rest-1"})[
            "decision_id"]
        root_decision = predict({})["decision_id"]
        # A caller that did not sample its trace (flags 00): nothing exported, but the row
        # still holds the caller's trace id.
        u_trace, _, u_header = traceparent()
        u_decision = predict({"traceparent": u_header[:-2] + "00"})["decision_id"]

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if proc.returncode != 0:
            fail(f"cra serve exited with {proc.returncode}:\n" + open(log_path).read())
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop(0)

    spans = receiver.spans
    if not spans:
        fail("no span reached the OTLP receiver:\n" + open(log_path).read())
    services = {svc.get("service.name") for svc, _ in spans}
    if services != {"cra-e2e"}:
        fail(f"spans came from services {services}, not cra-e2e (OTEL_SERVICE_NAME)")
    print(f"ok: {len(spans)} spans reached the OTLP receiver, service.name cra-e2e")

    def span_of(trace):
        found = [s for _, s in spans if s.trace_id.hex() == trace]
        if len(found) != 1:
            fail(f"expected one span in trace {trace}, got {len(found)}: "
                 f"{[(s.name, attrs(s)) for _, s in spans]}")
        return found[0]

    server_kind = 2  # SPAN_KIND_SERVER
    for what, trace, parent, decision, rpc in [
        ("gRPC Score", g_trace, g_parent, g_decision, "Score"),
        ("REST /predict", r_trace, r_parent, r_decision, "POST /predict"),
    ]:
        s = span_of(trace)
        a = attrs(s)
        if s.parent_span_id.hex() != parent:
            fail(f"{what}: parent {s.parent_span_id.hex()!r}, expected the caller's {parent}")
        if s.kind != server_kind:
            fail(f"{what}: span kind {s.kind}, expected SERVER")
        if a.get("rpc") != rpc or a.get("outcome") != "ok" or not a.get("model_version"):
            fail(f"{what}: attributes {a}")
        if a.get("decision_id") != decision:
            fail(f"{what}: span decision_id {a.get('decision_id')}, answer's {decision}")
        row_trace = psql(args.database_url,
                         f"SELECT trace_id FROM decisions WHERE decision_id = '{decision}'")
        if row_trace != trace:
            fail(f"{what}: the decision row's trace_id is {row_trace!r}, expected {trace}")
        print(f"ok: {what}: span in the caller's trace with the caller's parent; rpc, "
              f"model_version, outcome, decision_id; the decision row holds the trace id")

    s = span_of(s_trace)
    a = attrs(s)
    if s.parent_span_id.hex() != s_parent or a.get("rpc") != "ScoreBatch" or str(a.get("decisions")) != "3":
        fail(f"ScoreBatch: parent {s.parent_span_id.hex()}, attributes {a}")
    rows = psql(args.database_url, f"SELECT count(*) FROM decisions WHERE trace_id = '{s_trace}'")
    if rows != "3":
        fail(f"ScoreBatch: {rows} decision rows hold the stream's trace id, expected 3")
    print("ok: ScoreBatch: one span for the stream, with the caller's parent and decisions=3; "
          "its 3 rows hold the trace id")

    root_trace = psql(args.database_url,
                      f"SELECT trace_id FROM decisions WHERE decision_id = '{root_decision}'")
    s = span_of(root_trace) if root_trace else fail("the untraced call's row has no trace id")
    if s.parent_span_id or attrs(s).get("decision_id") != root_decision:
        fail(f"untraced /predict: parent {s.parent_span_id.hex()!r}, attributes {attrs(s)}")
    print("ok: a call without traceparent starts a root trace, and its row holds that trace id")

    if any(sp.trace_id.hex() == u_trace for _, sp in spans):
        fail("a call whose traceparent is not sampled (flags 00) was exported")
    row_trace = psql(args.database_url,
                     f"SELECT trace_id FROM decisions WHERE decision_id = '{u_decision}'")
    if row_trace != u_trace:
        fail(f"unsampled /predict: the row's trace_id is {row_trace!r}, expected {u_trace}")
    print("ok: a call whose caller did not sample it exports no span; its row holds the trace id")

    lines = [json.loads(l) for l in open(log_path) if l.startswith("{")]
    about = [l for l in lines if l.get("span", {}).get("decision_id") == g_decision]
    if not about:
        fail("no JSON log line carries the gRPC call's decision_id")
    for l in about:
        span = l["span"]
        if span.get("trace_id") != g_trace or span.get("request_id") != "otel-grpc-1":
            fail(f"a log line about the gRPC call lacks its trace_id or request_id: {l}")
    print(f"ok: the JSON log lines about a call carry its request_id, decision_id and trace_id "
          f"({len(about)} line(s))")
    print("e2e_otel.py: all trace checks passed")


if __name__ == "__main__":
    main()
