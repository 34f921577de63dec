"""SDP: parsing, building and RFC 3264 offer/answer.

Perl module ported: ``Net::SIP::SDP``.

How it works: :meth:`SDP.new_from_string` parses an RFC 8866 body into session-level
lines and :class:`Media` sections (the ``c=`` of the session is inherited by media
without their own); :meth:`SDP.as_string` writes it back.  :func:`offer`,
:func:`answer` and :func:`negotiate` implement RFC 3264 on top; :func:`sdp_from_body`
finds the SDP in a message body.  Pure: no sockets, no time.

Differences from Net::SIP:

- Net::SIP's SDP has no offer/answer logic; :func:`offer`, :func:`answer` and
  :func:`negotiate` follow RFC 3264 (codec intersection, port 0 for rejected
  streams, mirrored directions, o= version bump on re-offers).
- No multipart support in Net::SIP; :func:`sdp_from_body` reads multipart/mixed and
  multipart/alternative (RFC 2046, RFC 5621).
- Stricter: a media section without any ``c=`` (session or media) is an error
  (RFC 8866 5.7), as are malformed ``m=`` lines; input is capped in size and lines.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from netsip.util import NetSIPError

__all__ = [
    "SDP",
    "Codec",
    "Media",
    "Negotiated",
    "SDPError",
    "answer",
    "negotiate",
    "offer",
    "sdp_from_body",
]

log = logging.getLogger(__name__)

MAX_SIZE = 65536
MAX_LINES = 2000
MAX_MEDIA = 256
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_LINE = re.compile(r"^([a-z])=(.*)$")


class SDPError(NetSIPError, ValueError):
    """Malformed or unacceptable SDP."""


@dataclass(frozen=True, slots=True)
class Codec:
    """A codec: of an ``a=rtpmap`` line or a static payload type (RFC 3551).

    Attributes:
        name: the encoding name (``PCMU``).
        clock: the clock rate in Hz.
        channels: the number of channels.
    """

    name: str
    clock: int
    channels: int = 1


# RFC 3551 table 4/5: static payload types
STATIC: dict[int, Codec] = {
    0: Codec("PCMU", 8000),
    3: Codec("GSM", 8000),
    4: Codec("G723", 8000),
    8: Codec("PCMA", 8000),
    9: Codec("G722", 8000),
    10: Codec("L16", 44100, 2),
    11: Codec("L16", 44100),
    13: Codec("CN", 8000),
    18: Codec("G729", 8000),
}
PCMU = Codec("PCMU", 8000)
PCMA = Codec("PCMA", 8000)
TELEPHONE_EVENT = Codec("telephone-event", 8000)
DEFAULT_CODECS: tuple[Codec, ...] = (PCMU, PCMA, TELEPHONE_EVENT)


# RFC 8866 6.6: a=rtpmap:<payload type> <encoding name>/<clock rate>[/<parameters>]
_RTPMAP = re.compile(r"(\d+)\s+([^/\s]+)/(\d+)(?:/(\d+))?\s*$")


def _is_hold_addr(addr: str | None) -> bool:
    return addr in ("0.0.0.0", "::")


@dataclass(slots=True)
class Media:
    """One m= section."""

    media: str
    port: int
    range: int
    proto: str
    fmt: list[str]
    addr: str | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)
    session_direction: str | None = None  # inherited from the session level
    own_c: bool = False  # this section has its own c= line

    def attributes(self, name: str) -> list[str]:
        """The values of the ``a=name:value`` lines of this media section."""
        out = []
        for t, v in self.lines:
            if t != "a":
                continue
            k, _, rest = v.partition(":")
            if k == name:
                out.append(rest)
        return out

    @property
    def direction(self) -> str:
        """``sendrecv``, ``sendonly``, ``recvonly`` or ``inactive``.

        The media's own attribute, else the session's (RFC 3264 6.1).
        """
        # RFC 3264 6.1: media-level attribute wins over session-level
        d: str | None = None
        for t, v in self.lines:
            if t == "a" and v in DIRECTIONS:
                d = v
        if d is None:
            d = self.session_direction or "sendrecv"
        if _is_hold_addr(self.addr):
            # RFC 3264 8.4: legacy hold with c=0.0.0.0
            return "inactive" if d in ("recvonly", "inactive") else "sendonly"
        return d

    @property
    def rtpmap(self) -> dict[int, Codec]:
        """The codecs by payload type: static types (RFC 3551) and ``a=rtpmap`` lines."""
        out: dict[int, Codec] = {}
        for f in self.fmt:
            if f.isdigit() and int(f) in STATIC:
                out[int(f)] = STATIC[int(f)]
        for t, v in self.lines:
            if t == "a" and v.startswith("rtpmap:"):
                m = _RTPMAP.match(v, 7)
                if m:
                    out[int(m[1])] = Codec(m[2], int(m[3]), int(m[4] or 1))
        return out

    @property
    def ptime(self) -> int | None:
        """The ``a=ptime`` value in milliseconds, or None."""
        for v in self.attributes("ptime"):
            if v.strip().isdigit():
                return int(v.strip())
        return None


def _parse_c(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SDPError(f"bad c= line: {value!r}")
    addr = parts[2].split("/")[0]
    return addr


def _parse_m(value: str) -> tuple[str, int, int, str, list[str]]:
    parts = value.split()
    if len(parts) < 3:
        raise SDPError(f"bad m= line: {value!r}")
    port_s, _, range_s = parts[1].partition("/")
    if not port_s.isdigit() or (range_s and not range_s.isdigit()):
        raise SDPError(f"bad port in m= line: {value!r}")
    port = int(port_s)
    rng = int(range_s) if range_s else 1
    if port > 65535 or rng < 1 or rng > 65535:
        raise SDPError(f"port out of range in m= line: {value!r}")
    return parts[0], port, rng, parts[2], parts[3:]


class SDP:
    """An SDP session description (RFC 8866)."""

    __slots__ = ("lines", "media")

    def __init__(self, lines: list[tuple[str, str]], media: list[Media]) -> None:
        self.lines = lines  # session-level (type, value), in order
        self.media = media

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SDP) and self.as_string() == other.as_string()

    def __hash__(self) -> int:
        return hash(self.as_string())

    def __repr__(self) -> str:
        return f"SDP({self.as_string()!r})"

    @classmethod
    def new_from_string(cls, data: str | bytes) -> SDP:
        """Parse an SDP body (RFC 8866).

        Raises:
            SDPError: the body is too large, not UTF-8, or not valid SDP.
        """
        if isinstance(data, bytes):
            if len(data) > MAX_SIZE:
                raise SDPError("SDP too large")
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SDPError(f"SDP is not UTF-8: {exc}") from None
        if len(data) > MAX_SIZE:
            raise SDPError("SDP too large")
        raw = data.replace("\r\n", "\n").split("\n")
        if len(raw) > MAX_LINES:
            raise SDPError("SDP has too many lines")
        session: list[tuple[str, str]] = []
        media: list[Media] = []
        sess_addr: str | None = None
        sess_dir: str | None = None
        for i, raw_line in enumerate(raw):
            line = raw_line.rstrip()
            if not line:
                continue
            m = _LINE.match(line)
            if not m:
                raise SDPError(f"bad SDP line {i + 1}: {line[:60]!r}")
            t, v = m[1], m[2]
            if not session and t != "v":
                raise SDPError("SDP does not start with v=")
            if t == "v" and v != "0":
                raise SDPError(f"unsupported SDP version {v!r}")
            if t == "m":
                if len(media) >= MAX_MEDIA:
                    raise SDPError("too many m= lines")
                kind, port, rng, proto, fmt = _parse_m(v)
                media.append(Media(kind, port, rng, proto, fmt, sess_addr, [], sess_dir))
                continue
            if t == "c":
                addr = _parse_c(v)
                if media:
                    media[-1].addr = addr
                    media[-1].own_c = True
                else:
                    sess_addr = addr
                    session.append((t, v))
                continue
            if media:
                media[-1].lines.append((t, v))
            else:
                if t == "a" and v in DIRECTIONS:
                    sess_dir = v
                session.append((t, v))
        if not session:
            raise SDPError("empty SDP")
        for md in media:
            if md.addr is None:
                raise SDPError(f"no c= line for m={md.media}")
        return cls(session, media)

    @classmethod
    def new_from_parts(cls, global_: Mapping[str, object], *media: Mapping[str, object]) -> SDP:
        """Build as Net::SIP does: global {addr, o-line fields...}, media dicts."""
        addr = str(global_.get("addr", "0.0.0.0"))
        ip = "IP6" if ":" in addr else "IP4"
        o = global_.get("o")
        if o is None:
            sid = global_.get("id", 1)
            ver = global_.get("version", 1)
            user = global_.get("username", "-")
            o = f"{user} {sid} {ver} IN {ip} {addr}"
        lines: list[tuple[str, str]] = [
            ("v", "0"),
            ("o", str(o)),
            ("s", str(global_.get("s", "-"))),
            ("c", f"IN {ip} {addr}"),
            ("t", str(global_.get("t", "0 0"))),
        ]
        for a in _as_list(global_.get("a")):
            lines.append(("a", a))
        mlist = []
        for md in media:
            fmt = md.get("fmt", [])
            fmt_l = [str(f) for f in fmt] if isinstance(fmt, list | tuple) else str(fmt).split()
            maddr = md.get("addr")
            m = Media(
                media=str(md.get("media", "audio")),
                port=int(str(md["port"])),
                range=int(str(md.get("range", 1))),
                proto=str(md.get("proto", "RTP/AVP")),
                fmt=fmt_l,
                addr=str(maddr) if maddr is not None else addr,
                own_c=maddr is not None,
                lines=[
                    (k, x)
                    for k in ("i", "b", "k", "a")  # RFC 8866 5 order
                    for x in _as_list(md.get(k))
                ],
            )
            mlist.append(m)
        return cls(lines, mlist)

    def as_string(self) -> str:
        """The SDP text: CRLF line ends, a media ``c=`` only where it differs."""
        out = [f"{t}={v}" for t, v in self.lines]
        sess_addr = self._session_addr()
        for m in self.media:
            port = f"{m.port}/{m.range}" if m.range > 1 else str(m.port)
            out.append(f"m={m.media} {port} {m.proto}" + "".join(" " + f for f in m.fmt))
            if m.addr is not None and (m.own_c or m.addr != sess_addr):
                ip = "IP6" if ":" in m.addr else "IP4"
                out.append(f"c=IN {ip} {m.addr}")
            out.extend(f"{t}={v}" for t, v in m.lines)
        return "\r\n".join(out) + "\r\n"

    def __bytes__(self) -> bytes:
        return self.as_string().encode()

    def content_type(self) -> str:
        """``application/sdp``, for the Content-Type header."""
        return "application/sdp"

    def _session_addr(self) -> str | None:
        for t, v in self.lines:
            if t == "c":
                return _parse_c(v)
        return None

    def get_media(self) -> list[dict[str, object]]:
        """The media as Net::SIP gives them.

        Returns:
            one dict per ``m=`` section, with ``addr``, ``port``, ``range``,
            ``proto``, ``media``, ``fmt`` and ``lines``.
        """
        return [
            {
                "addr": m.addr,
                "port": m.port,
                "range": m.range,
                "proto": m.proto,
                "media": m.media,
                "fmt": list(m.fmt),
                "lines": [[t, v] for t, v in m.lines],
            }
            for m in self.media
        ]

    def replace_media_listen(self, new: Sequence[tuple[str, int] | Mapping[str, object]]) -> None:
        """Replace address and port of each media (as Net::SIP), in order."""
        if len(new) != len(self.media):
            raise SDPError("replace_media_listen: wrong number of media")
        for m, n in zip(self.media, new, strict=True):
            if isinstance(n, Mapping):
                addr, port = str(n["addr"]), int(str(n["port"]))
            else:
                addr, port = n
            m.addr = addr
            m.own_c = True
            m.port = port
        # keep the session c= in step with the first media (Net::SIP does likewise)
        if self.media:
            first = self.media[0].addr or "0.0.0.0"
            ip = "IP6" if ":" in first else "IP4"
            self.lines = [(t, f"IN {ip} {first}" if t == "c" else v) for t, v in self.lines]

    def name2int(self, name: str, index: int) -> int | None:
        """Payload type of codec *name* (e.g. "telephone-event/8000") in media *index*."""
        if not 0 <= index < len(self.media):
            return None
        want = name.lower()
        for pt, c in self.media[index].rtpmap.items():
            full = f"{c.name}/{c.clock}".lower()
            if want in (full, c.name.lower()):
                return pt
        return None

    def version(self) -> int | None:
        """The session version of the ``o=`` line, or None without one."""
        for t, v in self.lines:
            if t == "o":
                p = v.split()
                if len(p) >= 3 and p[2].isdigit():
                    return int(p[2])
        return None

    def next_version(self) -> SDP:
        """A copy with the o= version incremented (RFC 3264 8: each new offer)."""
        new = copy.deepcopy(self)
        lines = []
        for t, v in new.lines:
            p = v.split()
            if t == "o" and len(p) >= 3 and p[2].isdigit():
                p[2] = str(int(p[2]) + 1)
                lines.append((t, " ".join(p)))
            else:
                lines.append((t, v))
        new.lines = lines
        return new


def _as_list(v: object) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list | tuple):
        return [str(x) for x in v]
    raise SDPError(f"bad attribute list {v!r}")


def _codec_lines(pt: int, c: Codec) -> str:
    ch = f"/{c.channels}" if c.channels != 1 else ""
    return f"rtpmap:{pt} {c.name}/{c.clock}{ch}"


def offer(
    *,
    addr: str,
    media: Sequence[tuple[str, int]],
    codecs: Sequence[Codec] = DEFAULT_CODECS,
    direction: str = "sendrecv",
    ptime: int = 20,
    session_id: int | None = None,
) -> SDP:
    """Build an offer: one m= per (kind, port), with *codecs* (RFC 3264 5)."""
    if direction not in DIRECTIONS:
        raise SDPError(f"bad direction {direction!r}")
    sid = session_id if session_id is not None else 1
    mlist = []
    for kind, port in media:
        fmt: list[str] = []
        attrs: list[str] = []
        dyn = 96
        for c in codecs:
            pt = next((k for k, s in STATIC.items() if s == c), None)
            if pt is None:
                pt, dyn = dyn, dyn + 1
            fmt.append(str(pt))
            attrs.append(_codec_lines(pt, c))
            if c.name.lower() == "telephone-event":
                attrs.append(f"fmtp:{pt} 0-15")
        attrs += [f"ptime:{ptime}", direction]
        mlist.append({"media": kind, "port": port, "fmt": fmt, "a": attrs})
    return SDP.new_from_parts({"addr": addr, "id": sid, "version": 1}, *mlist)


def answer(
    offer: SDP,
    *,
    addr: str,
    ports: Sequence[int],
    codecs: Sequence[Codec] = DEFAULT_CODECS,
    direction: str | None = None,
) -> SDP:
    """Answer *offer* (RFC 3264 6): same m-lines in the same order."""
    if len(ports) < len(offer.media):
        raise SDPError("not enough ports for the offered media")
    names = {(c.name.lower(), c.clock) for c in codecs}
    out = []
    accepted = 0
    for m, port in zip(offer.media, ports, strict=False):
        rtpmap = m.rtpmap
        fmt: list[str] = []
        attrs: list[str] = []
        has_audio = False
        if m.port != 0 and m.proto.upper().startswith("RTP/"):
            fmtps = m.attributes("fmtp")
            for f in m.fmt:
                if not f.isdigit() or int(f) not in rtpmap:
                    continue
                c = rtpmap[int(f)]
                if (c.name.lower(), c.clock) not in names:
                    continue
                if c.name.lower() != "telephone-event":
                    has_audio = True
                fmt.append(f)
                attrs.append(_codec_lines(int(f), c))
                for fv in fmtps:
                    if fv.split(" ", 1)[0] == f:
                        attrs.append("fmtp:" + fv)
        if not has_audio:
            # RFC 3264 6: reject the stream with port 0, keep the formats
            out.append({"media": m.media, "port": 0, "proto": m.proto, "fmt": m.fmt or ["0"]})
            continue
        accepted += 1
        attrs.append(_mirror(m.direction, direction))
        if m.ptime:
            attrs.append(f"ptime:{m.ptime}")
        out.append({"media": m.media, "port": port, "proto": m.proto, "fmt": fmt, "a": attrs})
    if not accepted:
        raise SDPError("no acceptable media in offer")
    return SDP.new_from_parts({"addr": addr, "id": 1, "version": 1}, *out)


_MIRROR = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def _mirror(remote: str, local: str | None) -> str:
    d = _MIRROR[remote]
    if local is None or local == "sendrecv":
        return d
    if local not in DIRECTIONS:
        raise SDPError(f"bad direction {local!r}")
    send = d in ("sendrecv", "sendonly") and local in ("sendrecv", "sendonly")
    recv = d in ("sendrecv", "recvonly") and local in ("sendrecv", "recvonly")
    return {(1, 1): "sendrecv", (1, 0): "sendonly", (0, 1): "recvonly", (0, 0): "inactive"}[
        (int(send), int(recv))
    ]


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of offer/answer for one media stream.

    Where to send (RTP and RTCP), the codec and its payload type, ptime, the
    DTMF payload type, and whether to send and receive.
    """

    index: int
    media: str
    remote: tuple[str, int] | None
    remote_rtcp: tuple[str, int] | None
    payload_type: int
    codec: Codec
    ptime: int
    dtmf_type: int | None
    send: bool
    recv: bool


