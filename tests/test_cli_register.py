"""``netsip register`` (netsip/cli/register.py) against live registrars.

- Kamailio (``tests/kamailio/registrar_auth.cfg``: 401 digest challenge,
  bindings in memory) over UDP and TCP, MD5 and SHA-256 with ``qop=auth``:
  two bindings registered with ``--contact`` are both listed in the 2xx,
  ``--unregister --contact`` removes one, ``--unregister`` (``Contact: *``)
  removes the rest; a wrong password is exit 1 with the 401, another user's
  address of record exit 1 with Kamailio's 403.
- Perl's Net::SIP::Registrar behind Net::SIP::Authorize
  (``tests/perl/endpoint_peer.pl --mode registrar``): the right password is
  exit 0 with the expiry granted, a wrong one exit 1 with the 401, and Perl
  got exactly two REGISTERs each time (no retry loop).
- A registrar that does not answer (a closed UDP port: timeout; a closed TCP
  port: refused) is exit 1; bad arguments are exit 2 with one line on stderr.

The command runs in-process (``main(argv)``); every wait is bounded by its
``--timeout`` or the subprocess timeouts. Live peers that are missing skip
the tests unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    AuthKamailio,
    LineReader,
    netsip_command,
    python_env,
    require_kamailio,
    run_cli,
    start_endpoint_peer,
    stop_process,
)

PERL_TIMEOUT = 15.0  # the Perl registrar's own bound (seconds)
ALICE = ("alice", "alice-secret")  # registrar_auth.cfg's users
BOB = ("bob", "bob-secret")


def register(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return run_cli(["register", "--timeout", "10", *argv], capsys)


def bindings(out: str) -> list[str]:
    """The URIs of the ``binding`` lines."""
    return re.findall(r"^binding <([^>]+)>", out, re.M)


def granted(out: str) -> int:
    m = re.search(r"^registered: expires (\d+)$", out, re.M)
    assert m is not None, out
    return int(m.group(1))


def fail_line(err: str) -> str:
    """The one line on stderr of an exit 1."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("netsip register: error: REGISTER "), err
    return lines[0]


# ------------------------------------------------------------------ Kamailio


@pytest.fixture
def kamailio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthKamailio]:
    """Kamailio's registrar; ``indirect`` parameters are its ``-A`` defines."""
    require_kamailio()
    kam = AuthKamailio(tmp_path, *getattr(request, "param", ()))
    try:
        yield kam
    finally:
        kam.close()


