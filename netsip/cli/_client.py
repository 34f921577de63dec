"""The sending side of ``netsip options``, ``send`` and ``bench``: the target
of the command line, one leg towards it, requests built from the arguments.

The transactions themselves run in :class:`netsip.transaction.TransactionClient`;
:class:`Client` adds what only the command needs: resolving the target
(RFC 3263), picking and binding the local address, the requests' default
headers (RFC 3261 8.1.1), and turning errors into :class:`CliError`.
It is the counterpart of the setup code at the top of Net::SIP's example
scripts (``examples/bench/call.pl``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from netsip import __version__
from netsip._log import get_logger
from netsip.cli._common import EXIT_FAIL, CliError, SignalStop, make_leg, strerror, tls_options
from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.transaction import ClientTransaction, DialogRoute, TransactionClient
from netsip.util import (
    DEFAULT_PORTS,
    PROTOS,
    Addr,
    NetSIPError,
    Proto,
    Var,
    hostname2ip,
    ip_string2parts,
    laddr4dst,
    sip_uri2sockinfo,
)

log = get_logger(__name__)

USER_AGENT: Final = f"netsip/{__version__}"

_SCHEME_RX: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
#: ``ws://host[:port][/path]`` (RFC 6455 section 3; no query or fragment here)
_WS_URL_RX: Final = re.compile(r"(wss?)://(\[[0-9A-Fa-f:.]+\](?::\d+)?|[^/\[\]]+)(/[!-~]*)?", re.I)


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: the Request-URI, the transport and (once known) the address."""

    uri: str
    proto: Proto
    host: str
    port: int | None
    family: int | None
    ws_path: str = "/"


def parse_target(text: str, transport: str | None) -> Target:
    """Parse a destination: a SIP URI, ``host[:port]``, or a WebSocket URL.

    ``ws://host[:port][/path]`` and ``wss://...`` (RFC 6455 section 3) stand
    for ``sip:host[:port];transport=ws`` (``wss``) with the upgrade request
    going to ``path``: the form a web phone is configured with.

    Raises:
        CliError: unparsable, or a transport that contradicts the URI (status 2).
    """
    uri = text.strip()
    ws = _WS_URL_RX.fullmatch(uri)
    if ws is not None:
        scheme, hostport, path = ws.group(1).lower(), ws.group(2), ws.group(3) or "/"
        if transport and transport != scheme:
            raise CliError(f"--transport {transport} contradicts the URL {text!r}")
        target = parse_target(f"sip:{hostport};transport={scheme}", None)
        return dataclasses.replace(target, uri=f"sip:{hostport}", ws_path=path)
    m = _SCHEME_RX.match(uri)
    if m is None or m.group(1).lower() not in ("sip", "sips"):
        if m is not None and not m.group(2).isdigit():  # "host:5060" has no scheme
            raise CliError(f"unsupported URI scheme in {text!r} (sip: or sips:)")
        uri = "sip:" + uri
    try:
        info = sip_uri2sockinfo(uri)
    except ValueError as exc:
        raise CliError(f"cannot parse URI {text!r}: {exc}") from None
    if info is None or not info[1]:
        raise CliError(f"cannot parse URI {text!r}")
    uproto, host, port, family = info
    if uproto is not None and uproto not in PROTOS:
        raise CliError(f"unsupported transport {uproto!r} in {text!r}")
    if transport and uproto and transport != uproto:
        raise CliError(f"--transport {transport} contradicts the URI {text!r}")
    proto: Proto = transport or uproto or "udp"  # type: ignore[assignment]  # checked above
    return Target(uri, proto, host, port, family)


