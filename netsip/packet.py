"""Port of Perl's ``Net::SIP::Packet``, ``Net::SIP::Request`` and ``Net::SIP::Response``.

A SIP message is parsed in one pass (:meth:`Packet.new_from_string`): the
start line, then each header line (continuation lines unfolded, compact
names such as ``v`` or ``i`` normalised to ``via`` / ``call-id``), then
per-header rules: list headers are split at commas outside quotes and
``<>``, numeric headers must be numbers, ``Call-ID`` and ``CSeq`` must have
their syntax, addresses (From, To, Contact, Route, ...) and Via must be
well formed, single-valued headers may not conflict, and ``Content-Length``
must fit the body. Everything is validated eagerly, so a packet that parsed
is sane; what was wrong otherwise is said by :class:`PacketError`.

Representation: headers are an ordered list of ``(key, value, line)``
tuples, ``key`` the lower-case full name (Net::SIP's normalised key), value a
``str``. Header bytes are decoded as UTF-8 with ``surrogateescape``, so any
byte sequence round-trips (``as_bytes`` encodes the same way) while valid
UTF-8 display names read naturally. The body is ``bytes``. As in Net::SIP a
parsed packet remembers its original header lines: the wire form of an
unmodified packet is the received bytes (cached), and after modification
every line whose values are all still present is emitted verbatim; new
headers are written with their canonical name (``Call-ID``, ``CSeq``,
``WWW-Authenticate``...). ``as_bytes`` always writes a correct
``Content-Length``. Folded lines are unfolded to one SP (RFC 3261 7.3.1),
and line breaks in values given by users likewise, so no value can inject
a header line. Packets compare equal when their wire forms are equal.

Speed: parsing is one loop over the lines with precompiled patterns and a
cache from header name spelling to (key, rule). Validation that is a pure
function of a line is remembered (bounded caches): whole header lines, start
lines, and Via/From/To lines without their last parameter (branch, tag),
which is all that is new in them from call to call. The transaction id is
computed while parsing, the header index on the first lookup and kept up to
date by the header methods; the wire form is cached until the packet changes.

This module is pure: it does no I/O and imports nothing from ``socket``,
``selectors``, ``ssl`` or ``time``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias, overload

from netsip.util import NetSIPError

__all__ = [
    "REASON_PHRASES",
    "Packet",
    "PacketError",
    "Request",
    "Response",
    "canonical_header_name",
    "normalize_header_key",
    "parse_stream",
]

log = logging.getLogger(__name__)


class PacketError(NetSIPError, ValueError):
    """A SIP message could not be parsed, or a packet was used wrongly."""


HeaderValue: TypeAlias = str | int
HeaderValues: TypeAlias = HeaderValue | Sequence[HeaderValue] | None
HeadersArg: TypeAlias = Mapping[str, HeaderValues] | Iterable[tuple[str, HeaderValues]] | None
# one header: (normalised key, value, index of the original line or -1)
_Hdr: TypeAlias = tuple[str, str, int]

_ENC = "utf-8"
_ERRORS = "surrogateescape"

# ---------------------------------------------------------------------------
# header names

# RFC 3261 7.3.3 compact forms (plus those of later RFCs), as in Net::SIP's
# HeaderPair::_normalize_hdrkey.
_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",  # RFC 6665
    "u": "allow-events",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "b": "referred-by",  # RFC 3892
    "a": "accept-contact",  # RFC 3841
    "j": "reject-contact",  # RFC 3841
    "d": "request-disposition",  # RFC 3841
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 4474
}

# how header names are written when netsip creates a header line
_CANONICAL = {
    n.lower(): n
    for n in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "History-Info",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Breadth",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "P-Asserted-Identity",
        "P-Associated-URI",
        "P-Called-Party-ID",
        "P-Charging-Vector",
        "P-Preferred-Identity",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Replaces",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Resource-Priority",
        "Retry-After",
        "Route",
        "RSeq",
        "Security-Client",
        "Security-Server",
        "Security-Verify",
        "Server",
        "Service-Route",
        "Session-Expires",
        "SIP-ETag",
        "SIP-If-Match",
        "Subject",
        "Subscription-State",
        "Supported",
        "Target-Dialog",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
    )
}

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")

# exact spelling seen -> normalised key; filled as names are met, bounded
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_MAX = 2048


def normalize_header_key(name: str) -> str:
    """Normalise a header name as Net::SIP does: lower case, compact form expanded.

    Args:
        name: a header name in any case, full or compact.

    Returns:
        The normalised key, e.g. ``"call-id"`` for ``"i"`` or ``"Call-ID"``.

    Raises:
        PacketError: the name is not an RFC 3261 token.
    """
    key = _KEY_CACHE.get(name)
    if key is not None:
        return key
    if not isinstance(name, str):
        raise TypeError(f"header name must be str, not {type(name).__name__}")
    if _TOKEN_RE.fullmatch(name) is None:
        raise PacketError(f"invalid header name {name!r}")
    key = name.lower()
    key = _COMPACT.get(key, key)
    if len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[name] = key
    return key


def canonical_header_name(key: str) -> str:
    """The conventional spelling of a header name (``"cseq"`` -> ``"CSeq"``).

    Unknown names are capitalised at each ``-`` (``x-foo`` -> ``X-Foo``).
    """
    key = normalize_header_key(key)
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(p[:1].upper() + p[1:] for p in key.split("-"))
        if len(_CANONICAL) < 4 * _KEY_CACHE_MAX:
            _CANONICAL[key] = name
    return name


# normalised key -> "Canonical-Name: ", the start of a header line netsip writes
_PREFIX = {key: f"{name}: " for key, name in _CANONICAL.items()}


def _prefix(key: str) -> str:
    """The start of a header line for ``key`` (not in _PREFIX yet)."""
    pre = f"{canonical_header_name(key)}: "
    if len(_PREFIX) < 4 * _KEY_CACHE_MAX:
        _PREFIX[key] = pre
    return pre


# ---------------------------------------------------------------------------
# header value rules

# kinds of header; headers without a kind are kept as they are. Kinds below
# _LIST are single-valued: several different values are rejected. From _LIST
# on the value is a comma separated list.
_ONCE_KEEP, _NUM, _CALLID, _CSEQ, _ADDR, _LIST, _ADDRLIST, _VIA = range(8)

# Net::SIP's key2parser table; headers not listed here are kept as one value
# (Net::SIP's _hdrkey_parse_keep), among them WWW-Authenticate, Authorization,
# Date: their values contain commas that do not separate list elements.
_KIND: dict[str, int] = {
    "content-length": _NUM,
    "expires": _NUM,
    "max-forwards": _NUM,
    "min-expires": _NUM,
    "call-id": _CALLID,
    "cseq": _CSEQ,
    "via": _VIA,
    "from": _ADDR,
    "to": _ADDR,
    "contact": _ADDRLIST,
    "route": _ADDRLIST,
    "record-route": _ADDRLIST,
    # lists beyond Net::SIP's set: the routing and identity lists of later RFCs
    "path": _ADDRLIST,  # RFC 3327
    "service-route": _ADDRLIST,  # RFC 3608
    "p-asserted-identity": _ADDRLIST,  # RFC 3325
    "p-preferred-identity": _ADDRLIST,  # RFC 3325
}
# not all in Net::SIP's table: allow-events and later are comma lists by their RFCs
for _k in (
    "allow",
    "supported",
    "unsupported",
    "in-reply-to",
    "accept",
    "accept-encoding",
    "accept-language",
    "proxy-require",
    "require",
    "content-encoding",
    "content-language",
    "alert-info",
    "call-info",
    "error-info",
    "warning",
    "allow-events",
    "history-info",
    "reason",
    "security-client",
    "security-server",
    "security-verify",
    "accept-contact",
    "reject-contact",
    "request-disposition",
    "p-associated-uri",
):
    _KIND[_k] = _LIST
# single-valued headers: several different values make the message ambiguous
# (Net::SIP's %once plus the numeric ones; RFC 4475 3.3.9 multi01, 3.3.10 mcl01)
for _k in ("content-type", "content-disposition", "mime-version"):
    _KIND[_k] = _ONCE_KEEP
del _k


# upper bounds of the numeric headers (RFC 3261 20.22: Max-Forwards 0-255;
# 20.19, 20.23: delta-seconds are 32 bit; Content-Length is checked against
# the body, the bound only keeps int() cheap)
_NUM_MAX: dict[str, int] = {
    "content-length": 2**31,
    "expires": 2**32 - 1,
    "max-forwards": 255,
    "min-expires": 2**32 - 1,
}

# RFC 3261 25.1 word, the Call-ID charset
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALLID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?")
# A whole valid Call-ID line (name in any case, or compact "i"), value in
# group 1: the line holds the one value unique to every call, so it is never
# in the line cache, and one match does what the general path does in steps
# (name lookup, strip, _CALLID_RE). ASCII classes: an IGNORECASE "i" would
# also match U+0130/U+0131, which are not header names.
_CALLID_LINE_RE = re.compile(
    rf"(?:[Cc][Aa][Ll][Ll]-[Ii][Dd]|[Ii])[ \t]*:[ \t]*({_WORD}(?:@{_WORD})?)[ \t]*"
)
_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+([{_TOKEN_CHARS}]+)")

_QSTRING = r'"(?:[^"\\\r\n]|\\[^\r\n])*+"'
_TOKEN = rf"[{_TOKEN_CHARS}]+"
_PARAM = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_QSTRING}|[^\s;,\"<>=]+))?)"
# unquoted display names: tokens per RFC 3261 25.1, but tolerating non-ASCII
# and other harmless characters; what would make element boundaries
# ambiguous (comma, semicolon, quote, angle brackets) is refused
_DISPLAY = r'(?:[^\s"<>,;\\]++(?:[ \t]+[^\s"<>,;\\]++)*+)'
_ADDR_RE = re.compile(
    rf"(?:(?:{_QSTRING}|{_DISPLAY})?[ \t]*<[^\s<>]+>"  # name-addr
    r"|[A-Za-z][A-Za-z0-9+\-.]*:[^\s;,?<>\"]+)"  # addr-spec
    rf"{_PARAM}*+"
)
_VIA_RE = re.compile(
    rf"{_TOKEN}[ \t]*/[ \t]*{_TOKEN}[ \t]*/[ \t]*{_TOKEN}[ \t]+"  # sent-protocol
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?:[ \t]*:[ \t]*[0-9]{1,5})?"  # sent-by
    rf"{_PARAM}*+"
)

# one element of a comma separated list (Net::SIP's
# _hdrkey_parse_comma_seperated): commas inside "..." and <...> do not count
_ELEM_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|<(?:[^>\\]|\\.)*+>|\\.|[^",<\\]++)*+', re.S)
_BALANCED_RE = re.compile(r'(?:"(?:[^"\\]|\\.)*+"|<(?:[^>\\]|\\.)*+>|\\.|[^"<\\]++)*+', re.S)


def _split_list(value: str, key: str) -> list[str]:
    """Split a list header's value (which contains a comma) into its elements."""
    if '"' not in value and "<" not in value and "\\" not in value:
        return [v.strip(" \t") for v in value.split(",")]
    out = []
    pos = 0
    end = len(value)
    match = _ELEM_RE.match
    while True:
        m = match(value, pos)
        assert m is not None  # the pattern matches the empty string
        e = m.end()
        out.append(m.group().strip(" \t"))
        if e == end:
            return out
        if value[e] != ",":
            raise PacketError(f"unbalanced quote or '<' in {key} header: {value!r}")
        pos = e + 1


