"""Fixtures of the Python package's tests: the `cra` binary (CRA_BIN, default
target/debug/cra), generated data files, and a real `cra serve` on free ports."""
import os
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRA = os.environ.get("CRA_BIN", os.path.join(ROOT, "target", "debug", "cra"))
DEFAULT_MODEL = os.path.join(ROOT, "models", "default")


def run_cra(*args, check=True):
    """Runs the cra binary; returns the completed process (stdout and stderr as text)."""
    p = subprocess.run([CRA, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"cra {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def cra_bin():
    if not os.access(CRA, os.X_OK):
        pytest.fail(f"{CRA} is not built: run cargo build (or set CRA_BIN)")
    return CRA


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def generated(cra_bin, data_dir):
    """A function: the path of a file of `rows` generated applications (seed), made once."""
    made = {}

    def make(rows, seed):
        key = (rows, seed)
        if key not in made:
            path = str(data_dir / f"gen-{rows}-{seed}.parquet")
            run_cra("generate", "--rows", str(rows), "--seed", str(seed), "--out", path)
            made[key] = path
        return made[key]

    return make


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """`cra serve` with the decision log off, on free ports; stopped with SIGTERM."""

    def __init__(self, *model_args):
        self.grpc = free_port()
        self.http = free_port()
        self.proc = subprocess.Popen(
            [CRA, "serve", *model_args, "--audit", "off", "--listen", f"127.0.0.1:{self.grpc}",
             "--http-listen", f"127.0.0.1:{self.http}", "--metrics", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"cra serve exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("cra serve never became ready")

    def post(self, path, body):
        import json

        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def serve():
    servers = []

    def start(*model_args):
        s = Server(*model_args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