class ClientLeg:
    """One leg towards ``target`` and a Dispatcher on it, the target resolved:
    what a UAC of the command needs before it sends (``register`` puts an
    :class:`~netsip.endpoint.Endpoint` on it, :class:`Client` a
    :class:`~netsip.transaction.TransactionClient`).

    Raises:
        CliError: the target cannot be resolved or reached, the local address
            cannot be bound, or the TLS options are wrong.
    """

    def __init__(self, args: argparse.Namespace, target: Target, loop: EventLoop) -> None:
        self.loop = loop
        self.target = target
        self.timeout: float = args.timeout
        self.tags = secrets.token_hex(4)

        family = target.family
        first_ip: str | None = None
        if family is None:
            ips = hostname2ip(target.host)
            if ips:
                first_ip = ips[0]
                family = Addr.parse((first_ip, 0)).family
            elif target.port is not None:
                raise CliError(f"cannot resolve {target.host!r}")
        else:
            first_ip = target.host
        family = family or socket.AF_INET

        self.dst: Addr | None = None
        if first_ip is not None and (target.family is not None or target.port is not None):
            # an IP, or a name with a port: A/AAAA only (RFC 3263 4.2)
            port = target.port or DEFAULT_PORTS[target.proto]
            host = target.host if target.family is None else None
            self.dst = Addr(first_ip, port, family, host, target.proto)

        bind_ip, bind_port = self._local(args.bind, family, first_ip, target)
        tls = tls_options(args, server=False) if target.proto in ("tls", "wss") else None
        if tls is None and (args.tls_cert or args.tls_key or args.tls_ca):
            raise CliError(
                "--tls-cert/--tls-key/--tls-ca need --transport tls or wss, or a sips: URI"
            )
        ws = {"path": target.ws_path} if target.proto in ("ws", "wss") else None
        try:
            self.leg = make_leg(addr=bind_ip, port=bind_port, proto=target.proto, tls=tls, ws=ws)
        except OSError as exc:
            where = Addr(bind_ip, bind_port, family)
            raise CliError(f"cannot bind {target.proto}:{where}: {exc.strerror or exc}") from None
        self.dispatcher = Dispatcher([self.leg], loop)
        scheme = "sips" if target.proto == "tls" else "sip"
        self.from_uri = f"{scheme}:netsip@{self.leg.src}"
        if self.dst is None:
            try:
                self._resolve(first_ip, family)
            except BaseException:
                self.dispatcher.close()
                raise

    @staticmethod
    def _local(
        bind: str | None, family: int, first_ip: str | None, target: Target
    ) -> tuple[str, int]:
        if bind:
            try:
                ip, port, fam = ip_string2parts(bind)
            except ValueError as exc:
                raise CliError(f"invalid --bind {bind!r}: {exc}") from None
            if fam is None:
                raise CliError(f"--bind needs an IP address, not {bind!r}")
            if fam != family:
                raise CliError(f"--bind {bind} is not of the destination's address family")
            return ip, port or 0
        if first_ip is None:
            return ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0
        local = laddr4dst(Addr(first_ip, target.port or 5060, family))
        if local is None:
            raise CliError(f"{target.uri}: {os.strerror(errno.ENETUNREACH)}", EXIT_FAIL)
        return local, 0

    def _resolve(self, fallback_ip: str | None, family: int) -> None:
        """RFC 3263 resolution of a host name without port (NAPTR, SRV, A/AAAA)."""
        result: Var[object] = Var()
        self.dispatcher.resolve_uri(
            self.target.uri, result, allowed_proto=[self.target.proto], allowed_legs=[self.leg]
        )
        if result.value is None:
            self.loop.loop(self.timeout, result)
        found = result.value
        if isinstance(found, list) and found:
            self.dst = found[0][0]
            return
        if fallback_ip is not None:
            # no SIP records: the host itself on the default port (RFC 3263 4.2)
            port = DEFAULT_PORTS[self.target.proto]
            self.dst = Addr(fallback_ip, port, family, self.target.host, self.target.proto)
            return
        raise CliError(f"cannot resolve {self.target.host!r}")

    def close(self) -> None:
        self.dispatcher.close()


