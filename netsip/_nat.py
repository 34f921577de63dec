"""The NAT helper hook of :class:`netsip.proxy.StatelessProxy` (its ``do_nat``).

Ports ``do_nat`` of Perl's ``Net::SIP::StatelessProxy`` and the interface of
``Net::SIP::NATHelper::Base`` that it calls: a packet that changes legs and
carries SDP gets its media addresses from the helper (which relays RTP
between the legs); ACK activates the session, CANCEL, BYE and a failed
INVITE close it.

Differences from Net::SIP: the session identity is a :class:`NatBasic`
record (Perl: an array); ``idfrom``/``idto`` hold the whole address and the
tag (Perl writes the literal ``user`` for tagged parties); SDP inside a
multipart body is left alone (Net::SIP has no multipart).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from netsip._log import get_logger
from netsip.leg import ForwardError, Leg
from netsip.packet import Packet, Request, Response
from netsip.sdp import SDP, SDPError, sdp_from_body
from netsip.util import sip_hdrval2parts, sip_uri2parts

__all__ = ["NATHelper", "NatBasic", "ResponseCodes", "nat_packet"]

log = get_logger("netsip.proxy")

#: entries per generation of :class:`ResponseCodes` (Perl's limit)
_GENERATION = 5000


@dataclass(frozen=True, slots=True)
class NatBasic:
    """What identifies a media session for the NAT helper (Perl's ``NAT_BASIC`` array).

    ``idfrom``/``idto`` are ``"<uri>\\0<tag>\\0<leg ip:port>"`` for each side
    (the tag is empty if the header has none); ``cseq`` is None when the
    whole call ends (BYE).
    """

    callid: str
    cseq: int | None
    idfrom: str
    idto: str
    uri_from: str
    uri_to: str


class NATHelper(Protocol):
    """The NAT helper the proxy calls for SDP bodies (``Net::SIP::NATHelper::Base``'s methods).

    ``side`` is 0 for requests (allocate on the From side), 1 for responses.
    """

    def allocate_sockets(
        self, nat: NatBasic, side: int, addr: str, media: list[dict[str, object]]
    ) -> Sequence[tuple[str, int]] | None:
        """New ``(ip, port)`` per media of the SDP on address ``addr``; None if out of sockets."""
        ...

    def activate_session(self, nat: NatBasic) -> object:
        """Activate the session; true if both sides are allocated."""
        ...

    def close_session(self, nat: NatBasic) -> object:
        """Close the session (of the whole call when ``nat.cseq`` is None)."""
        ...


@dataclass(slots=True)
class ResponseCodes:
    """Failure codes of INVITEs, for their ACK: two generations of at most 5000 (as Perl)."""

    recent: dict[tuple[str, int, str, str], int] = field(default_factory=dict)
    older: dict[tuple[str, int, str, str], int] = field(default_factory=dict)

    def add(self, key: tuple[str, int, str, str], code: int) -> None:
        if len(self.recent) >= _GENERATION:
            self.older = self.recent
            self.recent = {}
        self.recent[key] = code

    def get(self, key: tuple[str, int, str, str]) -> int:
        return self.recent.get(key) or self.older.get(key) or -1


def _tag(value: str) -> str:
    try:
        return sip_hdrval2parts("from", value)[1].get("tag") or ""
    except ValueError:
        return ""


def nat_packet(
    nh: NATHelper, codes: ResponseCodes, packet: Packet, incoming_leg: Leg, outgoing_leg: Leg
) -> ForwardError | None:
    """``StatelessProxy.do_nat`` for a packet that changes legs, with a helper."""
    cseq = packet.cseq() or ""
    cseq_method = cseq.split()[-1] if cseq.split() else ""
    body: SDP | None = None
    if cseq_method in ("INVITE", "ACK") and packet.body():
        ctype = packet.get_header("content-type") or ""
        try:
            body = sdp_from_body(ctype, packet.body())
        except SDPError as exc:
            log.info("malformed SDP body: %s", exc)
            return (500, "malformed SDP body")
        if body is not None and not ctype.lower().startswith("application/sdp"):
            log.info("SDP in a multipart body is not rewritten")
            body = None
    request = packet if isinstance(packet, Request) else None
    method = request.method() if request is not None else ""
    track: int | None = None
    if isinstance(packet, Response) and packet.method() == "INVITE" and packet.code() >= 400:
        track = packet.code()
    if body is None and method not in ("ACK", "CANCEL", "BYE") and track is None:
        return None

    ids: list[str] = []
    uris: list[str] = []
    for key in ("from", "to"):
        value = packet.get_header(key)
        if value is None:
            return (0, f"no {key.upper()} header in packet")
        uparts = sip_uri2parts(sip_hdrval2parts("from", value)[0])
        if uparts is None:
            return (0, f"bad {key.upper()} header in packet")
        dom, user, proto = uparts[0], uparts[1], uparts[2]
        uri = f"{proto}:{user}@{dom}" if user else f"{proto}:{dom}"
        uris.append(uri)
        ids.append(f"{uri}\0{_tag(value)}")
    ileg, oleg = incoming_leg.laddr(1), outgoing_leg.laddr(1)
    if request is not None:
        idfrom, idto, side = f"{ids[0]}\0{ileg}", f"{ids[1]}\0{oleg}", 0
    else:
        idfrom, idto, side = f"{ids[0]}\0{oleg}", f"{ids[1]}\0{ileg}", 1
    number = packet.cseq_number()
    if number is None:
        return (0, "no CSeq in packet")
    callid = packet.callid() or ""
    nat = NatBasic(callid, number, idfrom, idto, uris[0], uris[1])
    rkey = (callid, number, idfrom, idto)

    if track is not None:
        codes.add(rkey, track)
        log.debug("close session %s|%d because of %d", callid, number, track)
        nh.close_session(nat)
        return None
    if method == "CANCEL":
        nh.close_session(nat)
        return None
    if method == "BYE":
        nh.close_session(dataclasses.replace(nat, cseq=None))
        return None
    if body is not None:
        new_media = nh.allocate_sockets(nat, side, outgoing_leg.laddr(0), body.get_media())
        if not new_media:
            log.info("allocation of RTP sockets failed for %s|%d", callid, number)
            return (0, "allocation of RTP sockets failed")
        try:
            body.replace_media_listen(list(new_media))
        except SDPError as exc:
            return (0, f"NAT helper: {exc}")
        packet.set_body(body.as_string())
    if method == "ACK":
        code = codes.get(rkey)
        if code <= 400 and not nh.activate_session(nat):
            log.debug("session %s|%d still incomplete in ACK", callid, number)
            return (0, "incomplete session in ACK")
    elif not nh.activate_session(nat):
        log.debug("session %s|%d not yet complete", callid, number)
    return None