def _check_balanced(value: str, key: str) -> None:
    m = _BALANCED_RE.match(value)
    if m is None or m.end() != len(value):
        raise PacketError(f"unbalanced quote or '<' in {key} header: {value!r}")


def _check_number(value: str, key: str) -> None:
    if not value.isdigit() or not value.isascii():
        raise PacketError(f"invalid {key}, should be number: {value!r}")
    if len(value) > 12 or int(value) > _NUM_MAX[key]:
        raise PacketError(f"{key} out of range: {value}")


def _check_cseq(value: str) -> str:
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise PacketError(f"invalid cseq, should be 'number method': {value!r}")
    num = m.group(1)
    # RFC 3261 8.1.1.5: the sequence number is a 32-bit unsigned integer
    if len(num) > 12 or int(num) > 2**32 - 1:
        raise PacketError(f"cseq number out of range: {num}")
    return m.group(2)


def _check_addr(value: str, key: str) -> None:
    if _ADDR_RE.fullmatch(value) is None and not (key == "contact" and value == "*"):
        _check_balanced(value, key)
        raise PacketError(f"invalid address in {key} header: {value!r}")


# ---------------------------------------------------------------------------
# start line

_METHOD_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
_URI = r"[^\s\x00-\x1f\x7f]+"
_URI_RE = re.compile(_URI)
_REQ_LINE_RE = re.compile(rf"([{_TOKEN_CHARS}]+) ({_URI}) ([Ss][Ii][Pp]/2\.0)")
_RESP_LINE_RE = re.compile(r"[Ss][Ii][Pp]/2\.0 ([1-6][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")


def _check_uri(uri: str) -> None:
    if _SCHEME_RE.match(uri) is None:
        raise PacketError(f"bad request URI {uri!r}: no scheme")
    # RFC 3261 19.1.1: URI headers (?...) are not allowed in a Request-URI.
    # '?' may appear in the user part, so look behind the last '@' only.
    if "?" not in uri:
        return
    low = uri[:5].lower()
    if (low.startswith(("sip:", "sips:"))) and "?" in uri.rpartition("@")[2]:
        raise PacketError(f"bad request URI {uri!r}: headers not allowed in Request-URI")


