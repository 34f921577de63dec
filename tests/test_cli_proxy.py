"""``netsip proxy``: registrar + stateless proxy + digest, as a command.

The command runs as a subprocess on free loopback ports; netsip user agents
(Simple, in the test's process) register through it and call each other.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from netsip import EventLoop
from netsip.simple import Call, Simple
from netsip.testing import drive
from netsip.util import Addr
from tests.support import Listen, netsip_command, run_cli

USERS = "# netsip proxy users\nalice:wonderland\nbob:builder\n\n"


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture
def started() -> Iterator[list[Listen]]:
    procs: list[Listen] = []
    yield procs
    for p in procs:
        p.close()


def start_proxy(started: list[Listen], tmp: Path, *args: str) -> tuple[Listen, dict[str, Addr]]:
    """``netsip proxy -l 127.0.0.1:0 ARGS`` (UDP and TCP on one port); its addresses."""
    proc = Listen([], tmp, command=[*netsip_command(), "proxy", "-l", "127.0.0.1:0", *args])
    started.append(proc)
    return proc, proc.addresses(2)


def phone(
    loop: EventLoop,
    aor: str,
    proxy: Addr,
    proto: str = "udp",
    auth: tuple[str, str] | None = None,
) -> Simple:
    hostport = f"{proxy.addr}:{proxy.port}"
    return Simple(
        from_=aor,
        leg=f"{proto}:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=f"sip:{hostport};transport={proto}",
        registrar=f"sip:{hostport};transport={proto}",
        auth=auth,
    )


def answer_calls(ua: Simple, calls: list[Call]) -> None:
    def created(call: Call, *_rest: object) -> bool:
        calls.append(call)
        return True

    ua.listen(init_media=ua.rtp("media_recv_echo"), cb_create=created)


def call(loop: EventLoop, caller: Simple, to: str) -> tuple[str, int | None, Call]:
    """Invite ``to``; (status, code, the call) once the final response is in."""
    final: list[tuple[str, int | None]] = []
    c = caller.invite(
        to, cb_final=lambda status, _c, info: final.append((status, info.get("code")))
    )
    drive(loop, lambda: bool(final), seconds=10, what=f"the final response to {to}")
    return final[0][0], final[0][1], c


def summary(out: str) -> tuple[dict[str, int], int, int]:
    """(requests per method, responses, registered users) from the summary."""
    m = re.search(r"--- netsip proxy: (\d+) requests, (\d+) responses", out)
    r = re.search(r"^requests: (.*); registered users: (\d+)$", out, re.M)
    assert m is not None and r is not None, out
    methods = {} if r[1] == "-" else {k: int(v) for k, v in (x.split() for x in r[1].split(", "))}
    assert sum(methods.values()) == int(m[1])
    return methods, int(m[2]), int(r[2])


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_register_and_call_with_digest(
    loop: EventLoop, started: list[Listen], tmp_path: Path, proto: str
) -> None:
    users = tmp_path / "users"
    users.write_text(USERS)
    proc, addrs = start_proxy(started, tmp_path, "--domain", "example.com", "--users", str(users))
    proxy = addrs[proto]
    alice = phone(loop, "sip:alice@example.com", proxy, proto, auth=("alice", "wonderland"))
    bob = phone(loop, "sip:bob@example.com", proxy, proto, auth=("bob", "builder"))
    mallory = phone(loop, "sip:bob@example.com", proxy, proto, auth=("bob", "guess"))
    carol = phone(loop, "sip:carol@other.net", proxy, proto)  # not ours: not challenged
    try:
        assert bob.register() is not None, bob.error()
        assert alice.register() is not None, alice.error()
        assert mallory.register() is None and "401" in (mallory.error() or "")
        b_calls: list[Call] = []
        answer_calls(bob, b_calls)
        # alice is ours: her INVITE is challenged (407), she answers it
        status, _code, c = call(loop, alice, "sip:bob@example.com")
        assert status == "OK" and len(b_calls) == 1
        c.bye()
        drive(loop, lambda: c.closed and b_calls[0].closed, what="the BYE through the proxy")
        # carol is not from example.com: passes without credentials
        status, _code, c = call(loop, carol, "sip:bob@example.com")
        assert status == "OK" and len(b_calls) == 2
        c.bye()
        drive(loop, lambda: c.closed, what="carol's BYE")
        # nobody registered as dave
        status, code, _c = call(loop, carol, "sip:dave@example.com")
        assert (status, code) == ("FAIL", 480)
    finally:
        for ua in (alice, bob, mallory, carol):
            ua.cleanup()
    out = proc.stop(signal.SIGTERM)
    assert proc.returncode == 0, out
    methods, responses, registered = summary(out)
    assert methods["REGISTER"] >= 5  # 2 x (challenge, answer) + mallory's
    assert methods["INVITE"] >= 4 and methods["BYE"] >= 2 and methods["ACK"] >= 2
    assert responses >= 4  # the 200s to two INVITEs and two BYEs
    assert registered == 2


def test_verbose_prints_a_line_per_request(
    loop: EventLoop, started: list[Listen], tmp_path: Path
) -> None:
    proc, addrs = start_proxy(started, tmp_path, "-v")
    bob = phone(loop, "sip:bob@example.org", addrs["udp"])
    try:
        assert bob.register() is not None, bob.error()
    finally:
        bob.cleanup()
    out = proc.stop()
    assert re.search(
        r"^REGISTER sip:127\.0\.0\.1:\d+;transport=udp from udp:127\.0\.0\.1:\d+$", out, re.M
    ), out
    assert summary(out)[0] == {"REGISTER": 1}


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--store", "redis://127.0.0.1:6379/0"], "unknown store"),
        (["--users", "/nonexistent/users"], "--users /nonexistent/users"),
        (["--min-expires", "100", "--max-expires", "10"], "--min-expires"),
        (["-l", "tls:127.0.0.1:0"], "needs --tls-cert"),
        (["--algorithms", "MD5,SHA-1"], "unknown ['SHA-1']"),
    ],
)
def test_usage_errors_exit_2(args: list[str], why: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _out, err = run_cli(["proxy", "-l", "udp:127.0.0.1:0", *args], capsys)
    assert status == 2 and why in err and err.count("\n") == 1


def test_bad_users_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users"
    users.write_text("alice:wonderland\nno colon here\n")
    status, _out, err = run_cli(["proxy", "-l", "udp:127.0.0.1:0", "--users", str(users)], capsys)
    assert status == 2 and "users:2: not a user:password line" in err
