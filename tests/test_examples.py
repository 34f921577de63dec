"""The example programs in ``examples/`` run and do what their docs say.

``examples/responder.py`` runs as a subprocess on a port the system picks
(``--port 0``; it logs the bound address), is asked over UDP and TCP with plain
sockets, and must exit 0 on SIGTERM. Output is read through ``select`` with a
deadline, so a hung responder fails the test instead of hanging it.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest

from netsip.packet import Packet, Response
from tests.support import ROOT, LineReader, python_env

RESPONDER = ROOT / "examples" / "responder.py"
TIMEOUT = 20.0  # generous upper bound for any single wait


def stderr_reader(proc: subprocess.Popen[bytes]) -> LineReader:
    """A deadline-bounded line reader over ``proc``'s stderr."""
    assert proc.stderr is not None
    return LineReader(proc.stderr.fileno(), TIMEOUT)


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(RESPONDER), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=python_env(),
    )


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=TIMEOUT)
    assert proc.stderr is not None
    proc.stderr.close()


def _request(method: str, proto: str, local: tuple[str, int], callid: str, seq: int = 1) -> bytes:
    laddr = f"{local[0]}:{local[1]}"
    return (
        f"{method} sip:responder@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto.upper()} {laddr};branch=z9hG4bK{callid}{seq}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:test@{laddr}>;tag=t{seq}\r\n"
        "To: <sip:responder@127.0.0.1>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {seq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _recv_tcp_message(sock: socket.socket) -> bytes:
    """One SIP message from a blocking stream socket (Content-Length framed)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
    assert m is not None, head
    while len(body) < int(m.group(1)):
        chunk = sock.recv(4096)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


def _check_200(data: bytes, callid: str, cseq: str) -> None:
    resp = Packet.new_from_string(data)
    assert isinstance(resp, Response)
    assert resp.code() == 200
    assert resp.callid() == callid
    assert resp.cseq() == cseq


def test_responder_udp_and_tcp() -> None:
    """OPTIONS over UDP and TCP get a 200 each; ACK gets none; SIGTERM exits 0."""
    proc = _start("--addr", "127.0.0.1", "--port", "0", "--proto", "both")
    try:
        err = stderr_reader(proc)
        listening = {
            m.group(1): int(m.group(2))
            for m in err.wait_for(r"listening (udp|tcp) 127\.0\.0\.1:(\d+)", 2)
        }
        assert listening["udp"] == listening["tcp"]  # one port for both (RFC 3261 18.1)
        dst = ("127.0.0.1", listening["udp"])

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as us:
            us.settimeout(TIMEOUT)
            us.bind(("127.0.0.1", 0))
            # an ACK first: it must not be answered, so the first datagram
            # back is the response to the OPTIONS
            us.sendto(_request("ACK", "udp", us.getsockname(), "ack-udp"), dst)
            us.sendto(_request("OPTIONS", "udp", us.getsockname(), "opt-udp"), dst)
            data, src = us.recvfrom(65536)
            assert src == dst
            _check_200(data, "opt-udp", "1 OPTIONS")

        with socket.create_connection(dst, timeout=TIMEOUT) as ts:
            ts.sendall(_request("OPTIONS", "tcp", ts.getsockname(), "opt-tcp", 7))
            _check_200(_recv_tcp_message(ts), "opt-tcp", "7 OPTIONS")

        logged = err.wait_for(r" (udp|tcp) 127\.0\.0\.1:\d+ (\w+) (\S+) (\S+)$", 3)
        assert sorted(m.group(1, 2, 3, 4) for m in logged) == [
            ("tcp", "OPTIONS", "opt-tcp", "200"),
            ("udp", "ACK", "ack-udp", "-"),
            ("udp", "OPTIONS", "opt-udp", "200"),
        ]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        err.drain()
        assert any("stopped by SIGTERM" in line for line in err.lines), err.lines
        assert not any("Traceback" in line for line in err.lines), err.lines
    finally:
        _reap(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_responder_stops_on_signal_while_idle(sig: signal.Signals) -> None:
    """A signal wakes the idle loop at once (no traffic needed) and exits 0."""
    proc = _start("--port", "0", "--proto", "tcp")
    try:
        err = stderr_reader(proc)
        err.wait_for(r"listening tcp 127\.0\.0\.1:\d+")
        proc.send_signal(sig)
        assert proc.wait(timeout=TIMEOUT) == 0
        err.drain()
        assert any(f"stopped by {sig.name}" in line for line in err.lines), err.lines
    finally:
        _reap(proc)


def test_responder_port_in_use_fails() -> None:
    """A port that cannot be bound is an error message and exit status 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = _start("--port", str(port), "--proto", "tcp")
        try:
            assert proc.wait(timeout=TIMEOUT) == 1
            err = stderr_reader(proc)
            err.drain()
            assert any("cannot listen" in line for line in err.lines), err.lines
        finally:
            _reap(proc)
