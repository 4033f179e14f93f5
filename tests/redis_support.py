"""A real redis-server speaking TLS on loopback, with a throwaway CA.

``openssl`` makes a CA, a server certificate for 127.0.0.1 and a client
certificate (``.ci/run`` installs openssl with redis-server); Debian's
redis-server is built with TLS, so ``--tls-port`` works. Skips, with the
reason, only when that is truly missing, and fails instead under CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import RedisServer


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and, signed by it, a server certificate (127.0.0.1) and a client one."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=tally-test-ca", "-keyout", "ca.key", "-out", "ca.crt",
             cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=tally-test-{who}",
                 "-keyout", f"{who}.key", "-out", f"{who}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{who}.ext",
                 "-out", f"{who}.crt", cwd=folder)  # fmt: skip
    # A second CA that signed nothing here: a client trusting it must refuse the server.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=another-ca", "-keyout", "other.key", "-out", "other.crt",
             cwd=folder)  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


class TlsRedis(RedisServer):
    """redis-server with TLS only (no plain port), asking clients for a
    certificate signed by the test CA."""

    def __init__(self, certs: dict[str, Path]) -> None:
        super().__init__()
        self.certs = certs
        self.url = f"rediss://127.0.0.1:{self.port}/0"

    def listen_args(self) -> list[str]:
        c = self.certs
        return ["--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(c["server_crt"]), "--tls-key-file", str(c["server_key"]),
                "--tls-ca-cert-file", str(c["ca_crt"]), "--tls-auth-clients", "yes"]  # fmt: skip


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}: .ci/run installs it")
    pytest.skip(what)


def tls_redis_or_skip(folder: Path) -> TlsRedis:
    """A started TLS server; skip when redis-server or openssl is missing or
    this redis-server build has no TLS (fail instead under CI)."""
    if shutil.which("redis-server") is None:
        _missing("redis-server is not installed")
    if shutil.which("openssl") is None:
        _missing("openssl is not installed (the TLS test makes its certificates with it)")
    server = TlsRedis(make_certs(folder))
    try:
        server.start()
    except RuntimeError as exc:
        _missing(f"this redis-server cannot serve TLS ({exc})")
    return server