class Client(ClientLeg):
    """A UAC on one leg towards ``target``: its transactions go through a
    :class:`~netsip.transaction.TransactionClient` on a Dispatcher of that leg.

    Raises:
        CliError: as :class:`ClientLeg`.
    """

    def __init__(self, args: argparse.Namespace, target: Target, loop: EventLoop) -> None:
        super().__init__(args, target, loop)
        self.transactions = TransactionClient(
            self.dispatcher, timeout=self.timeout, on_request=_ignore_request
        )

    # ----------------------------------------------------------- requests

    def new_callid(self) -> str:
        return f"{secrets.token_hex(8)}@{self.leg.src.addr}"

    def make_request(
        self,
        method: str,
        *,
        callid: str,
        cseq: int,
        uri: str | None = None,
        to: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Request:
        """A request with the headers RFC 3261 8.1.1 asks for; ``extra`` overrides them."""
        uri = uri or self.target.uri
        headers: list[tuple[str, str]] = [
            ("Max-Forwards", "70"),
            ("From", f"<{self.from_uri}>;tag={self.tags}"),
            ("To", to or f"<{self.target.uri}>"),
            ("Call-ID", callid),
            ("CSeq", f"{cseq} {method}"),
            ("User-Agent", USER_AGENT),
        ]
        if method == "OPTIONS":
            headers.append(("Accept", "application/sdp"))
        override = {name.lower() for name, _ in extra}
        headers = [(n, v) for n, v in headers if n.lower() not in override]
        headers.extend(extra)
        return Request(method, uri, headers, body)

    def send(
        self,
        request: Request,
        on_done: Callable[[ClientTransaction], None],
        on_response: Callable[[ClientTransaction, Response], None] | None = None,
    ) -> ClientTransaction:
        """Send ``request`` to the target; see :meth:`TransactionClient.send`."""
        try:
            return self.transactions.send(
                request, on_done, on_response, leg=self.leg, dst_addr=self.dst
            )
        except (NetSIPError, ValueError) as exc:
            raise CliError(f"cannot send to {self.dst}: {exc}") from None

    def send_in_dialog(
        self,
        txn: ClientTransaction,
        method: str,
        cseq: int,
        on_done: Callable[[ClientTransaction], None],
    ) -> ClientTransaction:
        """Send ``method`` within the dialog that the 2xx of ``txn`` set up.

        The request goes along the dialog's route set to its remote target
        (RFC 3261 12.2.1.1), not to the first hop of the INVITE.
        """
        assert txn.response is not None
        route = DialogRoute.of_response(txn.request, txn.response)
        frm = txn.request.get_header("from")  # the dialog's, also if --header set it
        request = self.make_request(
            method,
            callid=txn.request.callid() or "",
            cseq=cseq,
            uri=route.target,
            to=txn.response.get_header("to"),
            extra=[("From", frm)] if frm else (),
        )
        route.apply(request)
        try:
            return self.transactions.send(
                request, on_done, leg=self.leg, dst_addr=route.next_hop(self.leg)
            )
        except (NetSIPError, ValueError) as exc:
            raise CliError(f"cannot send to {route.target}: {exc}") from None

    def send_raw(self, packet: Packet, callback: Callable[[int], None]) -> None:
        """Send ``packet`` without waiting for responses (a response from ``--file``)."""
        self.dispatcher.deliver(
            packet, leg=self.leg, dst_addr=self.dst, callback=callback, do_retransmits=False
        )

    @property
    def pending(self) -> int:
        return self.transactions.pending

    def close(self) -> None:
        self.transactions.close()
        super().close()


def _ignore_request(request: Request, leg: Leg, from_: Addr) -> None:
    log.info("ignoring %s request from %s", request.method(), from_)


@contextlib.contextmanager
def client_session(args: argparse.Namespace, target: Target) -> Iterator[tuple[Client, Var[int]]]:
    """An event loop, signal handling and a :class:`Client`, all closed afterwards."""
    with leg_session(args, target, Client) as session:
        yield session


_C = TypeVar("_C", bound=ClientLeg)


@contextlib.contextmanager
def leg_session(
    args: argparse.Namespace, target: Target, kind: type[_C]
) -> Iterator[tuple[_C, Var[int]]]:
    """An event loop, signal handling and a ``kind`` of ClientLeg, all closed afterwards."""
    loop = EventLoop()
    stop: Var[int] = Var()
    try:
        with SignalStop(loop, stop):
            client = kind(args, target, loop)
            try:
                yield client, stop
            finally:
                client.close()
    finally:
        loop.close()


def peer(addr: Addr | None) -> str:
    """An address for the output, with its transport (``udp:127.0.0.1:5060``)."""
    return "?" if addr is None else f"{addr.proto}:{addr}" if addr.proto else str(addr)


def message_text(packet: Packet) -> str:
    """A packet for the terminal: LF line ends, no trailing blank line."""
    return packet.as_string().replace("\r\n", "\n").rstrip("\n")


def describe(txn: ClientTransaction) -> str:
    """The outcome of a transaction: ``200 OK``, ``timeout``, ``Connection refused`` ..."""
    if txn.response is not None:
        return f"{txn.response.code()} {txn.response.msg()}".rstrip()
    return strerror(txn.error)
