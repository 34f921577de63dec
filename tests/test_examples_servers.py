"""examples/: the ports of Net::SIP's server examples, run as programs.

Each example runs as a subprocess on free loopback ports (port 0: it prints
``listening on PROTO:IP:PORT`` on stderr for each leg) and is driven by
netsip ``Simple`` user agents in this process: a registration and a call
through it (or redirected by it) must work; SIGTERM ends it with status 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netsip import Call, EventLoop, Request, Simple
from netsip.testing import drive
from netsip.util import Addr
from tests.support import ROOT, Listen, python_env

SERVER_EXAMPLES = ("register_and_redirect.py", "registrar_and_proxy.py", "stateless_proxy.py")
EXAMPLES = [ROOT / "examples" / name for name in SERVER_EXAMPLES]


def test_examples_found() -> None:
    assert [p for p in EXAMPLES if not p.is_file()] == []


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=python_env(),
        check=False,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_help(path: Path) -> None:
    res = _run(str(path), "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: "), res.stdout
    assert "Net::SIP" in res.stdout  # the first docstring line names the Perl original


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_bad_option(path: Path) -> None:
    res = _run(str(path), "--no-such-option")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "unrecognized arguments" in res.stderr


def test_stateless_proxy_usage_errors() -> None:
    script = str(ROOT / "examples" / "stateless_proxy.py")
    res = _run(script, "-r")
    assert res.returncode == 2 and "no --leg" in res.stderr
    res = _run(script, "--leg", "127.0.0.1:0", "-X", "abc")
    assert res.returncode == 2 and "bad prefix" in res.stderr


# ------------------------------------------------------------------ running them


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture
def phones() -> Iterator[list[Simple]]:
    made: list[Simple] = []
    yield made
    for ua in made:
        ua.cleanup()


def _start(started: list[Listen], tmp: Path, name: str, *args: str, legs: int = 1) -> list[Addr]:
    """Run examples/NAME with ARGS; the addresses of its ``legs`` legs, in order."""
    proc = Listen([], tmp, command=[sys.executable, str(ROOT / "examples" / name), *args])
    started.append(proc)
    found = proc.err.wait_for(r"listening on (udp|tcp|tls):(\S+)$", legs)
    return [Addr.parse(m.group(2)) for m in found]


def _stop(proc: Listen) -> None:
    proc.stop(signal.SIGTERM)
    assert proc.returncode == 0, proc.err.lines


def _hostport(addr: Addr) -> str:
    return f"{addr.addr}:{addr.port}"


class Answerer:
    """Bob's side: answers with echo and keeps each INVITE and where it came from."""

    def __init__(self, ua: Simple) -> None:
        self.invites: list[tuple[Request, Addr]] = []
        self.calls: list[Call] = []
        ua.listen(init_media=ua.rtp("media_recv_echo"), cb_create=self.created)

    def created(self, call: Call, request: Request, _leg: object, from_: Addr) -> bool:
        self.calls.append(call)
        self.invites.append((request, from_))
        return True


def _call(loop: EventLoop, caller: Simple, to: str, bob: Answerer) -> None:
    """``caller`` calls ``to``, which must reach ``bob``; then hangs up."""
    final: list[str] = []
    call = caller.invite(to, cb_final=lambda status, *_: final.append(status))
    drive(loop, lambda: bool(final), what=f"the final response to the call to {to}")
    assert final == ["OK"], caller.error()
    call.bye()
    drive(loop, lambda: call.closed and bob.calls[-1].closed, what="the BYE")


def _final_code(loop: EventLoop, caller: Simple, to: str) -> Any:
    info: list[Any] = []
    caller.invite(to, cb_final=lambda status, call, i: info.append(i.get("code")))
    drive(loop, lambda: bool(info), what=f"the final response to {to}")
    return info[0]


def test_register_and_redirect(
    loop: EventLoop, phones: list[Simple], listen_factory: list[Listen], tmp_path: Path
) -> None:
    """Perl's chain [Authorize, Redirect, Registrar]: register with a password, 302, 404."""
    (server,) = _start(
        listen_factory,
        tmp_path,
        "register_and_redirect.py",
        "127.0.0.1:0",
        "--user",
        "bob:builder",
        "--user",
        "alice:wonderland",
        "--realm",
        "example.com",
    )
    at = _hostport(server)
    bob = Simple(
        from_="sip:bob@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        registrar=at,
        auth=("bob", "builder"),
    )
    phones.append(bob)
    assert bob.register() is not None, bob.error()
    answerer = Answerer(bob)
    # requests for example.com go to the redirect server; the 302's contact is called directly
    alice = Simple(
        from_="sip:alice@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        domain2proxy={"example.com": at},
        auth=("alice", "wonderland"),
    )
    phones.append(alice)
    _call(loop, alice, "sip:bob@example.com", answerer)
    _invite, from_ = answerer.invites[0]
    assert from_.port == alice.default_leg().src.port  # redirected: alice calls bob herself
    assert _final_code(loop, alice, "sip:carol@example.com") == 404
    eve = Simple(
        from_="sip:eve@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        registrar=at,
        auth=("eve", "guess"),
    )
    phones.append(eve)
    assert eve.register() is None and "401" in (eve.error() or "")
    _stop(listen_factory[0])


