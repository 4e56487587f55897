"""A minimal OTLP/gRPC trace receiver for benchmarks: accepts every export, counts the spans,
keeps nothing. Prints the count every 5 s and at exit (SIGTERM/SIGINT).

  .tools/venv-otel/bin/python scripts/otlp-sink.py [--port 4317]
(scripts/setup.sh --test makes the venv: opentelemetry-proto and grpcio.)
"""
import argparse
import concurrent.futures
import signal
import threading

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0
        self.exports = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.lock:
            self.spans += n
            self.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=4317)
    args = ap.parse_args()
    sink = Sink()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"otlp-sink: listening on 127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(5):
        print(f"otlp-sink: {sink.spans} spans in {sink.exports} exports", flush=True)
    server.stop(1)
    print(f"otlp-sink: {sink.spans} spans in {sink.exports} exports (final)", flush=True)


if __name__ == "__main__":
    main()