def _first_line_error(line: str) -> PacketError:
    """Say precisely what is wrong with a start line that did not match."""
    if not line:
        return PacketError("bad request: empty packet")
    words = line.split()
    if line.upper().startswith("SIP/"):
        if not line.upper().startswith("SIP/2.0"):
            return PacketError(f"unsupported SIP version in status line {line!r}")
        if len(words) < 2 or not (len(words[1]) == 3 and words[1].isdigit()):
            return PacketError(f"invalid status code in status line {line!r}")
        if not "100" <= words[1] <= "699":
            return PacketError(f"status code out of range in status line {line!r}")
        return PacketError(f"bad status line {line!r}")
    if words and words[-1].upper().startswith("SIP/") and words[-1].upper() != "SIP/2.0":
        return PacketError(f"unsupported SIP version in request line {line!r}")
    if any((c < " " and c != "\t") or c == "\x7f" for c in line):
        return PacketError(f"bad request line {line!r}: control character")
    if line != line.rstrip() or line != line.lstrip():
        return PacketError(f"bad request line {line!r}: leading or trailing whitespace")
    if "  " in line or "\t" in line:
        return PacketError(f"bad request line {line!r}: elements must be separated by one SP")
    if len(words) > 3:
        return PacketError(f"bad request line {line!r}: whitespace in request URI")
    if words and _METHOD_RE.fullmatch(words[0]) is None:
        return PacketError(f"bad request line {line!r}: invalid method")
    return PacketError(f"bad request: starts with {line!r}")


# ---------------------------------------------------------------------------
# parser

_HDR_END_RE = re.compile(rb"\r?\n\r?\n")