def test_registrar_and_proxy(
    loop: EventLoop, phones: list[Simple], listen_factory: list[Listen], tmp_path: Path
) -> None:
    """create_chain([create_registrar(), create_stateless_proxy()]): register, call, 480."""
    (server,) = _start(
        listen_factory, tmp_path, "registrar_and_proxy.py", "127.0.0.1:0", "--domain", "example.com"
    )
    at = _hostport(server)

    def phone(user: str) -> Simple:
        ua = Simple(
            from_=f"sip:{user}@example.com",
            leg="udp:127.0.0.1:0",
            loop=loop,
            registrar=at,
            outgoing_proxy=at,
        )
        phones.append(ua)
        return ua

    bob, alice = phone("bob"), phone("alice")
    assert bob.register(expires=600) == 600, bob.error()
    answerer = Answerer(bob)
    _call(loop, alice, "sip:bob@example.com", answerer)
    invite, from_ = answerer.invites[0]
    assert from_.port == server.port  # through the proxy
    assert invite.get_headers("record-route") == [f"<sip:{at};lr>"]
    assert _final_code(loop, alice, "sip:carol@example.com") == 480
    _stop(listen_factory[0])


def test_stateless_proxy_between_legs(
    loop: EventLoop, phones: list[Simple], listen_factory: list[Listen], tmp_path: Path
) -> None:
    """Two legs: a registrar for example.com on A; calls come in on B (with a -X
    prefix); other.test is on B's side, behind B's --proxy (here Dave himself)."""
    dave = Simple(from_="sip:dave@other.test", leg="udp:127.0.0.1:0", loop=loop)
    phones.append(dave)
    dave_answers = Answerer(dave)
    leg_a, leg_b = _start(
        listen_factory,
        tmp_path,
        "stateless_proxy.py",
        "--leg", "127.0.0.1:0", "--domain", "example.com", "-r",
        "--leg", "127.0.0.1:0", "-X", "9=example.com", "-X", "99=nowhere.test",
        "-D", "other.test", "-P", dave.default_leg().contact.partition(":")[2],
        legs=2,
    )  # fmt: skip
    a, b = _hostport(leg_a), _hostport(leg_b)
    bob = Simple(from_="sip:bob@example.com", leg="udp:127.0.0.1:0", loop=loop, registrar=a)
    phones.append(bob)
    assert bob.register() is not None, bob.error()
    answerer = Answerer(bob)
    alice = Simple(
        from_="sip:alice@elsewhere.test", leg="udp:127.0.0.1:0", loop=loop, outgoing_proxy=b
    )
    phones.append(alice)

    # to bob's address of record: in on B, out on A to his contact
    _call(loop, alice, "sip:bob@example.com", answerer)
    invite, from_ = answerer.invites[0]
    assert from_.port == leg_a.port
    assert invite.get_headers("record-route") == [f"<sip:{a};lr>", f"<sip:{b};lr>"]
    assert invite.get_headers("route") == []  # the proxy removed the Route naming leg A
    assert f"@{a}" in (invite.get_header("contact") or "")  # alice's Contact is the proxy's

    # by number: 9bob@anywhere is bob@example.com (the longest prefix, 99, does not match)
    _call(loop, alice, "sip:9bob@gateway.test", answerer)
    invite, from_ = answerer.invites[1]
    assert from_.port == leg_a.port
    assert "sip:9bob@gateway.test" in (invite.get_header("to") or "")

    # other.test leaves on B, through B's proxy (other.test itself is not resolvable)
    erin = Simple(from_="sip:erin@example.com", leg="udp:127.0.0.1:0", loop=loop, outgoing_proxy=a)
    phones.append(erin)
    _call(loop, erin, "sip:dave@other.test", dave_answers)
    invite, from_ = dave_answers.invites[0]
    assert from_.port == leg_b.port
    assert invite.uri() == "sip:dave@other.test"
    assert invite.get_headers("route") == [f"<sip:{_hostport(dave.default_leg().src)};lr>"]

    _stop(listen_factory[0])
