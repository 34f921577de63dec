"""Flows (RFC 5626) and clients that cannot be called back (RFC 7118 5): the way back
to a registered client is the connection it registered on.

A browser speaks SIP over a WebSocket it opened itself; its Contact is
``sip:user@abcd.invalid;transport=ws`` and it accepts no connection. A SIP
phone behind NAT is the same case over TCP, TLS or UDP. Such a client is
reached only over its *flow*: the leg the REGISTER came in on and the
address it came from (the connection there, for a stream). This module
holds the three pieces a registrar and a proxy share for it:

- :class:`Flow`: a leg and a peer :class:`~netsip.util.Addr`;
  :meth:`Flow.alive` asks the leg's socket pool whether the connection is
  still open (a UDP flow is alive as long as its leg);
- :class:`FlowTable`: which contacts are reached over which flows. The
  registrar (:class:`netsip.registrar.Registrar`) fills it for every binding
  registered over TCP/TLS/WS by a client one hop away, and for every
  binding whose Contact needs a flow (:func:`needs_flow`: an ``.invalid``
  host, RFC 7118 5, or ``;ob``, RFC 5626 5.3) whatever the transport; the
  proxy asks it where a Request-URI goes. The table is in the process:
  with a shared store (``RedisStore``) every process knows the flows of the
  connections it holds, and only those;
- :class:`FlowTokens`: the flow token of RFC 5626 5.2 and 5.3, the user
  part of a Record-Route (or Path) URI that names a flow: the leg number,
  the peer's address and port, and an HMAC over them and the dispatcher's
  leg layout, in base32 behind an ``f``. A request that comes back with
  that Route goes over the flow (in-dialog requests to a WebSocket client);
  a token that does not verify is ignored, so it cannot be forged to send
  traffic into somebody else's connection.

Performance plan: :meth:`FlowTable.find` runs for every request a proxy
forwards: one dict lookup on a normalised contact (cached) and the socket
pool's per-peer dict. Expiry pops a heap of due entries only (as the
registrar's :class:`~netsip.registrar.MemoryStore`), never scans.

Differences from Net::SIP: Net::SIP has no flows, no RFC 5626 outbound and
no flow tokens; its registrar stores Contacts and its proxy resolves them,
so a client behind NAT or in a browser cannot be called.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import heapq
import hmac
import secrets
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from netsip._log import get_logger
from netsip.leg import Leg
from netsip.util import Addr, sip_uri2parts

__all__ = [
    "FLOW_FAILED",
    "Flow",
    "FlowTable",
    "FlowTokens",
    "contact_key",
    "needs_flow",
]

log = get_logger(__name__)

#: RFC 5626 11.5: "430 Flow Failed": the flow a request must take is gone.
FLOW_FAILED: Final = 430
#: heap entries beyond 2 per contact tolerated before a rebuild
_HEAP_SLACK: Final = 1024
#: bytes of the token's HMAC (80 bits: forging one takes 2**79 tries on average)
_MAC_LEN: Final = 10
_TOKEN_PREFIX: Final = "f"


@dataclass(frozen=True, slots=True)
class Flow:
    """A way back to a client: the leg and the peer of the connection it used.

    Attributes:
        leg: the leg the client's request came in on.
        peer: the client's address and port as the leg saw them (``proto`` set).
    """

    leg: Leg
    peer: Addr

    def alive(self) -> bool:
        """Whether the flow can carry a request now (its connection is open)."""
        pool = self.leg.socketpool()
        if self.leg.proto == "udp":
            return not pool.closed
        return pool.has_connection(self.peer)

    def __repr__(self) -> str:
        return f"<Flow {self.leg.proto}:{self.leg.src} <-> {self.peer.addr}:{self.peer.port}>"


@functools.lru_cache(maxsize=4096)
def _key(uri: str) -> str:
    parts = sip_uri2parts(uri.strip().strip("<>"))
    if parts is None:
        return uri
    domain, user, scheme, params, _data = parts
    transport = (params.get("transport") or "").lower()
    return f"{scheme}:{user + '@' if user else ''}{domain};{transport}"


def contact_key(uri: str) -> str:
    """What identifies a contact URI in a :class:`FlowTable`.

    Scheme and host lower-cased, the user part as written, the port and the
    ``transport`` parameter; other parameters do not count (RFC 3261 19.1.4
    compares what both URIs have; the proxy looks up the URI the registrar
    handed out, or the one it got back from a rewritten Contact).
    """
    return _key(uri) if len(uri) <= 256 else _key.__wrapped__(uri)


def needs_flow(uri: str) -> bool:
    """Whether ``uri`` can only be reached over a flow.

    True for a host under ``.invalid`` (RFC 7118 5: a WebSocket client's
    Contact, RFC 6761 6.4: never resolves) and for a URI with the ``ob``
    parameter (RFC 5626 5.3: the client wants requests over its flows).
    """
    parts = sip_uri2parts(uri.strip().strip("<>"))
    if parts is None:
        return False
    domain, _user, _scheme, params, _data = parts
    host = domain.rpartition(":")[0] if domain.count(":") == 1 else domain
    return host.rstrip(".").endswith(".invalid") or "ob" in params


@dataclass(slots=True)
class _Entry:
    flow: Flow
    expires: float
    #: RFC 5626 4.2: ``(+sip.instance, reg-id)``, or None for a plain binding
    ident: tuple[str, int] | None


class FlowTable:
    """Which flows reach which registered contacts (filled by a registrar, read by a proxy).

    A contact has at most one plain flow (the newest registration wins) and
    one flow per RFC 5626 ``(+sip.instance, reg-id)``; :meth:`find` returns
    the newest live one.
    """

    __slots__ = ("_by_contact", "_heap", "_seq")

    def __init__(self) -> None:
        self._by_contact: dict[str, list[_Entry]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0

    def __len__(self) -> int:
        """The number of contacts with flows (expired ones until :meth:`expire`)."""
        return len(self._by_contact)

    def remember(
        self,
        contact: str,
        flow: Flow,
        expires: float,
        *,
        instance: str | None = None,
        reg_id: int | None = None,
    ) -> None:
        """``contact`` is reached over ``flow`` until ``expires`` (the binding's expiry).

        Args:
            contact: the contact URI as registered.
            flow: the leg and peer the REGISTER came from.
            expires: absolute time, on the registrar's loop clock.
            instance: the ``+sip.instance`` of an outbound client (RFC 5626
                4.1); with ``reg_id`` its flow is kept beside its other
                flows, without them the flow replaces the contact's plain
                one.
            reg_id: the ``reg-id`` of that flow (RFC 5626 4.2).
        """
        key = contact_key(contact)
        ident = (instance, reg_id) if instance is not None and reg_id is not None else None
        entries = [e for e in self._by_contact.get(key, ()) if e.ident != ident]
        entries.insert(0, _Entry(flow, expires, ident))
        self._by_contact[key] = entries
        self._seq += 1
        heapq.heappush(self._heap, (expires, self._seq, key))
        if len(self._heap) > 2 * len(self._by_contact) + _HEAP_SLACK:
            self._heap = [
                (e.expires, i, k) for i, (k, es) in enumerate(self._by_contact.items()) for e in es
            ]
            heapq.heapify(self._heap)

    def forget(
        self, contact: str, *, instance: str | None = None, reg_id: int | None = None
    ) -> None:
        """Drop the flow of ``contact`` (its plain one, or that of ``instance``/``reg_id``)."""
        key = contact_key(contact)
        entries = self._by_contact.get(key)
        if entries is None:
            return
        ident = (instance, reg_id) if instance is not None and reg_id is not None else None
        kept = [e for e in entries if e.ident != ident]
        if kept:
            self._by_contact[key] = kept
        else:
            del self._by_contact[key]

    def known(
        self, contact: str, now: float, *, instance: str | None = None, reg_id: int | None = None
    ) -> bool:
        """Whether ``contact`` has a flow that has not expired (alive or not); with
        ``instance`` and ``reg_id``, that flow of it."""
        return any(True for _ in self._entries(contact, now, instance, reg_id))

    def find(
        self, uri: str, now: float, *, instance: str | None = None, reg_id: int | None = None
    ) -> Flow | None:
        """The newest live flow to ``uri`` at ``now`` (with ``instance`` and
        ``reg_id``: that flow, RFC 5626 4.2), or None."""
        for e in self._entries(uri, now, instance, reg_id):
            if e.flow.alive():
                return e.flow
        return None

    def _entries(
        self, uri: str, now: float, instance: str | None, reg_id: int | None
    ) -> Iterator[_Entry]:
        entries = self._by_contact.get(contact_key(uri))
        if not entries:
            return
        ident = (instance, reg_id) if instance is not None and reg_id is not None else None
        for e in entries:
            if e.expires > now and (ident is None or e.ident == ident):
                yield e

    def expire(self, now: float) -> int:
        """Drop the flows expired at ``now`` (only the heap's due entries are looked at).

        Returns:
            How many flows were dropped.
        """
        heap = self._heap
        dropped = 0
        while heap and heap[0][0] <= now:
            _when, _seq, key = heapq.heappop(heap)
            entries = self._by_contact.get(key)
            if entries is None:
                continue
            kept = [e for e in entries if e.expires > now]
            dropped += len(entries) - len(kept)
            if kept:
                self._by_contact[key] = kept
            else:
                del self._by_contact[key]
        return dropped


class FlowTokens:
    """Flow tokens (RFC 5626 5.2): a flow as a URI user part that cannot be forged.

    Args:
        legs: the legs a token may name, as a callable returning the current
            list (``lambda: dispatcher.legs``); a token names a leg by its
            index and is verified against the list's layout.
        key: the HMAC key; default 32 random bytes for this process (tokens
            do not survive a restart, nor do the connections they name).
    """

    __slots__ = ("_key", "_legs")

    def __init__(self, legs: Callable[[], Sequence[Leg]], key: bytes | None = None) -> None:
        self._legs = legs
        secret = key if key is not None else secrets.token_bytes(32)
        self._key = hmac.new(secret, b"netsip flow token", hashlib.sha256).digest()

    def _mac(self, data: bytes, legs: Sequence[Leg]) -> bytes:
        layout = "|".join(leg.key() for leg in legs).encode()
        return hmac.new(self._key, data + b"\0" + layout, hashlib.sha256).digest()[:_MAC_LEN]

    def encode(self, flow: Flow) -> str | None:
        """The token for ``flow``; None if its leg is not in the list."""
        legs = self._legs()
        index = next((i for i, leg in enumerate(legs) if leg is flow.leg), None)
        if index is None:
            return None
        try:
            raw = socket.inet_pton(flow.peer.family, flow.peer.addr)
        except (OSError, ValueError):
            return None
        data = struct.pack("!HH", index, flow.peer.port) + raw
        text = base64.b32encode(data + self._mac(data, legs)).decode("ascii").rstrip("=")
        return _TOKEN_PREFIX + text.lower()

    def decode(self, token: str) -> Flow | None:
        """The flow ``token`` names, or None if it is no token of ours (or its leg is gone)."""
        if not token.startswith(_TOKEN_PREFIX) or not 20 <= len(token) <= 80:
            return None
        text = token[1:].upper()
        try:
            blob = base64.b32decode(text + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError):
            return None
        data, mac = blob[:-_MAC_LEN], blob[-_MAC_LEN:]
        if len(data) not in (8, 20):
            return None
        legs = self._legs()
        if not hmac.compare_digest(mac, self._mac(data, legs)):
            log.debug("flow token %s does not verify", token[:40])
            return None
        index, port = struct.unpack("!HH", data[:4])
        if index >= len(legs):
            return None
        leg = legs[index]
        family = socket.AF_INET if len(data) == 8 else socket.AF_INET6
        if family != leg.src.family:
            return None
        addr = socket.inet_ntop(family, data[4:])
        return Flow(leg, Addr(addr, port, family, None, leg.proto))
