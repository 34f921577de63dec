"""The fields of a SIP message, one at a time: header names, header values, start-line parts.

Private to :mod:`netsip.packet`; the part of ``Net::SIP::Packet`` (and its
``HeaderPair`` helpers) that needs no whole message: normalising header
names (compact forms, RFC 3261 7.3.3) and writing them canonically; the
kind of each known header (single-valued, numeric, list ...) with the check
of one value of that kind; the checks of start-line fields (method,
Request-URI, status code, reason phrase); the reason phrases of the status
codes; and the cleaning of header values given by users. The message
parser (:mod:`netsip._parser`) and the packet model (:mod:`netsip.packet`)
both build on it. Its patterns are in :mod:`netsip._abnf`.

Differences from Net::SIP: more headers are known as lists or as
single-valued (see ``KIND``); numeric headers have RFC bounds; a
Request-URI with URI headers is refused (RFC 3261 19.1.1); line breaks in
values given by users become one SP instead of continuation lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeAlias

from netsip._abnf import (
    ADDR_RE,
    BALANCED_RE,
    CSEQ_RE,
    ELEM_RE,
    FOLD_RE,
    SCHEME_RE,
    TOKEN_RE,
    URI_RE,
)
from netsip._cache import HEADER_START_CACHE, KEY_CACHE
from netsip.util import NetSIPError


class PacketError(NetSIPError, ValueError):
    """A SIP message could not be parsed, or a packet was used wrongly."""


class BodyTruncatedError(PacketError):
    """A datagram ends before the body its Content-Length announces (RFC 3261 18.3).

    Attributes:
        parts: what the parser made of the message (its body as far as it
            came), so that a transport can answer a request with 400.
    """

    def __init__(self, message: str, parts: object) -> None:
        super().__init__(message)
        self.parts = parts


class ParseLimits:
    """Bounds the parser puts on one message, against hostile input.

    Attributes:
        max_headers: header lines per message (Kamailio: 1,000-ish too).
        max_values: values of one list header (``Accept: a, b, ...``).
    """

    __slots__ = ("max_headers", "max_values")

    def __init__(self, max_headers: int = 1000, max_values: int = 256) -> None:
        self.max_headers = max_headers
        self.max_values = max_values


#: the limits in force (changed through ``import_settings``: ``MAX_HEADERS``,
#: ``MAX_HEADER_VALUES``)
LIMITS: Final = ParseLimits()


HeaderValue: TypeAlias = str | int
HeaderValues: TypeAlias = HeaderValue | Sequence[HeaderValue] | None
HeadersArg: TypeAlias = Mapping[str, HeaderValues] | Iterable[tuple[str, HeaderValues]] | None
# one header of a packet: (normalised key, value, index of the original line or -1)
Hdr: TypeAlias = tuple[str, str, int]

# header bytes are decoded as UTF-8 with surrogateescape: any byte sequence
# round-trips, valid UTF-8 display names read naturally
ENC: Final = "utf-8"
ERRORS: Final = "surrogateescape"

# the caches' lookups (see netsip._cache: bound, so as fast as a dict's)
_key_get: Final = KEY_CACHE.get
_header_start_get: Final = HEADER_START_CACHE.get

# ---------------------------------------------------------------------------
# header names

# RFC 3261 7.3.3 compact forms (plus those of later RFCs), as in Net::SIP's
# HeaderPair::_normalize_hdrkey.
_COMPACT: Final = {
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
_CANONICAL: Final = {
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


def normalize_header_key(name: str) -> str:
    """Normalise a header name as Net::SIP does: lower case, compact form expanded.

    Args:
        name: a header name in any case, full or compact.

    Returns:
        The normalised key, e.g. ``"call-id"`` for ``"i"`` or ``"Call-ID"``.

    Raises:
        PacketError: the name is not an RFC 3261 token.
    """
    key = _key_get(name)
    if key is not None:
        return key
    if not isinstance(name, str):
        raise TypeError(f"header name must be str, not {type(name).__name__}")
    if TOKEN_RE.fullmatch(name) is None:
        raise PacketError(f"invalid header name {name!r}")
    key = name.lower()
    key = _COMPACT.get(key, key)
    KEY_CACHE.put(name, key)
    return key


def canonical_header_name(key: str) -> str:
    """The conventional spelling of a header name (``"cseq"`` -> ``"CSeq"``).

    Unknown names are capitalised at each ``-`` (``x-foo`` -> ``X-Foo``).
    """
    key = normalize_header_key(key)
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(p[:1].upper() + p[1:] for p in key.split("-"))
    return name


def header_start(key: str) -> str:
    """``"Canonical-Name: "``, the start of a header line netsip writes for ``key``.

    Cached (in HEADER_START_CACHE): the writer of a packet looks it up for
    every header it did not receive.
    """
    start = _header_start_get(key)
    if start is None:
        start = f"{canonical_header_name(key)}: "
        HEADER_START_CACHE.put(key, start)
    return start


for _key, _name in _CANONICAL.items():
    HEADER_START_CACHE.put(_key, f"{_name}: ")
del _key, _name


# ---------------------------------------------------------------------------
# header value rules

# kinds of header; headers without a kind are kept as they are. Kinds below
# LIST are single-valued: several different values are rejected. From LIST
# on the value is a comma separated list.
ONCE_KEEP, NUM, CALLID, CSEQ, ADDR, LIST, ADDRLIST, VIA = range(8)

# Net::SIP's key2parser table; headers not listed here are kept as one value
# (Net::SIP's _hdrkey_parse_keep), among them WWW-Authenticate, Authorization,
# Date: their values contain commas that do not separate list elements.
KIND: Final[dict[str, int]] = {
    "content-length": NUM,
    "expires": NUM,
    "max-forwards": NUM,
    "min-expires": NUM,
    "call-id": CALLID,
    "cseq": CSEQ,
    "via": VIA,
    "from": ADDR,
    "to": ADDR,
    "contact": ADDRLIST,
    "route": ADDRLIST,
    "record-route": ADDRLIST,
    # lists beyond Net::SIP's set: the routing and identity lists of later RFCs
    "path": ADDRLIST,  # RFC 3327
    "service-route": ADDRLIST,  # RFC 3608
    "p-asserted-identity": ADDRLIST,  # RFC 3325
    "p-preferred-identity": ADDRLIST,  # RFC 3325
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
    KIND[_k] = LIST
# single-valued headers: several different values make the message ambiguous
# (Net::SIP's %once plus the numeric ones; RFC 4475 3.3.9 multi01, 3.3.10 mcl01)
for _k in ("content-type", "content-disposition", "mime-version"):
    KIND[_k] = ONCE_KEEP
del _k


# upper bounds of the numeric headers (RFC 3261 20.22: Max-Forwards 0-255;
# 20.19, 20.23: delta-seconds are 32 bit; Content-Length is checked against
# the body, the bound only keeps int() cheap)
NUM_MAX: Final[dict[str, int]] = {
    "content-length": 2**31,
    "expires": 2**32 - 1,
    "max-forwards": 255,
    "min-expires": 2**32 - 1,
}


def split_list(value: str, key: str) -> list[str]:
    """Split a list header's value (which contains a comma) into its elements."""
    if '"' not in value and "<" not in value and "\\" not in value:
        return [v.strip(" \t") for v in value.split(",")]
    out = []
    pos = 0
    end = len(value)
    match = ELEM_RE.match
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


