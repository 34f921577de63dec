"""Port of Perl's ``Net::SIP::Util``: callbacks, address helpers, SIP header/URI helpers.

Net::SIP passes callbacks around in several shapes (code refs, ``[\\&sub, @args]``
arrays, objects with a ``run`` method, regexes, scalar refs); :func:`invoke_callback`
implements that convention, with :class:`Var` standing in for a scalar reference.
:class:`Addr` is the typed endpoint record used by every layer above.

The ``ip_*`` helpers split, join and canonicalise ``host:port`` strings with IPv6
support exactly like their Perl namesakes; Perl's packed ``sockaddr`` strings are
replaced by Python's socket address tuples (``(ip, port)`` for IPv4,
``(ip, port, flowinfo, scope_id)`` for IPv6). Where Perl returns a list in list
context and a hash ref in scalar context, these functions return a tuple and
take ``as_hash=True`` for the dict form. The ``sip_*`` helpers split and build
header values (``data;param=value``) and SIP URIs.

Deliberate differences from Net::SIP 0.835, all where Perl contradicts its own
documentation or produces unusable output:

- ``ip_string2parts`` returns the canonical IP (Perl returns it only in the hash
  form), accepts ``[ipv4]:port`` and ``[host]:port`` (documented, but Perl dies),
  accepts upper-case host names (lower-cased; Perl dies), and requires a numeric
  port (Perl passes any ``\\w+`` through) - ports are ``int`` here.
- ``sip_hdrval2parts`` drops empty parameters (``"a;"``); Perl stores a ``''`` key.
- ``sip_parts2hdrval`` for the comma-delimited authentication headers writes
  ``Digest a=1,b=2`` (RFC 2617 section 3.2.2); Perl writes ``Digest,a=1,b=2``.
- ``sip_parts2uri`` keeps a user part ``"0"`` (Perl drops it as false).

The code lives in private modules beside this one, one concern each:
``_base`` (transports, default ports, the base error), ``_callbacks``,
``_ip`` (IP addresses and :class:`Addr`) and ``_sipuri`` (header values and
URIs). This module is the public path and re-exports all of it.
"""

from __future__ import annotations

from netsip._base import DEFAULT_PORTS, PROTOS, NetSIPError, Proto, errno_of
from netsip._callbacks import Var, as_callable, invoke_callback
from netsip._ip import (
    Addr,
    IPParts,
    bind_socket,
    hostname2ip,
    ip_canonical,
    ip_is_v4,
    ip_is_v6,
    ip_is_v46,
    ip_parts2sockaddr,
    ip_parts2string,
    ip_ptr,
    ip_sockaddr2parts,
    ip_sockaddr2string,
    ip_string2parts,
    laddr4dst,
)
from netsip._sipuri import (
    sip_hdrval2parts,
    sip_parts2hdrval,
    sip_parts2uri,
    sip_sockinfo2uri,
    sip_uri2domain,
    sip_uri2parts,
    sip_uri2sockinfo,
    sip_uri_eq,
)

__all__ = [
    "DEFAULT_PORTS",
    "PROTOS",
    "Addr",
    "IPParts",
    "NetSIPError",
    "Proto",
    "Var",
    "as_callable",
    "bind_socket",
    "errno_of",
    "hostname2ip",
    "invoke_callback",
    "ip_canonical",
    "ip_is_v4",
    "ip_is_v6",
    "ip_is_v46",
    "ip_parts2sockaddr",
    "ip_parts2string",
    "ip_ptr",
    "ip_sockaddr2parts",
    "ip_sockaddr2string",
    "ip_string2parts",
    "laddr4dst",
    "sip_hdrval2parts",
    "sip_parts2hdrval",
    "sip_parts2uri",
    "sip_sockinfo2uri",
    "sip_uri2domain",
    "sip_uri2parts",
    "sip_uri2sockinfo",
    "sip_uri_eq",
]
