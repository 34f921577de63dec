"""The offer/answer and media half of a call (:mod:`netsip._call`).

Part of the port of Perl's ``Net::SIP::Simple::Call``: :class:`CallMedia` is
the base of :class:`netsip._call.Call` that owns the RTP sockets of the
call's streams, builds our SDP offers and answers (RFC 3264, through
:mod:`netsip.sdp`), takes the peer's SDP and runs the media session
(:mod:`netsip.rtp`). :func:`sdp_of` reads the SDP of a message body and says
what to answer when it cannot (:class:`BodyRejectedError`).

Differences from Net::SIP: see :mod:`netsip._call` (hold as ``a=sendonly``,
bad SDP answered with 400/415/488).
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet
from netsip.rtp import DTMFRequest, MediaArgs, MediaSession, create_rtp_sockets
from netsip.sdp import (
    PCMA,
    PCMU,
    SDP,
    TELEPHONE_EVENT,
    Codec,
    Negotiated,
    SDPError,
    answer,
    negotiate,
    offer,
    sdp_from_body,
)
from netsip.util import invoke_callback

__all__ = ["DEFAULT_RTP_PARAM", "BodyRejectedError", "CallMedia", "sdp_of"]

log = logging.getLogger(__name__)

#: Perl's default ``rtp_param``: PCMU/8000, 160 bytes every 20 ms
DEFAULT_RTP_PARAM: tuple[int, int, float] = (0, 160, 0.02)
_STATIC_CODECS = {0: PCMU, 8: PCMA}


class MediaHost(Protocol):
    """What the media of a call needs of its user agent."""

    eventloop: EventLoop

    def default_leg(self) -> Leg: ...


class CallMedia:
    """Our SDP, the peer's, the RTP sockets and the media session of a call."""

    param: dict[str, Any]
    error: str | None
    media: MediaSession | None
    dtmf_events: deque[DTMFRequest]
    _sockets: list[tuple[socket.socket, socket.socket] | None]
    _local_sdp: SDP | None
    _session_id: int
    ua: MediaHost
    #: what the running media session was started with (see _start_media)
    _media_key: tuple[object, ...] | None = None
    #: the ``call_on_hold`` of our last offer
    _offer_hold: object = None

    def get_peer(self) -> str:
        """The peer of the call (the subclass knows its dialog)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- SDP

    def _clear_sdp(self) -> None:
        for key in ("sdp", "sdp_peer", "media_lsocks"):
            self.param.pop(key, None)
        self._local_sdp = None
        self._close_sockets()

    def _laddr(self) -> str:
        leg = self.param.get("leg")
        if isinstance(leg, Leg):
            return leg.laddr(0)
        return self.ua.default_leg().laddr(0)

    def _codecs(self) -> list[Codec]:
        """The codec of ``rtp_param`` (PCMU by default), then telephone-event."""
        rp = tuple(self.param.get("rtp_param") or DEFAULT_RTP_PARAM)
        codec = _STATIC_CODECS.get(int(rp[0]), PCMU)
        if len(rp) > 3 and rp[3]:
            name, _, clock = str(rp[3]).partition("/")
            codec = Codec(name, int(clock) if clock.isdigit() else 8000)
        return [codec, TELEPHONE_EVENT]

    def _versioned(self, sdp: SDP) -> SDP:
        """``sdp`` as the next version of our session (RFC 3264 5, 8: same
        session id, the version one up)."""
        prev = self._local_sdp
        version = (prev.version() or 0) + 1 if prev is not None else 1
        lines = []
        for kind, value in sdp.lines:
            parts = value.split()
            if kind == "o" and len(parts) >= 3:
                parts[1], parts[2] = str(self._session_id), str(version)
            lines.append((kind, " ".join(parts) if kind == "o" else value))
        sdp.lines = lines
        return sdp

    def _ensure_sockets(self, count: int) -> list[int]:
        """RTP/RTCP socket pairs for ``count`` streams; their RTP ports."""
        given = self.param.get("media_lsocks")
        if given is not None:
            self._sockets = list(given)
        while len(self._sockets) < count:
            _port, pairs = create_rtp_sockets(self._laddr(), 1)
            self._sockets.extend(pairs)
        self.param["media_lsocks"] = self._sockets
        return [pair[0].getsockname()[1] if pair is not None else 0 for pair in self._sockets]

    def _hold(self) -> str | None:
        hold = self.param.get("call_on_hold")
        self.param["call_on_hold"] = False  # (one-shot, as in Perl)
        if not hold:
            return None
        return "inactive" if hold == "inactive" else "sendonly"

    def _local_offer(self) -> SDP:
        """Our offer: the ``sdp`` parameter, or one audio stream on new sockets."""
        self._offer_hold = self.param.get("call_on_hold")  # (to offer it again after a 491)
        hold = self._hold()
        given = self.param.get("sdp")
        if given is not None and self._local_sdp is None:
            sdp = given if isinstance(given, SDP) else SDP.new_from_string(str(given))
            if self.param.get("media_lsocks") is None:
                raise ValueError("an sdp parameter needs media_lsocks (its sockets) too")
            self._sockets = list(self.param["media_lsocks"])
        else:
            ports = self._ensure_sockets(1)
            sdp = self._versioned(
                offer(
                    addr=self._laddr(),
                    media=[("audio", ports[0])],
                    codecs=self._codecs(),
                    direction=hold or "sendrecv",
                )
            )
        self._local_sdp = sdp
        self.param["sdp"] = sdp
        return sdp

    def _local_answer(self, peer: SDP) -> SDP:
        """Our answer to the peer's offer, on our sockets (one pair per m-line)."""
        hold = self._hold()
        ports = self._ensure_sockets(len(peer.media))
        sdp = self._versioned(
            answer(
                peer,
                addr=self._laddr(),
                ports=ports[: len(peer.media)],
                codecs=self._codecs(),
                direction=hold,
            )
        )
        self._local_sdp = sdp
        self.param["sdp"] = sdp
        return sdp

    def _set_peer(self, peer: SDP) -> bool:
        """Take the peer's SDP for the session; False if unusable."""
        local = self._local_sdp
        if local is None:
            self.error = "no local SDP"
            return False
        if len(peer.media) != len(local.media):
            self.error = "Unexpected number of media entries in SDP from peer"
            log.warning("%s", self.error)
            return False
        self.param["sdp_peer"] = peer
        return True

    # --------------------------------------------------------------- media

    def _start_media(self) -> None:
        """(Re)start ``init_media`` with what both SDPs negotiated.

        A session that runs with the same negotiation, sockets and
        ``init_media`` goes on (early media into the call, a session refresh:
        RFC 3960, RFC 4028 10) instead of starting over.
        """
        local, peer = self._local_sdp, self.param.get("sdp_peer")
        init = self.param.get("init_media")
        if local is None or not isinstance(peer, SDP) or init is None:
            self.rtp_cleanup()
            return
        streams = negotiate(local, peer)
        key = (streams, tuple(self._sockets), init)
        if self.media is not None and key == self._media_key:
            return
        self.rtp_cleanup()
        args = self._media_args(streams)
        try:
            self.media = invoke_callback(init, self, args)
        except (OSError, ValueError) as exc:
            log.warning("media for %s failed: %s", self.get_peer(), exc)
            self.error = str(exc)
            self.media = None
        self._media_key = key if self.media is not None else None

    def _media_args(self, streams: list[Negotiated | None]) -> MediaArgs:
        param = self.param
        cb_dtmf = param.get("cb_dtmf")
        wanted = str(param.get("dtmf_methods") or "audio,rfc2833")
        lsocks: list[tuple[socket.socket, socket.socket] | None] = []
        raddr: list[tuple[tuple[str, int], tuple[str, int] | None] | None] = []
        xtract: list[tuple[int | None, int | None] | None] = []
        rtp_param = tuple(param.get("rtp_param") or DEFAULT_RTP_PARAM)[:3]
        chosen: tuple[int, int, float] | None = None
        for i, n in enumerate(streams):
            pair = self._sockets[i] if i < len(self._sockets) else None
            if n is None or pair is None:
                lsocks.append(None)
                raddr.append(None)
                xtract.append(None)
                continue
            lsocks.append(pair)
            raddr.append((n.remote, n.remote_rtcp) if n.send and n.remote is not None else None)
            if chosen is None and n.media == "audio":
                samples = n.codec.clock * n.ptime // 1000
                chosen = (n.payload_type, samples, n.ptime / 1000)
            if n.media == "audio":
                # (the sender takes the telephone-event type from here too;
                # the extractor runs only with a cb_dtmf)
                rfc = n.dtmf_type if "rfc2833" in wanted else None
                audio = n.payload_type if "audio" in wanted and n.payload_type in (0, 8) else None
                xtract.append((rfc, audio) if rfc is not None or audio is not None else None)
            else:
                xtract.append(None)
        if chosen is None:
            chosen = (int(rtp_param[0]), int(rtp_param[1]), float(rtp_param[2]))
        return MediaArgs(
            loop=self.ua.eventloop,
            lsocks=lsocks,
            raddr=raddr,
            rtp_param=chosen,
            dtmf_events=self.dtmf_events,
            dtmf_xtract=xtract,
            cb_dtmf=(lambda ev, dur: invoke_callback(cb_dtmf, ev, dur)) if cb_dtmf else None,
            cb_rtp_done=_callback_or_none(param.get("cb_rtp_done"), self),
        )

    def rtp_cleanup(self) -> None:
        """Stop the media session (the sockets stay for the next one)."""
        media, self.media = self.media, None
        if media is not None:
            media.close()

    def _close_sockets(self) -> None:
        sockets, self._sockets = self._sockets, []
        self.param.pop("media_lsocks", None)
        for pair in sockets:
            if pair is not None:
                for sock in pair:
                    sock.close()


def _callback_or_none(cb: object, call: object) -> Callable[[], None] | None:
    if cb is None:
        return None
    return lambda: invoke_callback(cb, call)


class BodyRejectedError(ValueError):
    """A body we cannot take: the status to answer with."""

    def __init__(self, code: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers


def sdp_of(packet: Packet) -> SDP | None:
    """The SDP of a packet's body, None without one.

    Raises:
        BodyRejectedError: 415 for a body that holds no SDP, 400 for SDP that
            does not parse (RFC 3261 21.4.19, 21.4.1).
    """
    body = packet.body()
    if not body:
        return None
    ctype = packet.get_header("content-type") or "application/sdp"
    try:
        sdp = sdp_from_body(ctype, body)
    except SDPError as exc:
        raise BodyRejectedError(400, f"malformed SDP: {exc}") from None
    if sdp is None:
        raise BodyRejectedError(
            415, f"no SDP in a {ctype} body", {"accept": "application/sdp, multipart/mixed"}
        )
    return sdp
