"""SIP header values and SIP URIs (part of ``Net::SIP::Util``).

The ``sip_*`` helpers split and build header values (``data;param=value``)
and SIP URIs the way their Perl namesakes do. Public through
:mod:`netsip.util`; the differences from Net::SIP are listed there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from netsip._ip import Addr, ip_parts2string, ip_string2parts

# Perl's \s (without unicode semantics).
_WS = " \t\n\r\f\v"

# --------------------------------------------------------------------------
# SIP header values
# --------------------------------------------------------------------------

# Headers whose parameters are separated by "," (RFC 3261 section 25.1, the
# auth-param lists); all others use ";".
_DELIMITER = {
    "www-authenticate": ",",
    "proxy-authenticate": ",",
    "authorization": ",",
    "proxy-authorization": ",",
}
_UNFOLD_RX = re.compile(r"\r?\n([ \t])")
# "." deliberately does not cross a newline, as in Perl.
_SCAN_RX = {d: re.compile(r"(.*?)([\\\"<>" + d + "])") for d in ",;"}
_WS_RX = re.compile(r"[ \t\n\r\f\v]+")
_AUTH_FIRST_RX = re.compile(r"([^ \t\n\r\f\v]+)[ \t\n\r\f\v]*(.*)")
_EQ_RX = re.compile(r"[ \t\n\r\f\v]*=[ \t\n\r\f\v]*")
_QUOTED_RX = re.compile(r'"(.*)"\Z')
_BACKSLASH_RX = re.compile(r"\\(.)", re.DOTALL)
# Perl only decodes escapes made of hex *letters*; kept, because decoding more
# would alter values such as a Digest uri="sip:a%40b" that are hashed verbatim.
_PERCENT_RX = re.compile(r"%([a-fA-F][a-fA-F])")
_NEEDS_ESCAPE_RX = re.compile(r'[%\r\n\t"]|[^\x20-\x7e]')
_NEEDS_QUOTE_RX = {d: re.compile(r"[ \t\n\r\f\v" + d + "]") for d in ",;"}


def _split_items(v: str, delim: str) -> list[str]:
    """Split on ``delim`` outside quotes and ``<...>``, honouring backslash escapes."""
    if '"' not in v and "<" not in v and "\\" not in v and "\n" not in v:
        # fast path, same result as the scanner below
        items = v.split(delim)
        if len(items) > 1:
            items = (
                [items[0].rstrip(_WS)]
                + [i.strip(_WS) for i in items[1:-1]]
                + [items[-1].lstrip(_WS)]
            )
        return items
    rx = _SCAN_RX[delim]
    items = []
    cur: list[str] = []
    quoted = bracket = False
    pos = 0
    n = len(v)
    while True:
        m = rx.match(v, pos)
        if m is None:
            cur.append(v[pos:])
            break
        pre, ch = m.group(1), m.group(2)
        pos = m.end()
        if ch == "\\":
            cur += (pre, ch, v[pos : pos + 1])
            pos = min(pos + 1, n)
        elif ch == '"':
            cur += (pre, ch)
            if not bracket:
                quoted = not quoted
        elif ch == "<":
            cur += (pre, ch)
            if not bracket and not quoted:
                bracket = True
        elif ch == ">":
            cur += (pre, ch)
            if bracket and not quoted:
                bracket = False
        elif quoted or bracket:
            cur += (pre, ch)
        else:
            cur.append(pre)
            items.append("".join(cur).rstrip(_WS))
            cur = []
            ws = _WS_RX.match(v, pos)
            if ws is not None:
                pos = ws.end()
    items.append("".join(cur))
    return items


def sip_hdrval2parts(key: str, value: str) -> tuple[str, dict[str, str | None]]:
    """Split a header value into its leading data and its parameters.

    ::

        to:   '"Silver; John" <sip:s@example.com>; tag=abc'
              -> ('"Silver; John" <sip:s@example.com>', {"tag": "abc"})
        www-authenticate: 'Digest realm="a,b", qop=auth'
              -> ("Digest", {"realm": "a,b", "qop": "auth"})

    Delimiters inside double quotes or ``<...>`` do not split. Parameter
    names are lower-cased; a parameter without ``=`` maps to None; values
    are unquoted, backslash-unescaped and ``%xx`` escapes of hex letters
    decoded, as in Perl.

    Args:
        key: the normalised header name (lower case, long form); it selects
            the delimiter: ``,`` for the four authentication headers, else ``;``.
        value: the header value, possibly folded.

    Returns:
        ``(data, params)``.
    """
    v = (_UNFOLD_RX.sub(r"\1", value) if "\n" in value else value).strip(_WS)
    delim = _DELIMITER.get(key, ";")
    items = _split_items(v, delim)
    data = items[0]
    rest = items[1:]
    if delim == ",":
        # "Digest realm=..": the scheme and the first parameter share item 0
        m = _AUTH_FIRST_RX.match(data)
        if m is not None:
            rest.insert(0, m.group(2))
            data = m.group(1) + data[m.end() :]
    params: dict[str, str | None] = {}
    for item in rest:
        if not item:
            continue  # "a;" or "a; ;b": Perl would store a '' key
        kv = _EQ_RX.split(item, maxsplit=1)
        if len(kv) == 1:
            params[item.lower()] = None
            continue
        val = kv[1]
        q = _QUOTED_RX.match(val)
        if q is not None:
            val = q.group(1)
        if "\\" in val:
            val = _BACKSLASH_RX.sub(r"\1", val)
        if "%" in val:
            val = _PERCENT_RX.sub(lambda m: chr(int(m.group(1), 16)), val)
        params[kv[0].lower()] = val
    return data, params


def _escape_char(m: re.Match[str]) -> str:
    return f"%{ord(m.group(0)):02x}"


def sip_parts2hdrval(
    key: str, data: str, params: Mapping[str, str | int | None] | None = None
) -> str:
    """Build a header value from data and parameters, the reverse of :func:`sip_hdrval2parts`.

    Parameters are written sorted by name; a None value writes just the
    name. Values get ``%``, CR, LF, TAB, ``"`` and non-printable characters
    ``%xx``-escaped and are quoted if they contain white space or the
    delimiter. ``data`` is used verbatim.

    Args:
        key: the normalised header name (selects the delimiter).
        data: the leading data.
        params: the parameters.

    Returns:
        The header value.
    """
    if not params:
        return data
    delim = _DELIMITER.get(key, ";")
    quote_rx = _NEEDS_QUOTE_RX[delim]
    out = [data]
    for i, k in enumerate(sorted(params)):
        # RFC 2617 section 3.2.1: auth-scheme SP auth-param *("," auth-param)
        out.append(" " if i == 0 and delim == "," else delim)
        out.append(k)
        val = params[k]
        if val is not None:
            sval = _NEEDS_ESCAPE_RX.sub(_escape_char, str(val))
            if quote_rx.search(sval):
                sval = f'"{sval}"'
            out += ("=", sval)
    return "".join(out)


# --------------------------------------------------------------------------
# SIP URIs
# --------------------------------------------------------------------------

_URI_ANGLE_RX = re.compile(r"<([^>]+)>[ \t\n\r\f\v]*\Z")
_URI_RX = re.compile(
    r"""
    (?: (sips?) : )?
    (?: ([^\s@]*) @ )?
    (
        \[ [^\]\s]+ \] (?: : \w+)?          # [ipv46_or_host]:port
        | [^:\s]+ (?: : \w+)?               # ipv4_or_host:port
        | (?:[a-f\d]*:){2}[a-f\d.:]*        # ipv6
    )
    """,
    re.IGNORECASE | re.VERBOSE | re.ASCII,
)


#: URIs up to this length are memoised by :func:`sip_uri2parts`
_MEMO_MAX_LEN = 512


def sip_uri2parts(uri: str) -> tuple[str, str | None, str, dict[str, str | None], str] | None:
    """Split a SIP URI (Perl's ``sip_uri2parts`` in list context).

    ``uri`` may be a bare URI, a URI with parameters, or a name-addr whose
    value ends with ``<uri>``. For the domain only, use :func:`sip_uri2domain`.

    Returns:
        ``(domain, user, proto, params, data)``: the lower-cased domain as in
        the URI (``host``, ``host:port``, ``[ipv6]:port``); the user part
        (None if absent); ``"sip"`` or ``"sips"``; the URI parameters (the
        caller's own dict); the part before the parameters. None if ``uri``
        does not look like a URI. The last 1,024 URIs are memoised: a proxy
        splits the Request-URI of a message several times.
    """
    if len(uri) > _MEMO_MAX_LEN:
        return _uri2parts(uri)
    parts = _uri2parts_memo(uri)
    if parts is None:
        return None
    domain, user, proto, items, data = parts
    return domain, user, proto, dict(items), data


@functools.lru_cache(maxsize=1024)
def _uri2parts_memo(
    uri: str,
) -> tuple[str, str | None, str, tuple[tuple[str, str | None], ...], str] | None:
    parts = _uri2parts(uri)
    if parts is None:
        return None
    domain, user, proto, params, data = parts
    return domain, user, proto, tuple(params.items()), data


def _uri2parts(uri: str) -> tuple[str, str | None, str, dict[str, str | None], str] | None:
    m = _URI_ANGLE_RX.search(uri)
    if m is not None:
        uri = m.group(1)
    data, params = sip_hdrval2parts("uri", uri)
    u = _URI_RX.fullmatch(data)
    if u is None:
        return None
    proto, user, domain = u.groups()
    return domain.lower(), user, (proto or "sip").lower(), params, data


def sip_uri2domain(uri: str) -> str | None:
    """The lower-cased domain (``host[:port]``) of a SIP URI; Perl's scalar-context form."""
    parts = sip_uri2parts(uri)
    return parts[0] if parts is not None else None


def sip_parts2uri(
    domain: str | Sequence[Any] | Mapping[str, Any] | Addr,
    user: str | None = None,
    proto: str | None = "sip",
    params: Mapping[str, str | int | None] | None = None,
) -> str:
    """Build a SIP URI, the reverse of :func:`sip_uri2parts`.

    Args:
        domain: ``host[:port]``, or ``(host, port, family)`` / a mapping /
            an :class:`Addr` passed to :func:`ip_parts2string`.
        user: optional user part.
        proto: ``"sip"`` (default, also for None) or ``"sips"``.
        params: URI parameters; with any, the URI is wrapped in ``<...>`` so
            they are not taken for header parameters.

    Returns:
        The URI.
    """
    if isinstance(domain, str):
        dom = domain
    elif isinstance(domain, Addr | Mapping):
        dom = ip_parts2string(domain)
    else:
        dom = ip_parts2string(*domain)
    uri = sip_parts2hdrval("uri", f"{proto or 'sip'}:{user + '@' if user else ''}{dom}", params)
    return f"<{uri}>" if params else uri


def sip_uri2sockinfo(
    uri: str, opaque: bool = False
) -> tuple[str | None, str, int | None, int | None] | None:
    """What a URI says about the socket to use.

    Args:
        uri: the SIP URI, e.g. ``sips:host:port`` or ``sip:host;transport=TCP``.
        opaque: the host part need not look like a host name (see
            :func:`ip_string2parts`).

    Returns:
        ``(proto, host, port, family)``: ``"tls"`` for sips, else the
        lower-cased ``transport`` parameter, else None (not restricted);
        the IP or host name; the port or None; AF_INET/AF_INET6 or None for
        a host name. None if ``uri`` is not a URI.

    Raises:
        ValueError: the host part is neither IP nor host name (not opaque).
    """
    parts = sip_uri2parts(uri)
    if parts is None:
        return None
    domain, _, sproto, params, _ = parts
    transport = params.get("transport")
    proto = "tls" if sproto == "sips" else transport.lower() if transport else None
    host, port, family = ip_string2parts(domain, opaque)
    return proto, host, port, family


_SOCKINFO_PROTO: dict[str | None, tuple[str, dict[str, str | int | None]]] = {
    None: ("sip", {}),
    "udp": ("sip", {}),
    "tcp": ("sip", {"transport": "TCP"}),
    "tls": ("sips", {}),
    "ws": ("sip", {"transport": "WS"}),  # RFC 7118 section 5.1
    "wss": ("sip", {"transport": "WSS"}),
}


def sip_sockinfo2uri(
    proto: str | Mapping[str, Any] | Addr | None,
    host: str | None = None,
    port: int | None = None,
    family: int | None = None,
) -> str:
    """Build a URI from socket information, the reverse of :func:`sip_uri2sockinfo`.

    ::

        ("tcp", "::1", 5060, AF_INET6) -> "<sip:[::1]:5060;transport=TCP>"
        ("tls", "1.2.3.4", 5061)       -> "sips:1.2.3.4:5061"

    Args:
        proto: ``"udp"``, ``"tcp"``, ``"tls"`` or None; or a mapping with the
            keys ``proto``, ``host``, ``port``, ``family`` (``addr`` if no
            ``host``); or an :class:`Addr` (its ``host`` if set, else ``addr``).
        host: IP or host name.
        port: optional port.
        family: optional family.

    Raises:
        ValueError: an invalid proto.
    """
    p: str | None
    if isinstance(proto, Addr):
        a = proto
        p, host, port, family = a.proto, a.host or a.addr, a.port, a.family
    elif isinstance(proto, Mapping):
        d = proto
        p, host = d.get("proto"), d.get("host") or d.get("addr")
        port, family = d.get("port"), d.get("family")
    else:
        p = proto
    try:
        sproto, params = _SOCKINFO_PROTO[p]
    except (KeyError, TypeError):
        raise ValueError(f"invalid proto: {p!r}") from None
    if host is None:
        raise ValueError("no host given")
    return sip_parts2uri(ip_parts2string(host, port, family), None, sproto, params)


_URI_PORT_RX = re.compile(r":(\d+)\Z|\[(\d+)\]\Z")


def sip_uri_eq(uri1: str, uri2: str) -> bool:
    """True if both URIs point to the same SIP address.

    Compares the user part case-sensitively, the domain case-insensitively
    (no DNS), the protocol, and the port (5060, or 5061 for sips, if absent).
    URI parameters are ignored. A string that is not a URI equals only itself.
    """
    if uri1 == uri2:
        return True
    p1 = sip_uri2parts(uri1)
    p2 = sip_uri2parts(uri2)
    if p1 is None or p2 is None:
        return False
    d1, u1, s1 = p1[0], p1[1], p1[2]
    d2, u2, s2 = p2[0], p2[1], p2[2]
    d1, port1 = _split_uri_port(d1, s1)
    d2, port2 = _split_uri_port(d2, s2)
    return d1 == d2 and port1 == port2 and u1 == u2 and s1 == s2


def _split_uri_port(domain: str, proto: str) -> tuple[str, int]:
    m = _URI_PORT_RX.search(domain)
    if m is None:
        return domain, 5061 if proto == "sips" else 5060
    return domain[: m.start()], int(m.group(1) or m.group(2))