def check_balanced(value: str, key: str) -> None:
    m = BALANCED_RE.match(value)
    if m is None or m.end() != len(value):
        raise PacketError(f"unbalanced quote or '<' in {key} header: {value!r}")


def check_number(value: str, key: str) -> None:
    if not value.isdigit() or not value.isascii():
        raise PacketError(f"invalid {key}, should be number: {value!r}")
    if len(value) > 12 or int(value) > NUM_MAX[key]:
        raise PacketError(f"{key} out of range: {value}")


def check_cseq(value: str) -> str:
    m = CSEQ_RE.fullmatch(value)
    if m is None:
        raise PacketError(f"invalid cseq, should be 'number method': {value!r}")
    num = m.group(1)
    # RFC 3261 8.1.1.5: the sequence number is a 32-bit unsigned integer
    if len(num) > 12 or int(num) > 2**32 - 1:
        raise PacketError(f"cseq number out of range: {num}")
    return m.group(2)


def check_addr(value: str, key: str) -> None:
    if ADDR_RE.fullmatch(value) is None and not (key == "contact" and value == "*"):
        check_balanced(value, key)
        raise PacketError(f"invalid address in {key} header: {value!r}")


# ---------------------------------------------------------------------------
# start line


def check_uri(uri: str) -> None:
    if SCHEME_RE.match(uri) is None:
        raise PacketError(f"bad request URI {uri!r}: no scheme")
    # RFC 3261 19.1.1: URI headers (?...) are not allowed in a Request-URI.
    # '?' may appear in the user part, so look behind the last '@' only.
    if "?" not in uri:
        return
    low = uri[:5].lower()
    if (low.startswith(("sip:", "sips:"))) and "?" in uri.rpartition("@")[2]:
        raise PacketError(f"bad request URI {uri!r}: headers not allowed in Request-URI")