@pytest.mark.interop
@pytest.mark.parametrize(
    "kamailio",
    [pytest.param((), id="md5"), pytest.param(("SHA256", "QOP"), id="sha256-qop")],
    indirect=True,
)
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_register_and_unregister_at_kamailio(
    kamailio: AuthKamailio, proto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registrar = kamailio.uri(proto)
    cred = ["--user", ALICE[0], "--password", ALICE[1]]
    one, two = "sip:alice@127.0.0.1:7001", "sip:alice@127.0.0.1:7002"

    status, out, err = register(capsys, registrar, *cred, "--contact", one, "--expires", "600")
    assert status == 0, (out, err)
    assert err == ""
    assert "<<< 401 " in out and "<<< 200 OK" in out, out
    assert granted(out) == 600
    assert bindings(out) == [one]
    assert f"to {proto}:127.0.0.1:{kamailio.port}" in out

    # a second binding; more than the registrar's max_expires is cut to it
    status, out, err = register(capsys, registrar, *cred, "--contact", two, "--expires", "7200")
    assert status == 0, (out, err)
    assert granted(out) == 3600
    assert sorted(bindings(out)) == [one, two]

    status, out, err = register(capsys, registrar, *cred, "--contact", one, "--unregister")
    assert status == 0, (out, err)
    assert out.splitlines()[-1] == "unregistered"
    assert bindings(out) == [two]

    # Contact: * removes the rest; a binding of the command's own leg is left
    status, out, err = register(capsys, registrar, *cred, "--unregister")
    assert status == 0, (out, err)
    assert "contact * (unregister)" in out
    assert bindings(out) == []
    status, out, err = register(capsys, registrar, *cred)
    assert status == 0, (out, err)
    (own,) = bindings(out)
    assert own.startswith("sip:alice@127.0.0.1:")
    assert own.endswith(";transport=tcp") == (proto == "tcp")


@pytest.mark.interop
@pytest.mark.parametrize(
    ("argv", "status_text"),
    [
        pytest.param(["--user", "alice", "--password", "wrong"], "401 ", id="wrong-password"),
        pytest.param(["--user", "alice"], "401 ", id="no-password"),
        pytest.param(
            ["--user", BOB[0], "--password", BOB[1], "--from", "sip:alice@127.0.0.1"],
            "403 Forbidden auth ID",
            id="another-users-aor",
        ),
    ],
)
def test_register_refused_by_kamailio_exits_1(
    kamailio: AuthKamailio, argv: list[str], status_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = register(capsys, kamailio.uri("udp"), *argv)
    assert status == 1, (out, err)
    line = fail_line(err)
    assert status_text in line, line
    assert "registered" not in out


# --------------------------------------------------------- Perl's registrar


@pytest.mark.interop
@pytest.mark.parametrize(
    ("password", "status"),
    [pytest.param("secret", 0, id="right-password"), pytest.param("wrong", 1, id="wrong")],
)
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_register_at_perl_registrar(
    proto: str, password: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    perl = start_endpoint_peer(
        "--mode", "registrar", "--proto", proto, "--timeout", str(PERL_TIMEOUT),
        "--user", "alice", "--password", "secret",
    )  # fmt: skip
    try:
        assert perl.stdout is not None
        lines = LineReader(perl.stdout.fileno(), timeout=PERL_TIMEOUT)
        (m,) = lines.wait_for(r"^LISTENING (\S+) (\d+)$")
        tail = ";transport=tcp" if proto == "tcp" else ""
        registrar = f"sip:{m.group(1)}:{m.group(2)}{tail}"
        rc, out, err = register(capsys, registrar, "--user", "alice", "--password", password)
        assert rc == status, (out, err)
        if status == 0:
            assert err == ""
            assert 0 < granted(out) <= 3600
            assert len(bindings(out)) == 1
        else:
            assert "401 " in fail_line(err)
            assert "credentials rejected" in err
        perl.terminate()
        lines.drain()
    finally:
        stop_process(perl, PERL_TIMEOUT)
    assert lines.lines[-1] == "DONE registers=2", lines.lines
    regs = [line.split()[3:] for line in lines.lines if line.startswith("RECV REQUEST REGISTER")]
    assert regs == [["1", "REGISTER"], ["2", "REGISTER", "auth"]], lines.lines


# ------------------------------------------------------------------ failures


def test_registrar_not_answering_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    """A UDP port nobody reads: no final response within --timeout is exit 1, "timeout"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        status, out, err = run_cli(
            ["register", f"sip:127.0.0.1:{port}", "-u", "alice", "-p", "x", "--timeout", "0.5"],
            capsys,
        )
        # the REGISTER and its retransmissions (T1 = 0.5 s doubling) arrived
        silent.setblocking(False)
        got = silent.recv(65535)
    assert status == 1, (out, err)
    assert fail_line(err).endswith(f"sip:127.0.0.1:{port}: timeout")
    assert got.startswith(b"REGISTER sip:127.0.0.1:")


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_registrar_on_a_closed_port_exits_1(proto: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A closed port: a refused connection over TCP, a timeout over UDP (no ICMP error is
    reported on an unconnected socket)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening or read: nobody answers
        port = closed.getsockname()[1]
        if proto == "udp":
            closed.close()
        status, out, err = run_cli(
            ["register", f"sip:127.0.0.1:{port};transport={proto}", "-u", "alice",
             "-p", "x", "--timeout", "0.5"],
            capsys,
        )  # fmt: skip
    assert status == 1, (out, err)
    line = fail_line(err)
    assert line.endswith("Connection refused" if proto == "tcp" else "timeout"), line


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["register"], "required"),
        (["register", "sip:127.0.0.1"], "--user"),
        (["register", "http://example.com", "-u", "a"], "unsupported URI scheme"),
        (["register", "sip:127.0.0.1", "-u", "a@b"], "invalid --user"),
        (["register", "sip:127.0.0.1", "-u", "a", "--from", "alice"], "invalid --from"),
        (["register", "sip:127.0.0.1", "-u", "a", "--from", "tel:+123"], "invalid --from"),
        (["register", "sip:127.0.0.1", "-u", "a", "--contact", "<sip:a b>"], "invalid --contact"),
        (["register", "sip:127.0.0.1", "-u", "a", "--expires", "-1"], "must not be negative"),
        (["register", "sip:127.0.0.1", "-u", "a", "--expires", "4294967296"], "at most"),
        (["register", "sip:127.0.0.1", "-u", "a", "--timeout", "x"], "not a number"),
        (["register", "sips:127.0.0.1", "-u", "a", "-t", "udp"], "contradicts"),
    ],
)
def test_register_bad_arguments_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(argv, capsys)
    assert status == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("netsip register: error: "), err
    assert needle in lines[0], err
    assert out == ""


def test_register_as_a_command() -> None:
    """The installed command: a usage error is exit 2 with one line, no traceback."""
    res = subprocess.run(
        [*netsip_command(), "register", "sip:127.0.0.1", "--expires", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 2, res
    assert res.stderr.count("\n") == 1 and "--user" in res.stderr, res.stderr
