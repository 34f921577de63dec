"""What ``netsip listen`` answers with: SDP answers, and which calls exist.

A 2xx to an INVITE that carries an SDP offer must carry the answer (RFC 3264
5, 6), and a 2xx to an INVITE without an offer must carry one (RFC 3261
13.2.1, 13.3.1). ``netsip listen`` accepts the first audio stream it can
(RTP/AVP, the first codec offered), sends nothing (``a=recvonly``, or
``inactive`` when the offerer only receives) and rejects every other stream
with port 0 (RFC 3264 6). Its media port is a UDP socket that reads and
discards whatever arrives, so a peer that sends RTP gets no ICMP errors.
An offer with no acceptable audio stream gets 488; a body that is not SDP
gets 415 (RFC 3261 21.4.13, with ``Accept: application/sdp``).

The listener remembers the calls it accepted (Call-ID and From tag) so that
a request within a dialog it does not know (a To tag, but no such call) gets
481 (RFC 3261 12.2.2), and a BYE ends the call. The memory is bounded: the
oldest calls are forgotten first.

This is a small stand-in, enough for a test responder; the SDP model of
``Net::SIP::SDP`` is its own module.
"""

from __future__ import annotations

import secrets
import socket
from collections import OrderedDict
from typing import Final

from netsip._log import get_logger
from netsip.eventloop import EV_READ, EventLoopLike
from netsip.packet import Request
from netsip.util import sip_hdrval2parts

__all__ = ["Calls", "MediaSink", "answer_sdp", "offer_sdp", "to_tag"]

log = get_logger(__name__)

#: calls remembered at most (each a short string)
MAX_CALLS: Final = 100_000
#: datagrams read per readiness of the media sink
_SINK_READS: Final = 64
#: RTP/AVP payload types of the offer we take without an rtpmap (RFC 3551 6)
_STATIC_AUDIO: Final = frozenset(range(0, 24))


def to_tag(request: Request) -> str | None:
    """The tag of the request's To header, or None."""
    to = request.get_header("to")
    if to is None or "tag" not in to.lower():
        return None  # (cheap test first: most requests have no To tag)
    return sip_hdrval2parts("to", to)[1].get("tag") or None


def _dialog_key(request: Request) -> str | None:
    frm = request.get_header("from")
    if frm is None:
        return None
    tag = sip_hdrval2parts("from", frm)[1].get("tag") or ""
    return f"{request.callid()}\0{tag}"


class Calls:
    """The calls a listener has accepted, by Call-ID and From tag (bounded)."""

    def __init__(self, limit: int = MAX_CALLS) -> None:
        self._calls: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, request: Request) -> None:
        key = _dialog_key(request)
        if key is None:
            return
        self._calls[key] = None
        self._calls.move_to_end(key)
        if len(self._calls) > self._limit:
            self._calls.popitem(last=False)

    def __contains__(self, request: object) -> bool:
        if not isinstance(request, Request):
            return False
        key = _dialog_key(request)
        return key is not None and key in self._calls

    def end(self, request: Request) -> bool:
        """Forget the call of ``request`` (a BYE); False if there was none."""
        key = _dialog_key(request)
        if key is None or key not in self._calls:
            return False
        del self._calls[key]
        return True


class MediaSink:
    """UDP sockets, one per local IP, that read and discard media."""

    def __init__(self, loop: EventLoopLike) -> None:
        self._loop = loop
        self._socks: dict[str, socket.socket] = {}

    def port(self, ip: str, family: int) -> int:
        """The port of the sink on ``ip`` (bound on first use)."""
        sock = self._socks.get(ip)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((ip, 0))
                sock.setblocking(False)
                self._loop.add_fd(sock.fileno(), EV_READ, lambda _fd, s=sock: _discard(s))
            except BaseException:
                sock.close()
                raise
            self._socks[ip] = sock
        return int(sock.getsockname()[1])

    def close(self) -> None:
        for sock in self._socks.values():
            self._loop.del_fd(sock.fileno())
            sock.close()
        self._socks.clear()


def _discard(sock: socket.socket) -> None:
    for _ in range(_SINK_READS):
        try:
            sock.recv(2048)
        except OSError:  # nothing left (EAGAIN), or an ICMP error reported
            return


def _session(ip: str) -> list[str]:
    fam = "IP6" if ":" in ip else "IP4"
    sid = secrets.randbelow(2**31)
    return ["v=0", f"o=netsip {sid} {sid} IN {fam} {ip}", "s=-", f"c=IN {fam} {ip}", "t=0 0"]


def offer_sdp(ip: str, port: int) -> str:
    """An offer of one audio stream (G.711 PCMU and PCMA) that sends nothing."""
    lines = [*_session(ip), f"m=audio {port} RTP/AVP 0 8", "a=recvonly"]
    return "\r\n".join(lines) + "\r\n"


def answer_sdp(offer: str, ip: str, port: int) -> str | None:
    """The answer to ``offer``: the first audio stream accepted, the rest rejected.

    Returns:
        The answer, or None when no stream can be accepted (488), including
        an offer that is no SDP at all.
    """
    media: list[list[str]] = []  # each m= section: its lines
    session_dir = "sendrecv"
    for raw in offer.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        elif line in ("a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv"):
            session_dir = line[2:]
    if not media:
        return None
    out = _session(ip)
    accepted = False
    for section in media:
        parts = section[0][2:].split()
        if len(parts) < 4:
            return None  # an m= line with no format: not SDP (RFC 8866 5.14)
        kind, mport, proto, fmts = parts[0], parts[1], parts[2], parts[3:]
        rtpmap = {a.split(None, 1)[0][9:]: a for a in section[1:] if a.startswith("a=rtpmap:")}
        usable = [f for f in fmts if f in rtpmap or (f.isdigit() and int(f) in _STATIC_AUDIO)]
        if accepted or kind != "audio" or proto != "RTP/AVP" or mport == "0" or not usable:
            out.append(f"m={kind} 0 {proto} {fmts[0]}")  # rejected (RFC 3264 6)
            continue
        accepted = True
        fmt = usable[0]
        out.append(f"m=audio {port} RTP/AVP {fmt}")
        if fmt in rtpmap:
            out.append(rtpmap[fmt])
        direction = session_dir
        for a in section[1:]:
            if a in ("a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv"):
                direction = a[2:]
        # we never send: receive what the offerer sends, if it sends at all
        out.append("a=recvonly" if direction in ("sendrecv", "sendonly") else "a=inactive")
    return "\r\n".join(out) + "\r\n" if accepted else None