def _find_header_end(data: bytes) -> tuple[int, int, bool]:
    """(end of the header block, start of the body, whether an empty line ends it)."""
    # the usual CRLFCRLF is found with a fast substring search; Net::SIP also
    # accepts LFs without CR, so an earlier separator of that kind wins
    i = data.find(b"\r\n\r\n")
    limit = len(data) if i < 0 else i + 3
    if data.find(b"\n\n", 0, limit) >= 0 or data.find(b"\n\r\n", 0, limit) >= 0:
        m = _HDR_END_RE.search(data)
        assert m is not None
        return m.start(), m.end(), True
    if i >= 0:
        return i, i + 4, True
    # no empty line: all header (Net::SIP accepts this too)
    if data.endswith(b"\r\n"):
        return len(data) - 2, len(data), False
    if data.endswith(b"\n"):
        return len(data) - 1, len(data), False
    return len(data), len(data), False


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (RFC 3261 7.3.1): folding is equivalent to one SP.

    ``lines`` is changed to hold the raw logical lines (with their folding);
    the unfolded lines are returned.
    """
    raw: list[str] = [lines[0]]
    flat: list[str] = [lines[0]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(raw) == 1:
                raise PacketError(f"bad header line {line!r}")
            raw[-1] = f"{raw[-1]}\r\n{line}"
            cont = line.strip(" \t")
            if cont:
                flat[-1] = flat[-1].rstrip(" \t") + " " + cont
        else:
            raw.append(line)
            flat.append(line)
    lines[:] = raw
    return flat


def _parse(data: bytes) -> Request | Response:
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 7.5: CRLFs before the start line are ignored
        data = data.lstrip(b"\r\n")
    # Fast path (nearly every message): the header block ends at the first
    # CRLF CRLF and has no line break but CRLF. Then no bare-LF header end can
    # come earlier (see _find_header_end) and the lines split at CRLF. A bare
    # CR or LF fails in _build: a line holding one is never in its caches
    # (they hold lines of valid messages, split at every line break), and the
    # other lines are checked. A folded line fails in _build too
    # (its name starts with SP/HT, names like that are never cached); that
    # and any other error goes to the general path, which unfolds first and
    # so raises exactly the error it always did.
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        lines = data[:i].decode(_ENC, _ERRORS).split("\r\n")
        try:
            return _build(data, lines, lines, i + 4, True)
        except PacketError:
            pass
    return _parse_general(data)


def parse_stream(
    buf: bytes | bytearray, start: int, hend: int, max_body: int
) -> tuple[Request | Response, int] | None:
    """Frame and parse the usual message of a stream transport in one go.

    A stream (TCP, TLS) is cut into messages by their Content-Length
    (:func:`netsip.framing.frame`), and each message is parsed; both look at
    every header line. When the header block is one the parser takes on its
    fast path (CRLF line ends, nothing folded), the parser has checked every
    Content-Length line already (all spellings, conflicting values), so its
    value frames the message and the framer's search is not needed.

    Args:
        buf: the connection's read buffer (not modified).
        start: where the message begins.
        hend: where its header block ends: the first CRLF CRLF at or after
            ``start``, found within the header size limit.
        max_body: the largest Content-Length taken (``MAX_SIP_BODY``).

    Returns:
        ``(packet, end)``, the packet being exactly what
        :meth:`Packet.new_from_string` makes of ``buf[start:end]``; or None
        for anything else (leading line breaks, an invalid, folded or
        bare-LF header, no or too large a Content-Length, a body not fully
        received yet). The caller then frames and parses the general way,
        which decides, and words any error, as it always does.
    """
    if buf[start] in (10, 13):
        return None  # line breaks before the start line: see _parse
    lines = buf[start:hend].decode(_ENC, _ERRORS).split("\r\n")
    clen: list[int] = []
    try:
        pkt = _build(b"", lines, lines, 0, True, clen_out=clen)
    except PacketError:
        return None
    n = clen[0]
    end = hend + 4 + n
    if n < 0 or n > max_body or end > len(buf):
        return None
    data = bytes(buf[start:end])
    if n:
        pkt._body = data[hend + 4 - start :]
    pkt._wire = data
    return pkt, end


def _parse_general(data: bytes) -> Request | Response:
    """Parse any message: bare LF line ends, folded lines, or one that is invalid."""
    hend, bstart, complete = _find_header_end(data)
    head = data[:hend].decode(_ENC, _ERRORS)

    if head.count("\r") == head.count("\n") == head.count("\r\n"):
        lines = head.split("\r\n")
    else:
        lines = head.split("\n")
        for i, raw in enumerate(lines):
            stripped = raw[:-1] if raw.endswith("\r") else raw
            if "\r" in stripped:
                raise PacketError(f"bare CR in line {stripped!r}")
            lines[i] = stripped
    flat = _unfold(lines) if "\n " in head or "\n\t" in head else lines
    return _build(data, lines, flat, bstart, complete)


def _build(
    data: bytes,
    lines: list[str],
    flat: list[str],
    bstart: int,
    complete: bool,
    *,
    clen_out: list[int] | None = None,
) -> Request | Response:
    """Validate the start line and headers of a split message and make the packet.

    Args:
        data: the whole message; the body starts at ``bstart``.
        lines: the raw logical header lines (kept for re-emission), start line first.
        flat: the same lines unfolded (``lines`` itself if nothing was folded).
        complete: an empty line ended the header.
        clen_out: for :func:`parse_stream`: ``data`` is the header block
            alone; the Content-Length (-1 if absent) is appended here instead
            of being checked against the body, and the caller sets body and
            wire form.
    """
    first = lines[0]
    known = _FIRST_CACHE.get(first)
    if known is not None:
        method, code, text = known
    else:
        method, code, text = _first_line(first)

    hdrs: list[_Hdr] = []
    append = hdrs.append
    once: dict[str, str] = {}
    cseq_method: str | None = None
    name_cache = _NAME_CACHE
    line_cache = _LINE_CACHE
    prefix_cache = _PREFIX_CACHE
    last_param = _LAST_PARAM_RE.fullmatch
    callid_line = _CALLID_LINE_RE.fullmatch
    for lineno, line in enumerate(flat[1:]):
        hit = line_cache.get(line)
        if hit is not None:
            # A line seen (and found valid) before: only what depends on the
            # other lines of this message is done again.
            key, value, values, single, cm = hit
            if values is not None:
                for v in values:
                    append((key, v, lineno))
                continue
            if single:
                if cm is not None:
                    cseq_method = cm
                prev = once.setdefault(key, value)
                if prev != value:
                    raise PacketError(f"conflicting definition of {key}: {prev!r} and {value!r}")
            append((key, value, lineno))
            continue
        i = line.rfind(";")
        if i > 0:
            seen = prefix_cache.get(line[:i])
            if seen is not None and last_param(line, i) is not None:
                # A Via or From/To line whose last parameter (branch, tag)
                # is new and plain, the rest seen and valid before.
                key, single, start = seen
                value = line[start:]
                if single:
                    prev = once.setdefault(key, value)
                    if prev != value:
                        raise PacketError(
                            f"conflicting definition of {key}: {prev!r} and {value!r}"
                        )
                append((key, value, lineno))
                continue
        elif (m := callid_line(line)) is not None:
            value = m[1]
            prev = once.setdefault("call-id", value)
            if prev != value:
                raise PacketError(f"conflicting definition of call-id: {prev!r} and {value!r}")
            append(("call-id", value, lineno))
            continue

        if "\r" in line or "\n" in line:
            # only in the fast path: the general path takes over
            raise PacketError(f"bare CR or LF in line {line!r}")
        name, colon, value = line.partition(":")
        if not colon:
            raise PacketError(f"bad header line {line!r}")
        cached = name_cache.get(name)
        key, kind = _line_key(name, line) if cached is None else cached
        value = value.strip(" \t")
        entry: _LineEntry
        if kind is None:
            append((key, value, lineno))
            entry = (key, value, None, False, None)
        elif kind >= _LIST:
            if "," not in value:  # one element: the common case, checked inline
                if kind == _VIA:
                    if _VIA_RE.fullmatch(value) is None:
                        raise PacketError(f"invalid via: {value!r}")
                    if i > 0:
                        _learn_prefix(line, i, value, key, single=False, pattern=_VIA_RE)
                elif kind == _ADDRLIST:
                    if _ADDR_RE.fullmatch(value) is None:
                        _check_addr(value, key)
                elif '"' in value or "<" in value or "\\" in value:
                    _check_balanced(value, key)
                append((key, value, lineno))
                entry = (key, value, None, False, None)
            else:
                elems = _split_list(value, key)
                if kind == _ADDRLIST:
                    for v in elems:
                        if _ADDR_RE.fullmatch(v) is None:
                            _check_addr(v, key)
                elif kind == _VIA:
                    for v in elems:
                        if _VIA_RE.fullmatch(v) is None:
                            raise PacketError(f"invalid via: {v!r}")
                for v in elems:
                    append((key, v, lineno))
                entry = (key, value, tuple(elems), False, None)
            if kind == _VIA:
                continue  # its branch makes every Via unique: not worth caching
        else:
            tagged = False
            if kind == _ADDR:
                if _ADDR_RE.fullmatch(value) is None:
                    _check_addr(value, key)
                # a tag (or other last parameter) makes the line unique per
                # dialog: not worth the line cache, its prefix may be
                tagged = i > 0 and ">" not in line[i:]
                if tagged:
                    _learn_prefix(line, i, value, key, single=True, pattern=_ADDR_RE)
            elif kind == _NUM:
                if not (value.isdigit() and value.isascii() and len(value) <= 12) or (
                    int(value) > _NUM_MAX[key]
                ):
                    _check_number(value, key)  # raises, saying what is wrong
            elif kind == _CALLID:
                if _CALLID_RE.fullmatch(value) is None:
                    raise PacketError(f"invalid callid, should be 'word [@ word]': {value!r}")
            elif kind == _CSEQ:
                cseq_method = _check_cseq(value)
            prev = once.setdefault(key, value)
            if prev != value:
                raise PacketError(f"conflicting definition of {key}: {prev!r} and {value!r}")
            append((key, value, lineno))
            if kind == _CALLID or tagged:
                continue  # unique per call (dialog): not worth caching
            entry = (key, value, None, True, cseq_method if kind == _CSEQ else None)
        if len(line) <= _LINE_CACHE_LINE_MAX:
            if len(line_cache) >= _LINE_CACHE_MAX:
                line_cache.clear()
            line_cache[line] = entry

    if method is not None and cseq_method is not None and cseq_method != method:
        raise PacketError(
            f"method in cseq does not match method of request: {cseq_method} != {method}"
        )

    body = data[bstart:]
    cl = once.get("content-length")
    if clen_out is not None:
        clen_out.append(-1 if cl is None else int(cl))
    elif cl is not None:
        n = int(cl)
        if n < len(body):
            # RFC 3261 18.3: octets beyond Content-Length are discarded
            log.debug("discarding %d octets after the body", len(body) - n)
            body = body[:n]
            data = data[: bstart + n]
        elif n > len(body):
            raise PacketError(f"content-length {n} is larger than the body ({len(body)} octets)")

    pkt: Request | Response
    if method is not None:
        req = Request.__new__(Request)
        req._method = method
        req._uri = text
        pkt = req
    else:
        rsp = Response.__new__(Response)
        rsp._code = code
        rsp._msg = text
        pkt = rsp
    pkt._hdrs = hdrs
    pkt._index = None
    # Call-ID and CSeq are single-valued and at hand: the tid costs less now
    # than through the header index later, and every receiver asks for it
    pkt._tid = _make_tid(once.get("call-id"), once.get("cseq"))
    del lines[0]  # keep the raw header lines, index = line number
    pkt._lines = lines
    pkt._first = first
    pkt._body = body
    # the received bytes are the wire form, unless they lack Content-Length
    # (needed on stream transports, RFC 3261 20.14) or the empty line
    pkt._wire = data if cl is not None and complete else None
    return pkt


def _first_line(first: str) -> tuple[str | None, int, str]:
    """Validate a start line: (method, 0, Request-URI) or (None, code, phrase)."""
    m = _REQ_LINE_RE.fullmatch(first)
    if m is not None:
        method, text, _ = m.groups()
        _check_uri(text)
        result: tuple[str | None, int, str] = (method, 0, text)
    else:
        m = _RESP_LINE_RE.fullmatch(first)
        if m is None:
            raise _first_line_error(first)
        result = (None, int(m.group(1)), (m.group(2) or "").rstrip(" \t"))
    if len(first) <= _LINE_CACHE_LINE_MAX:
        if len(_FIRST_CACHE) >= _FIRST_CACHE_MAX:
            _FIRST_CACHE.clear()
        _FIRST_CACHE[first] = result
    return result


# ";name=value" with a plain value (RFC 3261 25.1 generic-param, without
# optional blanks or a quoted value): the Via branch or From/To tag that
# makes a line unique, so that the line cache cannot help.
_LAST_PARAM_RE = re.compile(rf';{_TOKEN}=[^\s;,"<>=]+')

# Instead, a Via line (one value) or From/To line is remembered without its
# last parameter, if its value without it matches _VIA_RE or _ADDR_RE on its
# own: line up to the last ';' -> (key, single-valued, offset of the value).
# A line with a known prefix and a plain last parameter is valid: the
# parameter repetition at the end of both patterns takes one more, and
# nothing before the last ';' can extend over it (a ';' there is part of a
# parameter, a quoted string or <...>, and the new parameter has no '"' or
# '>' that could close one). Bounded, cleared when full.
_PREFIX_CACHE: dict[str, tuple[str, bool, int]] = {}
_PREFIX_CACHE_MAX = 1024
# prefixes seen once (see _learn_prefix), bounded like _PREFIX_CACHE
_PREFIX_SEEN: set[str] = set()


def _learn_prefix(
    line: str, i: int, value: str, key: str, *, single: bool, pattern: re.Pattern[str]
) -> None:
    """After ``value`` (of ``line``) was found valid: remember the line up to its
    last ``;`` (at ``i``) in _PREFIX_CACHE if what follows is a plain parameter
    and the rest is valid alone.

    A prefix is checked and kept only the second time it is seen: with a
    connection (or socket) per call the sender's port is in every Via and
    From, so most prefixes never come back, and checking them twice would
    only cost (and churn the cache).
    """
    prefix = line[:i]
    if prefix not in _PREFIX_SEEN:
        if len(_PREFIX_SEEN) >= _PREFIX_CACHE_MAX:
            _PREFIX_SEEN.clear()
        _PREFIX_SEEN.add(prefix)
        return
    off = len(line) - len(value)  # the parameter ends the line: nothing stripped
    j = i - off  # the ';' in value
    if (
        j > 0
        and _LAST_PARAM_RE.fullmatch(value, j) is not None
        and pattern.fullmatch(value, 0, j) is not None
    ):
        if len(_PREFIX_CACHE) >= _PREFIX_CACHE_MAX:
            _PREFIX_CACHE.clear()
        _PREFIX_CACHE[prefix] = (key, single, off)


# A valid start line -> what _first_line made of it. A UAS sees the same
# Request-URI again and again (and a UAC the same status lines): the two
# regular expressions and the URI check are done once. Cleared when full.
_FIRST_CACHE: dict[str, tuple[str | None, int, str]] = {}
_FIRST_CACHE_MAX = 1024

# name part of a header line as received -> (normalised key, kind)
_NAME_CACHE: dict[str, tuple[str, int | None]] = {}

# A valid header line as received (unfolded) -> what _build made of it:
# (key, value, the elements of a list header with several, whether the header
# is single-valued, the CSeq method). Lines repeat across messages (Max-Forwards,
# Content-Length, CSeq, To, Allow, User-Agent ...); their validation, a pure
# function of the line, is done once. Via and Call-ID lines are unique per
# transaction and not stored; long lines neither. Cleared when full.
_LineEntry: TypeAlias = tuple[str, str, tuple[str, ...] | None, bool, str | None]
_LINE_CACHE: dict[str, _LineEntry] = {}
_LINE_CACHE_MAX = 4096
_LINE_CACHE_LINE_MAX = 256


def _make_tid(callid: str | None, cseq: str | None) -> str:
    """Packet.tid() from the values of Call-ID and CSeq (None if absent)."""
    num = cseq.split(None, 1)[0] if cseq else ""
    if not (num.isdigit() and num.isascii()):
        num = ""
    elif num[0] == "0" and len(num) > 1:
        num = num.lstrip("0") or "0"
    return f"{callid or ''} {num}"


def _line_key(name: str, line: str) -> tuple[str, int | None]:
    """Key and kind for the name part of a header line (cache miss)."""
    rname = name.rstrip(" \t")
    if not rname or rname[0] in " \t":
        raise PacketError(f"bad header line {line!r}")
    key = normalize_header_key(rname)
    result = key, _KIND.get(key)
    if len(_NAME_CACHE) < _KEY_CACHE_MAX:
        _NAME_CACHE[name] = result
    return result


# ---------------------------------------------------------------------------
# values given by users

_FOLD_RE = re.compile(r"\r?\n[ \t]*|\r")


def _clean_value(value: HeaderValue) -> str:
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            # Net::SIP turns line breaks into continuation lines; folding is
            # equivalent to a single SP (RFC 3261 7.3.1) and a value can never
            # inject a header line this way
            value = _FOLD_RE.sub(" ", value)
        return value.strip(" \t")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"header value must be str or int, not {type(value).__name__}")


def _iter_values(values: HeaderValues) -> Iterable[HeaderValue]:
    if values is None:
        return ()
    if isinstance(values, (str, int)):
        return (values,)
    return values


def _make_headers(headers: HeadersArg) -> list[_Hdr]:
    out: list[_Hdr] = []
    if headers is None:
        return out
    items: Iterable[tuple[str, HeaderValues]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, values in items:
        key = normalize_header_key(name)
        for v in _iter_values(values):
            out.append((key, _clean_value(v), -1))
    return out


def _body_bytes(body: bytes | bytearray | memoryview | str | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode(_ENC, _ERRORS)
    return bytes(body)


# ---------------------------------------------------------------------------
# reason phrases: RFC 3261 21 and the registered extensions (IANA "SIP
# Parameters", Response Codes)

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    424: "Bad Location Information",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

# status lines of the registered codes with their default phrase
_STATUS_LINES = {code: f"SIP/2.0 {code} {msg}" for code, msg in REASON_PHRASES.items()}

# the headers create_response copies from the request (RFC 3261 8.2.6.2)
_RESPONSE_COPIES = frozenset(("via", "record-route", "from", "to", "call-id", "cseq", "timestamp"))

# key for the To-tags create_response adds: stable within a process (so a
# retransmitted request gets the same tag), different between processes
_TAG_KEY = os.urandom(16)
_TAG_HASH = hashlib.blake2s(digest_size=8, key=_TAG_KEY)
_TAG_RE = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)


def _has_tag(addr: str) -> bool:
    # the tag is a header parameter: after the URI's '>' in name-addr form;
    # a name-addr ending in '>' has no parameters (the usual To of a request)
    if addr[-1:] == ">" and "<" in addr:
        return False
    params = addr.rpartition(">")[2] if "<" in addr else addr
    return _TAG_RE.search(params) is not None


# ---------------------------------------------------------------------------
# packets


class Packet:
    """A SIP message: the common part of :class:`Request` and :class:`Response`.

    Equality compares the wire form (``as_bytes()``), so two packets are equal
    when they would put the same bytes on the wire; packets are mutable and
    therefore unhashable.
    """

    __slots__ = ("_body", "_first", "_hdrs", "_index", "_lines", "_tid", "_wire")

    _hdrs: list[_Hdr]
    # values by key, built by the first get_header(s) and dropped (None)
    # whenever _hdrs changes: a UAS looks up the same few headers many times.
    # Tuples of str, so the cyclic GC untracks the whole index: a dispatcher
    # keeps every response for 32 s and full collections scan what is tracked.
    _index: dict[str, tuple[str, ...]] | None
    # the original header lines (raw text incl. folding) of a parsed packet,
    # None for a packet built from parts
    _lines: list[str] | None
    _first: str | None
    _body: bytes
    _wire: bytes | None
    # the transaction id, None until known; reset whenever Call-ID or CSeq
    # change. SocketPool and Dispatcher ask for it several times per
    # transaction (request and response); the parser fills it in from the
    # Call-ID and CSeq it has at hand, create_response copies it.
    _tid: str | None

    # -- construction -----------------------------------------------------

    @staticmethod
    def new_from_string(data: bytes | bytearray | memoryview | str) -> Request | Response:
        """Parse a SIP message.

        Args:
            data: the message; ``str`` is encoded as UTF-8 (surrogateescape).
                Octets after the body (``Content-Length``) are dropped.

        Returns:
            a :class:`Request` or :class:`Response`.

        Raises:
            PacketError: the message is malformed; the text says why.
        """
        if type(data) is bytes:  # what transports pass
            return _parse(data)
        if isinstance(data, str):
            try:
                data = data.encode(_ENC, _ERRORS)
            except UnicodeEncodeError as exc:
                raise PacketError(f"cannot encode the message: {exc}") from None
        elif not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"expected bytes or str, not {type(data).__name__}")
            data = bytes(data)
        return _parse(data)

    @staticmethod
    def new_from_parts(
        code_or_method: int | str,
        text: str,
        headers: HeadersArg = None,
        body: bytes | str = b"",
    ) -> Request | Response:
        """Net::SIP's ``new_from_parts``: a Response if the first part is numeric,
        else a Request with the method upper-cased (as Net::SIP does)."""
        if isinstance(code_or_method, int) or code_or_method[:1].isdigit():
            return Response(code_or_method, text, headers, body)
        return Request(code_or_method.upper(), text, headers, body)

    def _init(self, headers: HeadersArg, body: bytes | str) -> None:
        self._hdrs = _make_headers(headers)
        self._index = self._tid = None
        self._lines = None
        self._first = None
        self._body = _body_bytes(body)
        self._wire = None

    # -- kind -------------------------------------------------------------

    def is_request(self) -> bool:
        """True for a :class:`Request`."""
        return False

    def is_response(self) -> bool:
        """True for a :class:`Response`."""
        return False

    # -- shortcuts --------------------------------------------------------

    def tid(self) -> str:
        """The transaction id: Call-ID and CSeq number (as in Net::SIP).

        The method is left out, so ACK and CANCEL share the id of their INVITE,
        and a response has the id of its request. The number is written without
        leading zeros. A missing header gives an empty part.
        """
        tid = self._tid
        if tid is None:
            tid = self._tid = _make_tid(self.get_header("call-id"), self.get_header("cseq"))
        return tid

    def cseq(self) -> str | None:
        """The CSeq header (``"<number> <method>"``) or None."""
        return self.get_header("cseq")

    def cseq_number(self) -> int | None:
        """The number of the CSeq header, or None if there is none."""
        cseq = self.get_header("cseq")
        if cseq is None:
            return None
        m = _CSEQ_RE.fullmatch(cseq)
        return int(m.group(1)) if m else None

    def callid(self) -> str | None:
        """The Call-ID header or None."""
        return self.get_header("call-id")

    def method(self) -> str | None:
        """The request method; for a response the method in its CSeq."""
        raise NotImplementedError

    # -- headers ----------------------------------------------------------

    @overload
    def get_header(self) -> dict[str, list[str]]: ...
    @overload
    def get_header(self, name: str) -> str | None: ...

    def get_header(self, name: str | None = None) -> str | dict[str, list[str]] | None:
        """The single value of a header, or all headers.

        Args:
            name: the header name (any case, compact forms allowed). Without
                it, all headers are returned as :meth:`headers` does.

        Returns:
            The value, or None if the header is absent. Several equal values
            count as one (Net::SIP tolerates duplicated Content-Length this way).

        Raises:
            PacketError: the header has several different values.
        """
        if name is None:
            return self.headers()
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        index = self._index
        if index is None:
            index = self._build_index()
        values = index.get(key)
        if values is None:
            return None
        found = values[0]
        if len(values) > 1:
            for v in values:
                if v != found:
                    raise PacketError(f"multiple values for {key} in packet")
        return found

    def get_headers(self, name: str) -> list[str]:
        """All values of a header, in order (empty list if absent)."""
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        index = self._index
        if index is None:
            index = self._build_index()
        values = index.get(key)
        return list(values) if values is not None else []

    def header_values(self, name: str) -> tuple[str, ...]:
        """All values of a header, in order, as a tuple (empty if absent).

        :meth:`get_headers` without the copy: the tuple is the packet's own
        (immutable, so safe to keep) and a later change of the header
        replaces it rather than changing it.
        """
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        index = self._index
        if index is None:
            index = self._build_index()
        return index.get(key, ())

    def _build_index(self) -> dict[str, tuple[str, ...]]:
        index: dict[str, tuple[str, ...]] = {}
        for k, v, _ in self._hdrs:
            if k in index:  # (rare: most headers occur once)
                index[k] += (v,)
            else:
                index[k] = (v,)
        self._index = index
        return index

    def headers(self) -> dict[str, list[str]]:
        """All headers: normalised key (``"call-id"``) -> list of values, in order."""
        result: dict[str, list[str]] = {}
        for k, v, _ in self._hdrs:
            result.setdefault(k, []).append(v)
        return result

    def header_items(self) -> list[tuple[str, str]]:
        """All headers as ``(normalised key, value)`` pairs, in order."""
        return [(k, v) for k, v, _ in self._hdrs]

    # The header changes below keep the index valid instead of dropping it: a
    # UAS's leg adds and replaces headers (Via received=, Contact, Allow) between
    # lookups, and rebuilding the index each time cost more than the lookups.
    # The tid depends on Call-ID and CSeq only. Values are cleaned before the
    # headers change, so a bad value changes nothing.

    def add_header(self, name: str, value: HeaderValues) -> None:
        """Append a header (each value of a list as a header of its own)."""
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        values = [_clean_value(v) for v in _iter_values(value)]
        self._hdrs.extend([(key, v, -1) for v in values])
        index = self._index
        if index is not None and values:
            index[key] = (*index.get(key, ()), *values)
        self._headers_changed(key)

    def insert_header(self, name: str, value: HeaderValues) -> None:
        """Insert a header before all others (a list keeps its order)."""
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        index = self._index
        if type(value) is str and "\n" not in value and "\r" not in value:
            # one plain value (a leg's Via, Allow, Supported on every packet):
            # what _clean_value and the general case below make of it
            value = value.strip(" \t")
            self._hdrs.insert(0, (key, value, -1))
            if index is not None:
                index[key] = (value, *index.get(key, ()))
            self._headers_changed(key)
            return
        values = [_clean_value(v) for v in _iter_values(value)]
        self._hdrs[0:0] = [(key, v, -1) for v in values]
        if index is not None and values:
            index[key] = (*values, *index.get(key, ()))
        self._headers_changed(key)

    def del_header(self, name: str) -> None:
        """Remove every value of a header."""
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        self._hdrs = [h for h in self._hdrs if h[0] != key]
        if self._index is not None:
            self._index.pop(key, None)
        self._headers_changed(key)

    def set_header(self, name: str, value: HeaderValues) -> None:
        """Replace a header: its values take the place of the first old one
        (Net::SIP appends them at the end; the position does not matter to
        SIP but keeping it keeps the original lines in place)."""
        key = _KEY_CACHE.get(name) or normalize_header_key(name)
        values = [_clean_value(v) for v in _iter_values(value)]
        new = [(key, v, -1) for v in values]
        hdrs = self._hdrs
        index = self._index
        for pos in range(len(hdrs)):
            if hdrs[pos][0] == key:
                old = index.get(key) if index is not None else None
                if old is not None and len(old) == 1:
                    hdrs[pos : pos + 1] = new  # the only old value (the index says)
                else:
                    hdrs[pos:] = new + [h for h in hdrs[pos:] if h[0] != key]
                break
        else:
            hdrs.extend(new)
        if index is not None:
            if values:
                index[key] = tuple(values)
            else:
                index.pop(key, None)
        self._headers_changed(key)

    def _headers_changed(self, key: str) -> None:
        """The values of header ``key`` changed (the index is already updated)."""
        if key in ("call-id", "cseq"):
            self._tid = None
        self._wire = None

    # -- body -------------------------------------------------------------

    def body(self) -> bytes:
        """The body (``b""`` if none)."""
        return self._body

    def set_body(self, body: bytes | bytearray | memoryview | str | None) -> None:
        """Replace the body (``str`` is encoded as UTF-8); Content-Length follows."""
        self._body = _body_bytes(body)
        self._wire = None

    # -- wire form --------------------------------------------------------

    def _start_line(self) -> str:
        raise NotImplementedError

    def as_bytes(self) -> bytes:
        """The wire form, cached until the packet is modified.

        An unmodified parsed packet gives back the bytes it was parsed from
        (without octets after the body); otherwise the message is rebuilt
        with a Content-Length that fits the body: a wrong one is corrected in
        place, a missing one is appended to the header lines (as Net::SIP does;
        it is not added to the packet's headers).
        """
        wire = self._wire
        if wire is not None:
            return wire
        body = self._body
        blen = str(len(body))
        hdrs = self._hdrs
        # Content-Length: correct it in place, or add it at the end (Net::SIP)
        for h in hdrs:  # (a plain scan: most packets built here have none)
            if h[0] == "content-length":
                add_cl = False
                cl_at = [i for i, h in enumerate(hdrs) if h[0] == "content-length"]
                if len(cl_at) > 1 or hdrs[cl_at[0]][1] != blen:
                    if self._index is not None:  # (the tid stays as it is)
                        self._index["content-length"] = (blen,)
                    hdrs[cl_at[0]] = ("content-length", blen, -1)
                    for i in reversed(cl_at[1:]):
                        del hdrs[i]
                break
        else:
            add_cl = True

        out = [self._start_line()]
        lines = self._lines
        if lines is None:
            prefix = _PREFIX
            for k, v, _ in hdrs:
                out.append((prefix.get(k) or _prefix(k)) + v)
        else:
            out.extend(self._header_lines(lines))
        # the last line ends the header block (joined with CRLF: one empty line)
        out.append(f"Content-Length: {blen}\r\n\r\n" if add_cl else "\r\n")
        wire = "\r\n".join(out).encode(_ENC, _ERRORS) + body
        self._wire = wire
        return wire

    def _header_lines(self, lines: list[str]) -> list[str]:
        """Header lines of a modified parsed packet (Net::SIP's as_string).

        The public methods remove or replace all values of a header at once,
        and an original line only holds values of one header, so a line
        whose values are referenced is complete and is kept verbatim (with
        its original name spelling and folding).
        """
        out: list[str] = []
        last = -1
        prefix = _PREFIX
        for k, v, ln in self._hdrs:
            if ln < 0:
                out.append((prefix.get(k) or _prefix(k)) + v)
            elif ln != last:
                out.append(lines[ln])
                last = ln
        return out

    def as_string(self) -> str:
        """The wire form as ``str`` (UTF-8, surrogateescape for other bytes)."""
        return self.as_bytes().decode(_ENC, _ERRORS)

    def as_parts(self) -> tuple[str | int, str, list[tuple[str, str]], bytes]:
        """``(method or code, uri or msg, [(key, value), ...], body)``."""
        raise NotImplementedError

    def dump(self, level: int = 0) -> str:
        """A one-line summary (level 0) or the whole message, for debugging."""
        if level:
            return self.as_string()
        first, text, _, body = self.as_parts()
        with_body = " with body" if body else ""
        if self.is_request():
            return f"REQ  {first} {text}{with_body}"
        return f"RESP {first} '{text}'{with_body}"

    def clone(self) -> Request | Response:
        """An independent copy."""
        cls = type(self)
        new = cls.__new__(cls)
        for slot in ("_body", "_first", "_lines", "_tid", "_wire", *cls.__slots__):
            setattr(new, slot, getattr(self, slot))
        new._hdrs = list(self._hdrs)
        new._index = None
        assert isinstance(new, (Request, Response))
        return new

    def _callid_repr(self) -> str:
        return next((v for k, v, _ in self._hdrs if k == "call-id"), "-")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return type(self) is type(other) and self.as_bytes() == other.as_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, like list


class Request(Packet):
    """A SIP request (``Net::SIP::Request``).

    Args:
        method: the method, kept as given: methods are case-sensitive
            (RFC 3261 7.1); :meth:`Packet.new_from_parts` upper-cases.
        uri: the Request-URI.
        headers: ``(name, value)`` pairs or a mapping name -> value or list of
            values; values are ``str`` or ``int``, None values are skipped.
        body: the body, ``str`` is encoded as UTF-8.

    Raises:
        PacketError: invalid method, URI or header name.
    """

    __slots__ = ("_method", "_uri")

    _method: str
    _uri: str

    def __init__(
        self,
        method: str,
        uri: str,
        headers: HeadersArg = None,
        body: bytes | str = b"",
    ) -> None:
        if _METHOD_RE.fullmatch(method) is None:
            raise PacketError(f"invalid method {method!r}")
        self._method = method
        self._uri = _checked_uri(uri)
        self._init(headers, body)

    def is_request(self) -> bool:
        return True

    def method(self) -> str:
        """The request method."""
        return self._method

    def uri(self) -> str:
        """The Request-URI."""
        return self._uri

    def set_uri(self, uri: str) -> None:
        """Replace the Request-URI."""
        self._uri = _checked_uri(uri)
        self._first = None
        self._wire = None

    def set_cseq(self, number: int) -> None:
        """Set the CSeq header to ``number`` and this request's method."""
        self.set_header("cseq", f"{int(number)} {self._method}")

    def _start_line(self) -> str:
        first = self._first
        if first is None:
            first = self._first = f"{self._method} {self._uri} SIP/2.0"
        return first

    def as_parts(self) -> tuple[str, str, list[tuple[str, str]], bytes]:
        return self._method, self._uri, self.header_items(), self._body

    def create_response(
        self,
        code: int,
        msg: str | None = None,
        headers: HeadersArg = None,
        body: bytes | str = b"",
    ) -> Response:
        """A response to this request (RFC 3261 8.2.6).

        Via, From, To, Call-ID, CSeq and Record-Route are copied from the
        request (as Net::SIP does), Timestamp too for a 100 (8.2.6.1). If the
        request's To has no tag, a non-100 response gets one (8.2.6.2); the
        tag is derived from Call-ID and From with a per-process secret, so
        every response to a request, and to its retransmissions, carries the
        same tag. ``headers`` are set over the copied ones.

        Args:
            code: the status code.
            msg: the reason phrase; default from :data:`REASON_PHRASES`.
            headers: extra headers, as for the constructor; they replace
                copied headers of the same name.
            body: the body.
        """
        code = int(code)
        first = None
        if msg is None:
            # the usual case: a registered code with its phrase, both known
            # to be valid; the start line is ready-made
            first = _STATUS_LINES.get(code)
            msg = REASON_PHRASES.get(code, "")
        # the Vias come first in the response, in order: they go to hdrs at once
        hdrs: list[_Hdr] = []
        rr: list[str] = []
        frm = to = callid = cseq = ts = None
        copied = _RESPONSE_COPIES
        for k, v, _ in self._hdrs:
            if k not in copied:
                continue
            if k == "via":
                hdrs.append(("via", v, -1))
            elif k == "record-route":
                rr.append(v)
            elif k == "from":
                frm = v
            elif k == "to":
                to = v
            elif k == "call-id":
                callid = v
            elif k == "cseq":
                cseq = v
            elif k == "timestamp":
                ts = v
        if to is not None and code != 100 and not _has_tag(to):
            to = f"{to};tag={self._to_tag(callid, frm)}"
        if rr:
            hdrs.extend(("record-route", v, -1) for v in rr)
        if frm is not None:
            hdrs.append(("from", frm, -1))
        if to is not None:
            hdrs.append(("to", to, -1))
        if callid is not None:
            hdrs.append(("call-id", callid, -1))
        if cseq is not None:
            hdrs.append(("cseq", cseq, -1))
        if ts is not None and code == 100:
            hdrs.append(("timestamp", ts, -1))
        resp = Response.__new__(Response)
        if first is None:
            resp._code = _checked_code(code)
            resp._msg = _checked_msg(msg)
        else:
            resp._code = code
            resp._msg = msg
        resp._hdrs = hdrs
        resp._index = None
        # the same Call-ID and CSeq values, so the same tid (None if the
        # request's is not known: then it may not be valid, e.g. two Call-IDs);
        # set_header below resets it if ``headers`` replaces either
        resp._tid = self._tid
        resp._lines = None
        resp._first = first
        resp._body = body if type(body) is bytes else _body_bytes(body)
        resp._wire = None
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            for name, values in items:
                resp.set_header(name, values)
        return resp

    @staticmethod
    def _to_tag(callid: str | None, frm: str | None) -> str:
        # copying the keyed state costs less than setting up a keyed hash
        h = _TAG_HASH.copy()
        h.update(f"{callid}\x00{frm}".encode(_ENC, _ERRORS))
        return h.hexdigest()

    def _dialog_request(self, method: str, to: list[str]) -> Request:
        num = ""
        cseq = self.get_header("cseq")
        if cseq:
            num = cseq.split(None, 1)[0]
        vias = self.get_headers("via")
        hdrs: list[_Hdr] = [("via", vias[0], -1)] if vias else []
        hdrs.extend(("route", v, -1) for v in self.get_headers("route"))
        hdrs.append(("max-forwards", "70", -1))
        frm = self.get_header("from")
        if frm is not None:
            hdrs.append(("from", frm, -1))
        hdrs.extend(("to", v, -1) for v in to)
        callid = self.get_header("call-id")
        if callid is not None:
            hdrs.append(("call-id", callid, -1))
        hdrs.append(("cseq", f"{num} {method}", -1))
        for k, v, _ in self._hdrs:
            if k in ("authorization", "proxy-authorization"):
                hdrs.append((k, v, -1))
        req = Request.__new__(Request)
        req._method = method
        req._uri = self._uri
        req._hdrs = hdrs
        req._index = req._tid = None
        req._lines = None
        req._first = None
        req._body = b""
        req._wire = None
        return req

    def create_ack(self, response: Response) -> Request:
        """The ACK for a non-2xx final ``response`` to this INVITE (RFC 3261 17.1.1.3).

        Request-URI, Call-ID, From, the top Via, Route and credentials come
        from the request, To (with the tag) from the response; CSeq has the
        request's number and method ACK.
        """
        return self._dialog_request("ACK", response.get_headers("to"))

    def create_cancel(self) -> Request:
        """The CANCEL for this request (RFC 3261 9.1): like :meth:`create_ack`
        but with the request's To."""
        return self._dialog_request("CANCEL", self.get_headers("to"))

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri} call-id={self._callid_repr()}>"


class Response(Packet):
    """A SIP response (``Net::SIP::Response``).

    Args:
        code: the status code, 100 to 699.
        msg: the reason phrase.
        headers: as for :class:`Request`.
        body: the body.

    Raises:
        PacketError: invalid code, reason phrase or header name.
    """

    __slots__ = ("_code", "_msg")

    _code: int
    _msg: str

    def __init__(
        self,
        code: int | str,
        msg: str,
        headers: HeadersArg = None,
        body: bytes | str = b"",
    ) -> None:
        self._code = _checked_code(code)
        self._msg = _checked_msg(msg)
        self._init(headers, body)

    def is_response(self) -> bool:
        return True

    def code(self) -> int:
        """The status code."""
        return self._code

    def msg(self) -> str:
        """The reason phrase."""
        return self._msg

    def method(self) -> str | None:
        """The method of the request, from the CSeq header (None without)."""
        cseq = self.get_header("cseq")
        if not cseq:
            return None
        parts = cseq.split()
        return parts[1] if len(parts) > 1 else None

    def _start_line(self) -> str:
        first = self._first
        if first is None:
            first = self._first = f"SIP/2.0 {self._code} {self._msg}"
        return first

    def as_parts(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
        return self._code, self._msg, self.header_items(), self._body

    def __repr__(self) -> str:
        return f"<Response {self._code} {self._msg!r} call-id={self._callid_repr()}>"


def _checked_uri(uri: str) -> str:
    if not isinstance(uri, str):
        raise TypeError(f"uri must be str, not {type(uri).__name__}")
    if _URI_RE.fullmatch(uri) is None:
        raise PacketError(f"invalid request URI {uri!r}")
    return uri


def _checked_code(code: int | str) -> int:
    try:
        c = int(code)
    except ValueError:
        raise PacketError(f"invalid status code {code!r}") from None
    if not 100 <= c <= 699:
        raise PacketError(f"status code {c} out of range 100-699")
    return c


def _checked_msg(msg: str) -> str:
    if not isinstance(msg, str):
        raise TypeError(f"reason phrase must be str, not {type(msg).__name__}")
    if "\r" in msg or "\n" in msg:
        raise PacketError(f"line break in reason phrase {msg!r}")
    return msg