def negotiate(local: SDP, remote: SDP) -> list[Negotiated | None]:
    """Per m-line what RTP needs, from our point of view (None = rejected)."""
    out: list[Negotiated | None] = []
    for i, (lm, rm) in enumerate(zip(local.media, remote.media, strict=False)):
        if lm.port == 0 or rm.port == 0:
            out.append(None)
            continue
        rmap = rm.rtpmap
        ours = {(c.name.lower(), c.clock) for c in lm.rtpmap.values()}
        pt_codec: tuple[int, Codec] | None = None
        dtmf: int | None = None
        for f in rm.fmt:
            if not f.isdigit() or int(f) not in rmap:
                continue
            c = rmap[int(f)]
            if (c.name.lower(), c.clock) not in ours:
                continue
            if c.name.lower() == "telephone-event":
                dtmf = dtmf if dtmf is not None else int(f)
            elif pt_codec is None:
                pt_codec = (int(f), c)
        if pt_codec is None:
            out.append(None)
            continue
        ld, rd = lm.direction, rm.direction
        send = ld in ("sendrecv", "sendonly") and rd in ("sendrecv", "recvonly")
        recv = ld in ("sendrecv", "recvonly") and rd in ("sendrecv", "sendonly")
        hold = _is_hold_addr(rm.addr) or rm.addr is None
        remote_addr = None if hold else (str(rm.addr), rm.port)
        rtcp: tuple[str, int] | None = None
        if remote_addr is not None:
            rtcp = (remote_addr[0], rm.port + 1)
            for v in rm.attributes("rtcp"):
                # RFC 3605: a=rtcp:port [IN IP4 addr]
                p = v.split()
                if p and p[0].isdigit():
                    rtcp = (p[3] if len(p) >= 4 else remote_addr[0], int(p[0]))
        out.append(
            Negotiated(
                i,
                rm.media,
                remote_addr,
                rtcp,
                pt_codec[0],
                pt_codec[1],
                rm.ptime or lm.ptime or 20,
                dtmf,
                send,
                recv,
            )
        )
    return out


def sdp_from_body(content_type: str, body: bytes) -> SDP | None:
    """Find SDP in a body: application/sdp, or a part of multipart/mixed|alternative."""
    ctype, _, params = content_type.partition(";")
    ctype = ctype.strip().lower()
    if ctype == "application/sdp":
        return SDP.new_from_string(body)
    if ctype not in ("multipart/mixed", "multipart/alternative", "multipart/related"):
        return None
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', params, re.I)
    if not m:
        raise SDPError("multipart body without boundary")
    boundary = ("--" + (m[1] or m[2])).encode()
    # RFC 2046 5.1.1: parts are delimited by CRLF--boundary
    chunks = re.split(b"(?:\\r?\\n)?" + re.escape(boundary), body)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        parts = re.split(b"\\r?\\n\\r?\\n", chunk.lstrip(b"\r\n"), maxsplit=1)
        if len(parts) != 2:
            continue
        head, content = parts
        ct = "text/plain"
        for hl in head.decode("latin-1").splitlines():
            k, _, v = hl.partition(":")
            if k.strip().lower() == "content-type":
                ct = v.strip()
        found = sdp_from_body(ct, content)
        if found is not None:
            return found
    return None
