"""A tiny authoritative DNS server on loopback for the resolver tests.

Built with dnspython and driven by the same netsip EventLoop as the code under
test (no threads): UDP and TCP on the same 127.0.0.1 port. It serves a zone
given as records ``(name, type, rdata)`` or ``(name, ttl, type, rdata)``,
answers NXDOMAIN / NODATA with an SOA for negative caching, and can misbehave
per name: never answer (``silent``), precede the answer with junk, a wrong id
and a reply from another port (``spoof``), or truncate the UDP answer so the
client must retry over TCP (``truncate``). Every question is logged in
``queries`` as ``(transport, name, type)``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from functools import partial

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from netsip.eventloop import EV_READ, EventLoopLike

Rec = tuple[str, str, str] | tuple[str, int, str, str]


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


class DNSServer:
    """Authoritative loopback DNS server; see the module docstring.

    Args:
        loop: the event loop to register the sockets on.
        records: the zone, ``(name, type, rdata)`` (TTL 300) or ``(name, ttl, type, rdata)``.
        soa_minimum: negative-caching TTL announced in the SOA.
    """

    def __init__(
        self, loop: EventLoopLike, records: Iterable[Rec], *, soa_minimum: int = 60
    ) -> None:
        self.loop = loop
        grouped: dict[tuple[str, str], tuple[str, int, list[str]]] = {}
        for rec in records:
            name, ttl, typ, rdata = rec if len(rec) == 4 else (rec[0], 300, rec[1], rec[2])
            grouped.setdefault((_norm(name), typ.upper()), (name, ttl, []))[2].append(rdata)
        self.zone: dict[tuple[str, str], dns.rrset.RRset] = {
            key: dns.rrset.from_text(_norm(name) + ".", ttl, "IN", key[1], *rdatas)
            for key, (name, ttl, rdatas) in grouped.items()
        }
        self.soa = dns.rrset.from_text(
            ".", soa_minimum, "IN", "SOA", f"ns. hostmaster. 1 3600 600 86400 {soa_minimum}"
        )
        self.silent: set[str] = set()
        self.spoof: set[str] = set()
        self.truncate: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []
        self._conns: dict[socket.socket, bytearray] = {}

        self.udp, self.tcp = self._bind_pair()
        self.port: int = self.udp.getsockname()[1]
        self.tcp.listen(8)
        self.udp.setblocking(False)
        self.tcp.setblocking(False)
        loop.add_fd(self.udp, EV_READ, self._on_udp, "dns-server-udp")
        loop.add_fd(self.tcp, EV_READ, self._on_accept, "dns-server-tcp")

    @staticmethod
    def _bind_pair() -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on the same free port (the client falls back to TCP).

        The port the kernel picks for UDP may be taken for TCP (another process,
        or a connection in TIME_WAIT), so try a bounded number of ports.
        """
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)`` to give the resolver as nameserver."""
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        """Unregister and close every socket of the server."""
        for sock in [self.udp, self.tcp, *self._conns]:
            self.loop.del_fd(sock)
            sock.close()
        self._conns.clear()

    def answer(self, query: dns.message.Message, transport: str) -> dns.message.Message | None:
        """The reply to ``query`` (None for a silent name)."""
        question = query.question[0]
        name, typ = _norm(question.name.to_text()), dns.rdatatype.to_text(question.rdtype)
        self.queries.append((transport, name, typ))
        if name in self.silent:
            return None
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if transport == "udp" and name in self.truncate:
            resp.flags |= dns.flags.TC
            return resp
        rrset = self.zone.get((name, typ))
        if rrset is not None:
            resp.answer.append(rrset)
            return resp
        if not any(n == name for n, _ in self.zone):
            resp.set_rcode(dns.rcode.NXDOMAIN)
        resp.authority.append(self.soa)
        return resp

    def _on_udp(self, sock: socket.socket) -> None:
        try:
            data, peer = sock.recvfrom(65535)
            query = dns.message.from_wire(data)
        except (BlockingIOError, dns.exception.DNSException):
            return
        resp = self.answer(query, "udp")
        if resp is None:
            return
        if _norm(query.question[0].name.to_text()) in self.spoof:
            sock.sendto(b"\x00junk", peer)
            fake = dns.message.make_response(query)
            fake.answer.append(
                dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "6.6.6.6")
            )
            fake.id = (query.id + 1) & 0xFFFF
            sock.sendto(fake.to_wire(), peer)
            fake.id = query.id
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.sendto(fake.to_wire(), peer)  # right id, wrong source port
        sock.sendto(resp.to_wire(), peer)

    def _on_accept(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._conns[conn] = bytearray()
        self.loop.add_fd(conn, EV_READ, partial(self._on_tcp, conn), "dns-server-conn")

    def _on_tcp(self, conn: socket.socket, _fd: object) -> None:
        buf = self._conns[conn]
        try:
            data = conn.recv(65535)
        except BlockingIOError:
            return
        buf += data
        size = int.from_bytes(buf[:2], "big") if len(buf) >= 2 else -1
        if data and (size < 0 or len(buf) < 2 + size):
            return  # need more
        resp = None
        if data:
            resp = self.answer(dns.message.from_wire(bytes(buf[2 : 2 + size])), "tcp")
        if resp is not None:
            wire = resp.to_wire()
            conn.setblocking(True)
            conn.sendall(len(wire).to_bytes(2, "big") + wire)
        self.loop.del_fd(conn)
        del self._conns[conn]
        conn.close()