def first_line_error(line: str) -> PacketError:
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
    if words and TOKEN_RE.fullmatch(words[0]) is None:
        return PacketError(f"bad request line {line!r}: invalid method")
    return PacketError(f"bad request: starts with {line!r}")


def make_tid(callid: str | None, cseq: str | None) -> str:
    """Packet.tid() from the values of Call-ID and CSeq (None if absent)."""
    num = cseq.split(None, 1)[0] if cseq else ""
    if not (num.isdigit() and num.isascii()):
        num = ""
    elif num[0] == "0" and len(num) > 1:
        num = num.lstrip("0") or "0"
    return f"{callid or ''} {num}"


# ---------------------------------------------------------------------------
# values given by users


def clean_value(value: HeaderValue) -> str:
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            # Net::SIP turns line breaks into continuation lines; folding is
            # equivalent to a single SP (RFC 3261 7.3.1) and a value can never
            # inject a header line this way
            value = FOLD_RE.sub(" ", value)
        return value.strip(" \t")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"header value must be str or int, not {type(value).__name__}")


def iter_values(values: HeaderValues) -> Iterable[HeaderValue]:
    if values is None:
        return ()
    if isinstance(values, (str, int)):
        return (values,)
    return values


def make_headers(headers: HeadersArg) -> list[Hdr]:
    out: list[Hdr] = []
    if headers is None:
        return out
    items: Iterable[tuple[str, HeaderValues]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, values in items:
        key = normalize_header_key(name)
        for v in iter_values(values):
            out.append((key, clean_value(v), -1))
    return out


def body_bytes(body: bytes | bytearray | memoryview | str | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode(ENC, ERRORS)
    return bytes(body)


def checked_method(method: str) -> str:
    if TOKEN_RE.fullmatch(method) is None:
        raise PacketError(f"invalid method {method!r}")
    return method


def checked_uri(uri: str) -> str:
    if not isinstance(uri, str):
        raise TypeError(f"uri must be str, not {type(uri).__name__}")
    if URI_RE.fullmatch(uri) is None:
        raise PacketError(f"invalid request URI {uri!r}")
    return uri


def checked_code(code: int | str) -> int:
    try:
        c = int(code)
    except ValueError:
        raise PacketError(f"invalid status code {code!r}") from None
    if not 100 <= c <= 699:
        raise PacketError(f"status code {c} out of range 100-699")
    return c


def checked_msg(msg: str) -> str:
    if not isinstance(msg, str):
        raise TypeError(f"reason phrase must be str, not {type(msg).__name__}")
    if "\r" in msg or "\n" in msg:
        raise PacketError(f"line break in reason phrase {msg!r}")
    return msg


# ---------------------------------------------------------------------------
# reason phrases: RFC 3261 21 and the registered extensions (IANA "SIP
# Parameters", Response Codes)

REASON_PHRASES: Final[dict[int, str]] = {
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
STATUS_LINES: Final = {code: f"SIP/2.0 {code} {msg}" for code, msg in REASON_PHRASES.items()}
