"""Test-wide setup; at the root so the packages' doctests get it too."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

# LiteLLM must never try to download its price map in tests.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on loopback, private to the test run."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def listen_args(self) -> list[str]:
        """How the server listens (a TLS server overrides it)."""
        return ["--port", str(self.port)]

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.proc = subprocess.Popen(
            [exe, *self.listen_args(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # refused its options, e.g. no TLS in this build
                self.proc = None
                raise RuntimeError(f"redis-server exited at start: {' '.join(self.listen_args())}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def redis_or_skip() -> RedisServer:
    """A started server; skip where redis-server is missing, except in CI."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: .ci/run installs it")
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server (``TALLY_TEST_REDIS_URL``, or one started here)."""
    url = os.environ.get("TALLY_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = redis_or_skip()
    try:
        yield server.url
    finally:
        server.stop()
