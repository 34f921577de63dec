"""The ``netsip`` command (netsip/cli/): arguments, listen, options, send, bench, workers.

Argument errors run ``main(argv)`` in-process (fast); ``netsip listen`` runs as
a subprocess (it serves until a signal) and the clients run in-process
against it. Output of a subprocess is read through ``select`` with a
deadline, so a hung process fails the test instead of hanging it. Perl's
Net::SIP (``tests/perl/netsip_peer.pl``) is the live peer of the interop
tests at the end, as client of ``netsip listen`` and as server of
``netsip options``/``bench``, over UDP, TCP and TLS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netsip import cli
from netsip.cli import listen as cli_listen
from netsip.cli._listen_sockets import set_rcvbuf
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Request, Response
from netsip.transaction import ClientTransaction, TransactionClient, contact_uri
from netsip.util import Addr
from tests.support import (
    LineReader,
    Listen,
    have_ipv6,
    netsip_command,
    python_env,
    require_perl_netsip,
    require_tls,
    start_perl_peer,
    summary_counts,
    write_certs,
)
from tests.support import run_cli as run

TIMEOUT = 20.0  # upper bound for any single wait


def start_listen(factory: list[Listen], tmp: Path, *args: str) -> Listen:
    proc = Listen(args, tmp)
    factory.append(proc)
    return proc


def _free_stream_port() -> tuple[socket.socket, int]:
    """A bound TCP socket that does not listen: connecting to its port is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# ------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "required: COMMAND"),
        (["frob"], "invalid choice"),
        (["options"], "required: uri"),
        (["options", "sip:bad host"], "cannot parse URI"),
        (["options", "http://example.com"], "unsupported URI scheme"),
        (["options", "sip:127.0.0.1:99999"], "invalid port"),
        (["options", "sip:127.0.0.1;transport=sctp"], "unsupported transport"),
        (["options", "sips:127.0.0.1", "-t", "udp"], "contradicts"),
        (["options", "sip:127.0.0.1", "-n", "x"], "not an integer"),
        (["options", "sip:127.0.0.1", "-i", "-1"], "not a valid time"),
        (["options", "sip:127.0.0.1", "--bind", "not-an-ip"], "--bind"),
        (["options", "sip:127.0.0.1", "-t", "tls", "--tls-ca", "/nonexistent/ca.pem"], "no such"),
        (["listen", "--listen", "foo:bar:baz"], "invalid --listen"),
        (["listen", "--listen", "udp:127.0.0.1:70000"], "invalid --listen"),
        (["listen", "--code", "180"], "200..699"),
        (["listen", "--workers", "0"], "at least 1"),
        (["listen", "--work-us", "-1"], "must not be negative"),
        (["listen", "--work-us", "1.5"], "not an integer"),
        (["listen", "--listen", "tls:127.0.0.1:0"], "needs --tls-cert"),
        (["listen", "--listen", "tls:127.0.0.1:0", "--tls-cert", "/nonexistent.pem"], "no such"),
        (["listen", "--tls-cert", "/nonexistent.pem"], "no such file"),
        (["send"], "missing"),
        (["send", "sip:127.0.0.1", "-H", "no colon"], "invalid --header"),
        (["send", "sip:127.0.0.1", "-m", "ACK"], "invalid --method"),
        (["send", "sip:127.0.0.1", "--body-file", "/nonexistent/body"], "cannot read"),
        (["send", "--file", "/nonexistent/msg.txt"], "cannot read"),
        (["bench", "sip:127.0.0.1", "-n", "5", "-d", "1"], "not allowed with"),
        (["bench", "sip:127.0.0.1", "-c", "0"], "at least 1"),
        (["bench", "sip:127.0.0.1", "-m", "BYE"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(argv, capsys)
    assert status == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("netsip") and "error: " in lines[0], err
    assert needle in lines[0], err
    assert "Traceback" not in err and out == ""


def test_bad_message_file_and_bad_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is no SIP message, a PEM file that is no certificate: exit 2, one line."""
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not SIP\n")
    status, _, err = run(["send", "--file", str(junk), "127.0.0.1:5060"], capsys)
    assert status == 2 and "not a SIP message" in err and len(err.splitlines()) == 1, err
    status, _, err = run(["listen", "--listen", "tls:127.0.0.1:0", "--tls-cert", str(junk)], capsys)
    assert status == 2 and "cannot load TLS" in err and len(err.splitlines()) == 1, err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["listen", "--help"], ["bench", "-h"], ["--version"]):
        status, out, _ = run(argv, capsys)
        assert status == 0 and out, argv
    status, out, _ = run(["options", "--help"], capsys)
    assert "--interval" in out and "--transport" in out


def test_port_in_use_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        status, _, err = run(["listen", "--listen", f"udp:127.0.0.1:{port}"], capsys)
    assert status == 2
    assert err.strip() == (
        f"netsip listen: error: cannot listen on udp:127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.parametrize("command", ["options", "send", "bench"])
def test_refused_destination_exits_1_with_errno_text(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sock, port = _free_stream_port()
    more = ["-i", "0"] if command == "options" else []
    with sock:
        status, out, err = run([command, f"sip:127.0.0.1:{port}", "-t", "tcp", *more], capsys)
    assert status == 1, (out, err)
    assert "Connection refused" in out + err
    assert "Traceback" not in err
    if command != "options":
        assert err.strip() == (
            f"netsip {command}: error: sip:127.0.0.1:{port}: Connection refused"
        ), err


def test_udp_without_answer_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        port = quiet.getsockname()[1]
        status, out, _ = run(
            ["options", f"sip:127.0.0.1:{port}", "-n", "1", "--timeout", "0.2"], capsys
        )
    assert status == 1
    assert "seq=1: timeout" in out and "100% loss" in out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("udp:127.0.0.1:5070", [("udp", "127.0.0.1", 5070)]),
        ("tcp:[::1]:5060", [("tcp", "::1", 5060)]),
        ("TLS:127.0.0.1", [("tls", "127.0.0.1", 5061)]),
        ("127.0.0.1:0", [("udp", "127.0.0.1", 0), ("tcp", "127.0.0.1", 0)]),
        ("::1", [("udp", "::1", 5060), ("tcp", "::1", 5060)]),
        ("udp:0.0.0.0:5080", [("udp", "0.0.0.0", 5080)]),
    ],
)
def test_parse_listen_spec(spec: str, expected: list[tuple[str, str, int]]) -> None:
    assert [(s.proto, s.addr, s.port) for s in cli.parse_listen_spec(spec)] == expected


def test_open_listen_sockets_share_port_0() -> None:
    """udp+tcp with port 0 share one port (RFC 3261 18.1); workers get SO_REUSEPORT twins."""
    specs = cli.parse_listen_spec("127.0.0.1:0")
    sets = cli.open_listen_sockets(specs, workers=2)
    try:
        assert len(sets) == 2
        ports = {spec.port for bound in sets for spec, _ in bound}
        assert len(ports) == 1 and 0 not in ports
        for bound in sets:
            for spec, sock in bound:
                assert sock.getsockname()[1] == spec.port
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        for bound in sets:
            for _, sock in bound:
                sock.close()


def test_percentile() -> None:
    values = [float(x) for x in range(1, 101)]
    assert cli.percentile(values, 50) == 50.0
    assert cli.percentile(values, 99) == 99.0
    assert cli.percentile(values, 100) == 100.0
    assert cli.percentile([3.0], 95) == 3.0
    assert cli.percentile([], 50) == 0.0


# ------------------------------------------------- listen + the clients


def test_send_invite_no_bye_leaves_the_call_up(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``send -m INVITE --no-bye`` ACKs the 2xx and sends no BYE."""
    srv = start_listen(listen_factory, tmp_path, "--listen", "tcp:127.0.0.1:0")
    port = srv.addresses(1)["tcp"].port
    uri = f"sip:bob@127.0.0.1:{port};transport=tcp"
    status, out, _ = run(["send", uri, "-m", "INVITE", "--no-bye"], capsys)
    assert status == 0, out
    assert re.search(r"^>>> ACK sip:bob@127\.0\.0\.1:\d+;transport=tcp$", out, re.M), out
    assert ">>> BYE" not in out
    stdout = srv.stop()
    assert summary_counts(stdout) == {"INVITE": 1, "ACK": 1}


def test_listen_options_send_bench(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clients against ``netsip listen`` over UDP and TCP; one line per transaction."""
    srv = start_listen(listen_factory, tmp_path, "--listen", "127.0.0.1:0", "-v")
    addrs = srv.addresses(2)
    assert addrs["udp"].port == addrs["tcp"].port
    uri = f"sip:127.0.0.1:{addrs['udp'].port}"

    for proto in ("udp", "tcp"):
        status, out, _ = run(["options", uri, "-t", proto, "-n", "3", "-i", "0.01"], capsys)
        assert status == 0, out
        rtts = re.findall(rf"^200 OK from {proto}:\S+: seq=(\d) time=([\d.]+) ms$", out, re.M)
        assert [seq for seq, _ in rtts] == ["1", "2", "3"], out
        assert "3 requests sent, 3 responses received, 3 ok, 0% loss" in out
        assert re.search(r"^rtt min/avg/max = [\d.]+/[\d.]+/[\d.]+ ms$", out, re.M), out

    # a call: INVITE, ACK, then BYE within the dialog
    status, out, _ = run(["send", uri, "-m", "INVITE", "-H", "Subject: cli test"], capsys)
    assert status == 0, out
    finals = re.findall(r"^<<< 200 OK from udp:127\.0\.0\.1:\d+ \([\d.]+ ms\)$", out, re.M)
    assert len(finals) == 2, out
    assert "\nCSeq: 1 INVITE" in out and "\nCSeq: 2 BYE" in out
    assert re.search(r"^>>> ACK sip:\S+$", out, re.M) and re.search(r"^>>> BYE sip:\S+$", out, re.M)

    status, out, _ = run(["bench", uri, "-t", "tcp", "-n", "200", "-c", "8", "--json"], capsys)
    assert status == 0, out
    res = json.loads(out)
    assert res["completed"] == 200 and res["failed"] == 0 and res["transport"] == "tcp"
    lat = res["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert res["tx_per_s"] > 0

    status, out, _ = run(["bench", uri, "-m", "INVITE", "-d", "0.3", "-c", "4"], capsys)
    assert status == 0, out
    m = re.match(r"(\d+) calls in [\d.]+ s: [\d.]+/s, 0 failed \(udp, concurrency 4\)", out)
    assert m is not None and int(m.group(1)) > 0, out
    assert re.search(r"^latency ms: p50 [\d.]+ {2}p95 [\d.]+ {2}p99 [\d.]+", out, re.M), out
    calls = int(m.group(1))

    stdout = srv.stop()
    assert srv.returncode == 0
    lines = stdout.splitlines()
    tx = [line.split(" ") for line in lines if not line.startswith(("---", "answered"))]
    assert all(len(f) == 6 for f in tx), tx[:3]
    for stamp, proto, peer, method, callid, status_ in tx:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", stamp)
        assert proto in ("udp", "tcp") and Addr.parse(peer).addr == "127.0.0.1"
        assert status_ == ("-" if method == "ACK" else "200") and callid
    counts = summary_counts(stdout)
    # 6 pings + 200 bench; send's call; the calls of bench -m INVITE
    assert counts == {"OPTIONS": 206, "INVITE": 1 + calls, "ACK": 1 + calls, "BYE": 1 + calls}
    assert len(tx) == sum(counts.values())
    assert "requests in" in lines[-2] and "answered" in lines[-1]
    assert any("sockets open after closing: 0" in line for line in srv.err.lines), srv.err.lines


def test_listen_code_and_send_raw_file(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--code/--reason; send --file with a raw request (LF line ends) and a raw response."""
    srv = start_listen(
        listen_factory, tmp_path, "-l", "tcp:127.0.0.1:0", "--code", "486", "--reason", "Busy"
    )
    port = srv.addresses(1)["tcp"].port
    msg = tmp_path / "invite.txt"
    msg.write_text(
        f"INVITE sip:bob@127.0.0.1:{port};transport=tcp SIP/2.0\n"
        "From: <sip:alice@example.org>;tag=a1\n"
        "To: <sip:bob@example.org>\n"
        "Call-ID: raw-file-1\n"
        "CSeq: 7 INVITE\n"
        "Max-Forwards: 70\n"
        "Content-Type: application/sdp\n"
        "\n"
        "v=0\n"
    )
    status, out, _ = run(["send", "--file", str(msg)], capsys)
    assert status == 1, out  # a 486 is no success
    assert "<<< 486 Busy from tcp:127.0.0.1:" in out and "Call-ID: raw-file-1" in out

    body = tmp_path / "body.txt"
    body.write_bytes(b"hello")
    status, out, _ = run(
        [
            "send",
            f"sip:127.0.0.1:{port}",
            "-t",
            "tcp",
            "-m",
            "MESSAGE",
            "--body-file",
            str(body),
            "--content-type",
            "text/plain",
        ],
        capsys,
    )
    assert status == 1 and "486 Busy" in out

    resp = tmp_path / "response.txt"
    resp.write_text(
        "SIP/2.0 200 OK\nCall-ID: x\nCSeq: 1 OPTIONS\nFrom: <sip:a@b>;tag=1\n"
        "To: <sip:c@d>\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKx\n\n"
    )
    status, out, _ = run(["send", "--file", str(resp), f"127.0.0.1:{port}", "-t", "tcp"], capsys)
    assert status == 0 and out.startswith("sent 200 OK to tcp:127.0.0.1:"), out

    stdout = srv.stop()
    assert srv.returncode == 0
    assert re.search(r" tcp 127\.0\.0\.1:\d+ INVITE raw-file-1 486$", stdout, re.M), stdout
    assert re.search(r" tcp 127\.0\.0\.1:\d+ ACK raw-file-1 -$", stdout, re.M), stdout
    assert "answered 2 with 486 Busy" in stdout  # INVITE, MESSAGE; the response is no request


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_listen_ipv6(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = start_listen(listen_factory, tmp_path, "--listen", "tcp:[::1]:0", "-l", "udp:[::1]:0")
    addrs = srv.addresses(2)
    for proto in ("tcp", "udp"):
        status, out, _ = run(
            ["options", f"sip:[::1]:{addrs[proto].port}", "-t", proto, "-n", "1"], capsys
        )
        assert status == 0, out
        assert f"200 OK from {proto}:[::1]:{addrs[proto].port}" in out
    stdout = srv.stop()
    assert srv.returncode == 0 and summary_counts(stdout) == {"OPTIONS": 2}


def test_readme_run_command(listen_factory: list[Listen], tmp_path: Path) -> None:
    """`netsip listen` as the README says, pinged by `netsip options`, stopped by SIGTERM.

    Port 5060 is used when it is free, as in the README; otherwise the same
    command with ``--listen 127.0.0.1:0``. After exit 0 with a summary, the
    port must be free again: every socket was closed.
    """
    readme = True
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", 5060))
            except OSError:
                readme = False
    args = [] if readme else ["--listen", "127.0.0.1:0"]
    srv = start_listen(listen_factory, tmp_path, *args)
    addrs = srv.addresses(2)
    port = addrs["udp"].port
    assert port == 5060 or not readme
    uri = "sip:127.0.0.1" if port == 5060 else f"sip:127.0.0.1:{port}"
    ping = subprocess.run(
        [*netsip_command(), "options", uri, "-n", "2", "-i", "0.05"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=python_env(),
        check=False,
    )
    assert ping.returncode == 0, ping
    assert "2 responses received" in ping.stdout and ping.stderr == ""

    # the open sockets of the running listener: udp, tcp and the signal socketpair
    fds = os.listdir(f"/proc/{srv.proc.pid}/fd")
    links = [os.readlink(f"/proc/{srv.proc.pid}/fd/{fd}") for fd in fds]
    assert sum(link.startswith("socket:") for link in links) == 4, links

    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"OPTIONS": 2}
    assert "--- netsip listen: 2 requests in" in stdout
    assert not any("Traceback" in line for line in srv.err.lines)
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # free again


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_listen_idle_stops_on_signal(
    sig: signal.Signals, listen_factory: list[Listen], tmp_path: Path
) -> None:
    srv = start_listen(listen_factory, tmp_path, "-l", "udp:127.0.0.1:0")
    srv.addresses(1)
    stdout = srv.stop(sig)
    assert srv.returncode == 0
    assert stdout.startswith("--- netsip listen: 0 requests in"), stdout


def test_listen_workers(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--workers 2: two processes with SO_REUSEPORT sockets answer; the parent keeps none."""
    srv = start_listen(listen_factory, tmp_path, "--listen", "127.0.0.1:0", "--workers", "2")
    addrs = srv.addresses(2)
    srv.err.wait_for(r"2 workers")
    uri = f"sip:127.0.0.1:{addrs['udp'].port}"
    # separate UDP flows (one source port each): the kernel hashes them over both workers
    flows = 16
    for _ in range(flows):
        status, out, _ = run(["options", uri, "-n", "1"], capsys)
        assert status == 0, out
    status, out, _ = run(["bench", uri, "-t", "tcp", "-n", "50", "--json"], capsys)
    assert status == 0 and json.loads(out)["failed"] == 0, out

    parent = srv.proc.pid
    links = [os.readlink(f"/proc/{parent}/fd/{fd}") for fd in os.listdir(f"/proc/{parent}/fd")]
    assert not any(link.startswith("socket:") for link in links), links

    stdout = srv.stop()
    assert srv.returncode == 0, srv.err.lines
    assert summary_counts(stdout) == {"OPTIONS": flows + 50}
    m = re.search(r"^workers: 2 of 2 ok; requests per worker: #1 (\d+), #2 (\d+)$", stdout, re.M)
    assert m is not None, stdout
    per = [int(m.group(1)), int(m.group(2))]
    assert sum(per) == flows + 50 and min(per) > 0, per


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_burn_cpu_spends_at_least_the_cpu_time() -> None:
    """``--work-us`` burns CPU time (not wall time): at least what was asked."""
    before = time.thread_time_ns()
    cli_listen._burn_cpu(3_000_000)
    assert time.thread_time_ns() - before >= 3_000_000


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_listen_work_us_with_workers(
    listen_factory: list[Listen], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--work-us: every worker still answers everything, and burns CPU per request."""
    work_us, per_proto = 2000, 25
    srv = start_listen(
        listen_factory, tmp_path, "-l", "127.0.0.1:0", "-w", "2", "--work-us", str(work_us),
        "--summary-only",
    )  # fmt: skip
    addrs = srv.addresses(2)
    srv.err.wait_for(r"2 workers")
    parent = srv.proc.pid
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        workers = [int(pid) for pid in f.read().split()]
    assert len(workers) == 2, workers
    cpu0 = sum(_cpu_seconds(pid) for pid in workers)
    uri = f"sip:127.0.0.1:{addrs['udp'].port}"
    for proto in ("udp", "tcp"):
        status, out, _ = run(
            ["bench", uri, "-t", proto, "-n", str(per_proto), "-c", "4", "--json"], capsys
        )
        assert status == 0, out
        res = json.loads(out)
        assert res["completed"] == per_proto and res["failed"] == 0, res
    cpu = sum(_cpu_seconds(pid) for pid in workers) - cpu0
    # a lower bound only, halved for tick-based accounting: no timing target
    assert cpu >= 0.5 * 2 * per_proto * work_us / 1e6, cpu

    stdout = srv.stop()
    assert srv.returncode == 0, srv.err.lines
    assert summary_counts(stdout) == {"OPTIONS": 2 * per_proto}
    assert "answered 50 with 200 OK, 0 failed to send" in stdout, stdout
    assert re.search(r"^workers: 2 of 2 ok; requests per worker: #1 \d+, #2 \d+$", stdout, re.M)


# ------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/::1/localhost and a client certificate."""
    return write_certs(tmp_path_factory.mktemp("certs"))


def test_tls_listen_options_bench_send(
    certs: dict[str, Path],
    listen_factory: list[Listen],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TLS with a separate key file; a client that does not trust the CA fails cleanly."""
    require_tls(certs)
    srv = start_listen(
        listen_factory,
        tmp_path,
        "-l",
        "tls:127.0.0.1:0",
        "--tls-cert",
        str(certs["server_cert"]),
        "--tls-key",
        str(certs["server_key"]),
    )
    port = srv.addresses(1)["tls"].port
    ca = ["--tls-ca", str(certs["ca"])]
    status, out, _ = run(["options", f"sips:127.0.0.1:{port}", *ca, "-n", "2", "-i", "0"], capsys)
    assert status == 0 and out.count("200 OK from tls:127.0.0.1:") == 2, out
    status, out, _ = run(
        ["bench", f"sip:127.0.0.1:{port}", "-t", "tls", *ca, "-m", "INVITE", "-n", "50", "--json"],
        capsys,
    )
    assert status == 0 and json.loads(out)["completed"] == 50, out
    status, out, _ = run(["send", f"sips:127.0.0.1:{port}", *ca, "-m", "INFO"], capsys)
    assert status == 0 and "<<< 200 OK from tls:" in out, out
    # without the CA the server is not trusted: a clean failure, exit 1
    status, out, err = run(["send", f"sips:127.0.0.1:{port}"], capsys)
    assert status == 1 and "Traceback" not in err and "error: sips:127.0.0.1" in err, err

    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"OPTIONS": 2, "INVITE": 50, "ACK": 50, "BYE": 50, "INFO": 1}


def test_tls_default_legs_with_certificate(
    certs: dict[str, Path], listen_factory: list[Listen], tmp_path: Path
) -> None:
    """Without --listen but with --tls-cert: udp+tcp on 5060 and tls on 5061 (if free)."""
    require_tls(certs)
    for port, kind in (
        (5060, socket.SOCK_DGRAM),
        (5060, socket.SOCK_STREAM),
        (5061, socket.SOCK_STREAM),
    ):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"127.0.0.1:{port} is in use")
    srv = start_listen(listen_factory, tmp_path, "--tls-cert", str(certs["server"]))
    addrs = srv.addresses(3)
    assert (addrs["udp"].port, addrs["tcp"].port, addrs["tls"].port) == (5060, 5060, 5061)
    srv.stop()
    assert srv.returncode == 0


# ------------------------------------------------- Perl's Net::SIP (interop)


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"Perl peer hung: {out!r} {err!r}") from None
    return proc.returncode, out.decode(), err.decode()


PROTO_PARAMS = ["udp", "tcp", pytest.param("tls", id="tls")]


@pytest.mark.interop
@pytest.mark.parametrize("proto", PROTO_PARAMS)
def test_perl_client_against_netsip_listen(
    proto: str, certs: dict[str, Path], listen_factory: list[Listen], tmp_path: Path
) -> None:
    """Net::SIP's Leg+Dispatcher sends OPTIONS to `netsip listen`; every one gets a 200."""
    perl = require_perl_netsip(tls=proto == "tls")
    tls_args: list[str] = []
    perl_tls: list[str] = []
    if proto == "tls":
        require_tls(certs)
        tls_args = ["--tls-cert", str(certs["server"])]
        perl_tls = ["--ca", str(certs["ca"])]
    srv = start_listen(listen_factory, tmp_path, "-l", f"{proto}:127.0.0.1:0", *tls_args)
    port = srv.addresses(1)[proto].port
    client = start_perl_peer(
        "--mode", "client", "--proto", proto, "--to", f"127.0.0.1:{port}",
        "--count", "5", *perl_tls, perl=perl, stderr=subprocess.PIPE,
    )  # fmt: skip
    rc, out, err = _finish(client)
    assert rc == 0, (out, err)
    assert "DONE ok=5 failed=0" in out
    stdout = srv.stop()
    assert srv.returncode == 0
    assert summary_counts(stdout) == {"OPTIONS": 5}
    assert len(re.findall(rf" {proto} 127\.0\.0\.1:\d+ OPTIONS perl-\S+ 200$", stdout, re.M)) == 5


@pytest.mark.interop
@pytest.mark.parametrize("proto", PROTO_PARAMS)
def test_netsip_clients_against_perl_server(
    proto: str, certs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`netsip options` and `netsip bench` against a Net::SIP server."""
    perl = require_perl_netsip(tls=proto == "tls")
    perl_tls: list[str] = []
    our_tls: list[str] = []
    if proto == "tls":
        require_tls(certs)
        perl_tls = ["--cert", str(certs["server"])]
        our_tls = ["--tls-ca", str(certs["ca"])]
    bench = 40
    peer = start_perl_peer(
        "--mode", "server", "--proto", proto, "--listen", "127.0.0.1:0",
        "--count", str(3 + bench), "--timeout", str(TIMEOUT), *perl_tls,
        perl=perl, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert peer.stdout is not None
        reader = LineReader(peer.stdout.fileno())
        m = reader.wait_for(r"^LISTENING (\S+) (\d+)$")[0]
        uri = f"sip:{m.group(1)}:{m.group(2)}"
        status, out, _ = run(["options", uri, "-t", proto, *our_tls, "-n", "3", "-i", "0"], capsys)
        assert status == 0 and "3 responses received, 3 ok" in out, out
        status, out, _ = run(
            ["bench", uri, "-t", proto, *our_tls, "-n", str(bench), "-c", "4", "--json"], capsys
        )
        assert status == 0, out
        res = json.loads(out)
        assert res["completed"] == bench and res["failed"] == 0
        assert peer.wait(timeout=TIMEOUT) == 0
        reader.drain()
        assert len([x for x in reader.lines if x.startswith("REQUEST OPTIONS")]) == 3 + bench
        assert f"DONE answered={3 + bench}" in reader.lines
    finally:
        if peer.poll() is None:
            peer.kill()
        peer.communicate(timeout=TIMEOUT)


def test_module_entry_point() -> None:
    """``python -m netsip`` is the same command."""
    res = subprocess.run(
        [sys.executable, "-m", "netsip", "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 0 and res.stdout.startswith("netsip "), res


def test_contact_uri_of_2xx() -> None:
    """The ACK of a 2xx and the BYE go to the response's Contact (RFC 3261 12.1.2, 13.2.2.4)."""
    req = Request(
        "INVITE",
        "sip:b@127.0.0.1",
        {"Call-ID": "c", "CSeq": "1 INVITE", "From": "<sip:a@x>;tag=1", "To": "<sip:b@y>"},
    )
    for contact, uri in [
        ("<sip:b@10.0.0.9:5070;transport=tcp>;expires=60", "sip:b@10.0.0.9:5070;transport=tcp"),
        ("sip:b@10.0.0.9;lr", "sip:b@10.0.0.9"),
    ]:
        resp = req.create_response(200, headers={"Contact": contact})
        assert contact_uri(resp) == uri
    assert contact_uri(req.create_response(200)) is None


# ------------------------------------------- listen: SDP answers and dialogs

_OFFER = (
    "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=video 5002 RTP/AVP 31\r\n"
    "m=audio 5000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    "m=audio 5004 RTP/AVP 0\r\n"
)


def _invite(callid: str, body: str = "", ctype: str = "application/sdp") -> Request:
    headers = {
        "from": "<sip:a@127.0.0.1>;tag=a1",
        "to": "<sip:b@127.0.0.1>",
        "call-id": callid,
        "cseq": "1 INVITE",
        "max-forwards": "70",
    }
    if body:
        headers["content-type"] = ctype
    return Request("INVITE", "sip:b@127.0.0.1", headers, body)


def _exchange(loop: EventLoop, dst: Addr, request: Request) -> Response:
    """Send ``request`` through a Leg + TransactionClient and return the final response."""
    leg = Leg(addr="127.0.0.1", port=0)
    disp = Dispatcher([leg], loop)
    tc = TransactionClient(disp, timeout=10)
    try:
        got: list[ClientTransaction] = []
        tc.send(request, got.append, leg=leg, dst_addr=dst)
        loop.loop(15, lambda: bool(got))
        assert got and got[0].response is not None, got
        return got[0].response
    finally:
        tc.close()
        disp.close()


def test_listen_answers_an_sdp_offer(listen_factory: list[Listen], tmp_path: Path) -> None:
    """A 2xx to an offer carries the answer (RFC 3264 6); other streams get port 0."""
    srv = start_listen(listen_factory, tmp_path, "--listen", "udp:127.0.0.1:0")
    dst = srv.addresses(1)["udp"]
    with EventLoop() as loop:
        ok = _exchange(loop, dst, _invite("sdp-1", _OFFER))
        assert ok.code() == 200
        assert ok.get_header("content-type") == "application/sdp"
        answer = ok.body().decode()
        mlines = [line for line in answer.splitlines() if line.startswith("m=")]
        assert mlines[0] == "m=video 0 RTP/AVP 31"  # rejected
        m = re.fullmatch(r"m=audio (\d+) RTP/AVP 8", mlines[1])
        assert m is not None and int(m.group(1)) > 0, answer
        assert mlines[2] == "m=audio 0 RTP/AVP 0"  # one audio stream is enough
        assert "a=recvonly" in answer and "c=IN IP4 127.0.0.1" in answer
        # the media port takes what the offerer would send, silently
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
            rtp.sendto(b"\x80" + bytes(171), ("127.0.0.1", int(m.group(1))))

        # a dynamic codec keeps its rtpmap
        opus = _OFFER.replace("m=video 5002 RTP/AVP 31\r\n", "").replace(
            "RTP/AVP 8 0 101\r\n", "RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n", 1
        )
        answer = _exchange(loop, dst, _invite("sdp-2", opus)).body().decode()
        want = r"^m=audio [1-9]\d* RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r$"
        assert re.search(want, answer, re.M), answer

        # nothing acceptable (SRTP only): 488; a body that is no SDP: 415
        srtp = _OFFER.replace("RTP/AVP", "RTP/SAVP")
        assert _exchange(loop, dst, _invite("sdp-3", srtp)).code() == 488
        bad = _exchange(loop, dst, _invite("sdp-4", "hello", "text/plain"))
        assert (bad.code(), bad.get_header("accept")) == (415, "application/sdp")

        # no offer: the 200 carries one (RFC 3261 13.3.1)
        offer = _exchange(loop, dst, _invite("sdp-5"))
        assert offer.code() == 200
        assert re.search(r"^m=audio [1-9]\d* RTP/AVP 0 8\r$", offer.body().decode(), re.M)
    stdout = srv.stop()
    assert "other answers: 415 x 1, 488 x 1" in stdout, stdout


def test_listen_answers_requests_of_unknown_dialogs_with_481(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    """RFC 3261 12.2.2: BYE/INFO for no call get 481; a BYE of a real call 200."""
    srv = start_listen(listen_factory, tmp_path, "--listen", "udp:127.0.0.1:0")
    dst = srv.addresses(1)["udp"]

    cseq = iter(range(2, 100))

    def in_dialog(method: str, callid: str, to: str = "<sip:b@127.0.0.1>;tag=x") -> Request:
        return Request(
            method,
            "sip:b@127.0.0.1",
            {
                "from": "<sip:a@127.0.0.1>;tag=a1",
                "to": to,
                "call-id": callid,
                "cseq": f"{next(cseq)} {method}",  # a new transaction each
            },
        )

    with EventLoop() as loop:
        assert _exchange(loop, dst, in_dialog("BYE", "nocall")).code() == 481
        assert _exchange(loop, dst, in_dialog("INFO", "nocall")).code() == 481
        assert _exchange(loop, dst, in_dialog("BYE", "nocall", "<sip:b@127.0.0.1>")).code() == 481
        # outside any dialog, INFO and OPTIONS are answered as usual
        assert _exchange(loop, dst, in_dialog("INFO", "c2", "<sip:b@127.0.0.1>")).code() == 200
        ok = _exchange(loop, dst, _invite("call-1", _OFFER))
        assert ok.code() == 200
        to = ok.get_header("to")
        assert to is not None
        assert _exchange(loop, dst, in_dialog("BYE", "call-1", to)).code() == 200
        # the call is over: its BYE again gets 481
        assert _exchange(loop, dst, in_dialog("BYE", "call-1", to)).code() == 481
    stdout = srv.stop()
    assert "other answers: 481 x 4" in stdout, stdout


def test_listen_keeps_answering_when_nobody_reads_its_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Output never blocks the loop: lines stdout does not take are dropped and counted."""
    proc = subprocess.Popen(
        [*netsip_command(), "listen", "--listen", "udp:127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # never read while it serves: fills after ~64 KiB
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    err = LineReader(proc.stderr.fileno())
    try:
        port = Addr.parse(err.wait_for(r"listening on udp:(\S+)$")[0].group(1)).port
        # ~100 bytes a line: more than the pipe's buffer and the 1 MiB kept waiting
        n = 12_000
        status, out, _ = run(["bench", f"sip:127.0.0.1:{port}", "-n", str(n), "--json"], capsys)
        assert status == 0, out
        res = json.loads(out)
        assert (res["completed"], res["failed"]) == (n, 0), res
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        err.drain()
        dropped = [line for line in err.lines if "stdout did not take" in line]
        assert dropped, err.lines
        stdout = proc.stdout.read().decode()
        assert 0 < stdout.count(" OPTIONS ") < n  # what the pipe held, no more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


def test_set_rcvbuf_grants_at_least_what_the_system_allows() -> None:
    halve = 2 if sys.platform.startswith("linux") else 1  # Linux reports double
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        before = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // halve
        got = set_rcvbuf(s, 4 * before)
        assert got == s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // halve
        rmem_max = Path("/proc/sys/net/core/rmem_max")
        if os.geteuid() == 0 or (rmem_max.exists() and int(rmem_max.read_text()) >= 4 * before):
            assert got >= 4 * before  # root forces it past rmem_max (SO_RCVBUFFORCE)
        else:
            assert got >= before


def test_listen_rcvbuf_option(listen_factory: list[Listen], tmp_path: Path) -> None:
    srv = start_listen(
        listen_factory, tmp_path, "--listen", "udp:127.0.0.1:0", "--rcvbuf", "1048576", "-v"
    )
    srv.addresses(1)
    srv.stop()
    assert srv.returncode == 0
    assert any("receive buffer" in line and "udp:127.0.0.1:" in line for line in srv.err.lines), (
        srv.err.lines
    )


def test_listen_on_a_wildcard_address_answers_with_a_real_one(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    """Listening on 0.0.0.0, the SDP names the address the peer reached (not 0.0.0.0,
    which old SDP reads as "on hold")."""
    srv = start_listen(listen_factory, tmp_path, "--listen", "udp:0.0.0.0:0")
    port = srv.addresses(1)["udp"].port
    with EventLoop() as loop:
        ok = _exchange(loop, Addr("127.0.0.1", port, socket.AF_INET), _invite("wild", _OFFER))
    assert ok.code() == 200
    assert "c=IN IP4 127.0.0.1\r\n" in ok.body().decode()
    srv.stop()
