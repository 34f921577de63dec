"""Shared helpers for the server tests (registrar, redirect, chain, blocker, dropper).

A ``Server`` is a Dispatcher with one UDP leg on the loopback, its event
loop on a FakeClock; a ``Client`` is a bare UDP socket that sends raw
requests to it and reads what comes back. Waiting is bounded: ``drive``
until a datagram arrives, ``spin`` to show that none does.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Response
from netsip.testing import FakeClock, addr_of, advance, datagrams, drive, pkt, spin, udp_socket
from netsip.util import Addr, Proto

_branches = itertools.count(1)


@dataclass(eq=False)
class Server:
    loop: EventLoop
    clock: FakeClock
    disp: Dispatcher

    @property
    def addr(self) -> Addr:
        return self.disp.legs[0].src

    def advance(self, seconds: float) -> None:
        advance(self.loop, self.clock, seconds, step=0.5, polls=1)


@dataclass(eq=False)
class Client:
    server: Server
    sock: socket.socket = field(default_factory=udp_socket)
    got: list[bytes] = field(default_factory=list)

    @property
    def addr(self) -> Addr:
        return addr_of(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server.addr.sockaddr())

    def _poll(self) -> bool:
        self.got.extend(datagrams(self.sock))
        return bool(self.got)

    def ask(self, data: bytes) -> Response:
        """Send a request, return the first response."""
        self.got.clear()
        self.send(data)
        drive(self.server.loop, self._poll, 5.0, "a response")
        resp = pkt(self.got.pop(0))
        assert isinstance(resp, Response)
        return resp

    def silence(self, data: bytes, seconds: float = 0.3) -> list[Packet]:
        """Send a request and return what came back within ``seconds`` (nothing, usually)."""
        self.got.clear()
        self.send(data)
        spin(self.server.loop, seconds)
        self._poll()
        return [pkt(d) for d in self.got]


def request(
    method: str = "REGISTER",
    uri: str = "sip:example.org",
    *,
    to: str | None = "<sip:alice@example.org>",
    contacts: Sequence[str] = (),
    callid: str = "call-1",
    cseq: int | None = None,
    from_tag: str = "f1",
    expires: str | int | None = None,
    via_port: int = 5060,
    headers: Sequence[tuple[str, str]] = (),
    vias: int = 1,
) -> bytes:
    """The wire form of a request (REGISTER by default) with a new branch.

    Without ``cseq`` the CSeq number is new too: the dispatcher's response
    cache (keyed by CSeq, Call-ID, From and To) answers a request that
    repeats all four with the first response."""
    n = next(_branches)
    if cseq is None:
        cseq = n  # (a new CSeq each time: the response cache answers a repeated one)
    lines = [f"{method} {uri} SIP/2.0"]
    lines += [
        f"Via: SIP/2.0/UDP 127.0.0.1:{via_port + i};branch=z9hG4bK-t{n}-{i}" for i in range(vias)
    ]
    lines.append(f"From: <sip:alice@example.org>;tag={from_tag}")
    if to is not None:
        lines.append(f"To: {to}")
    lines += [f"Call-ID: {callid}", f"CSeq: {cseq} {method}", "Max-Forwards: 70"]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += [f"{k}: {v}" for k, v in headers]
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def make_server(proto: Proto = "udp") -> Server:
    clock = FakeClock(1_000_000.0)
    loop = EventLoop(clock=clock)
    disp = Dispatcher([Leg(addr="127.0.0.1", port=0, proto=proto)], loop)
    return Server(loop, clock, disp)


def close_server(server: Server) -> None:
    server.disp.close()
    server.loop.close()
