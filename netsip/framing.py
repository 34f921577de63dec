"""SIP message framing on stream transports (TCP, TLS), from Perl's ``Net::SIP::SocketPool``.

Perl's ``_handle_read_tcp_co`` cuts SIP messages out of a connection's read
buffer; this module is that logic as a pure function (no sockets, no clock),
so it can be tested byte by byte. On a stream a message ends where its
``Content-Length`` says (RFC 3261 18.3: the header is mandatory on streams):

1. leading CRLFs are skipped: they are keep-alives (RFC 3261 7.5, RFC 5626 4.4.1);
2. the header ends at the first ``CRLF CRLF``. A bare ``LF LF`` is *not* a header
   end (Perl does not accept it either), so such a peer runs into the header limit;
3. ``Content-Length`` or its compact form ``l`` (case-insensitive, RFC 3261 7.3.3)
   must be present; it may appear several times only with the same value
   (Perl collects the values in a hash, so repeats are harmless, different values
   are "conflicting content-length");
4. limits: the header, not counting the ``CRLF CRLF`` that ends it, may have at
   most ``max_header`` bytes (Perl's ``index(rbuf, "\\r\\n\\r\\n") <= MAX_SIP_HEADER``);
   a buffer that cannot hold a header end inside that limit is rejected at once,
   without waiting for more data. An announced length above ``max_body`` is
   rejected as soon as the header is complete, before the body arrives.

:func:`frame` never copies the buffer: it searches with ``bytearray.find`` and
runs its one regular expression only over the header block. Incomplete results
tell the caller where the next search may resume (``scan``) and, once the header
is known, how long the buffer must be (``need``), so a message trickling in costs
linear time rather than a rescan from the start per read.
"""

from __future__ import annotations

from typing import NamedTuple

from netsip._abnf import CONTENT_LENGTH_LINE_RE, CRLF, HEADER_END
from netsip.packet import Packet, PacketError, parse_stream
from netsip.util import NetSIPError

__all__ = ["FramingError", "Message", "NeedMore", "PacketError", "frame", "next_message"]


class FramingError(NetSIPError, ValueError):
    """The stream violates SIP framing or a size limit; the connection must be closed."""


class Message(NamedTuple):
    """A complete message: ``buf[start:end]`` (leading keep-alive CRLFs excluded)."""

    start: int
    end: int


class NeedMore(NamedTuple):
    """The buffer holds no complete message yet.

    Attributes:
        start: where the pending message begins; everything before it
            (keep-alive CRLFs) may be discarded by the caller.
        scan: pass back as ``scan`` on the next call: no header end starts
            before this offset.
        need: once the header is complete, the buffer length at which the
            message will be complete (the caller need not call again before);
            0 while the header is still incomplete.
    """

    start: int
    scan: int
    need: int


# More digits than this can never be below any sane body limit; refusing them
# early also keeps int() away from multi-kilobyte digit strings.
_MAX_CLEN_DIGITS = 12


def frame(
    buf: bytes | bytearray,
    max_header: int,
    max_body: int,
    start: int = 0,
    scan: int = 0,
) -> Message | NeedMore:
    """Find the first complete SIP message in ``buf[start:]``.

    Args:
        buf: the connection's read buffer (not modified). A ``memoryview``
            is not accepted: it has no ``find``, and copying would defeat
            the purpose.
        max_header: maximum header size in bytes (``MAX_SIP_HEADER``), not
            counting the final ``CRLF CRLF``.
        max_body: maximum announced ``Content-Length`` (``MAX_SIP_BODY``).
        start: where to begin, e.g. the end of the previous message.
        scan: ``NeedMore.scan`` from the previous call on the same (grown)
            buffer, so the header-end search resumes there; 0 to search from
            ``start``.

    Returns:
        :class:`Message` with the span of the message, or :class:`NeedMore`.

    Raises:
        FramingError: header too big, missing, invalid or conflicting
            ``Content-Length``, or body too big.
    """
    n = len(buf)
    # RFC 3261 7.5: CRLFs before a start-line are ignored (keep-alives).
    while buf.startswith(CRLF, start):
        start += 2
    if start >= n or (n - start == 1 and buf[start] == 13):
        # Nothing, or half a CRLF that may be a keep-alive.
        return NeedMore(start, start, 0)

    # The terminator must begin within max_header bytes of the start, so
    # never search further than that however big the buffer is.
    limit = start + max_header + 4
    hend = buf.find(HEADER_END, scan if scan > start else start, limit)
    if hend < 0:
        if n >= limit:
            raise FramingError(f"SIP header is too big (more than {max_header} bytes)")
        # A terminator may straddle the end of the buffer: resume 3 bytes back.
        return NeedMore(start, max(start, n - 3), 0)

    clen = -1
    # endpos hend+2 keeps the CRLF of the last header line and excludes the
    # empty line, so a folded value cannot run into the body.
    # Content-Length lines (netsip._abnf), matched with pos/endpos over the
    # header block only, never the whole buffer; findall: the values only,
    # no match objects (a third of the cost)
    for raw in CONTENT_LENGTH_LINE_RE.findall(buf, start, hend + 2):
        value = raw.strip()
        if not value.isdigit() or len(value) > _MAX_CLEN_DIGITS:
            raise FramingError(f"invalid Content-Length {value[:40]!r}")
        v = int(value)
        if clen >= 0 and v != clen:
            raise FramingError(f"conflicting Content-Length values {clen} and {v}")
        clen = v
    if clen < 0:
        raise FramingError("missing Content-Length (required on stream transports)")
    if clen > max_body:
        raise FramingError(f"SIP body is too big: {clen} > {max_body}")

    end = hend + 4 + clen
    if end > n:
        return NeedMore(start, hend, end)
    return Message(start, end)


def next_message(
    buf: bytearray, start: int, scan: int, max_header: int, max_body: int
) -> tuple[Packet, int] | NeedMore:
    """Frame and parse the next SIP message of a stream buffer.

    This is the one entry point of stream transports: the socket pool calls
    it for every message of a connection's read buffer. The usual message
    (CRLF line ends, nothing folded, a valid Content-Length) is framed by its
    own parse (:func:`netsip.packet.parse_stream`), which checks every header
    line once; anything else goes the general way, :func:`frame` and then
    :meth:`Packet.new_from_string`, which decides and words every error.

    Args:
        buf: the connection's read buffer (not modified).
        start: where the next message (or its keep-alive CRLFs) begins.
        scan: ``NeedMore.scan`` of the previous call on this buffer, or 0.
        max_header: ``MAX_SIP_HEADER``, as for :func:`frame`.
        max_body: ``MAX_SIP_BODY``, as for :func:`frame`.

    Returns:
        ``(packet, end)``, ``end`` where the message ends in ``buf``; or
        :class:`NeedMore` as :func:`frame` returns it.

    Raises:
        FramingError: the stream cannot be framed (see :func:`frame`).
        PacketError: a message was framed but is not a valid SIP message.
    """
    hend = buf.find(HEADER_END, scan if scan > start else start, start + max_header + 4)
    if hend > start:
        got = parse_stream(buf, start, hend, max_body)
        if got is not None:
            return got
    r = frame(buf, max_header, max_body, start, scan)
    if isinstance(r, NeedMore):
        return r
    end = r.end
    if r.start == 0 and end == len(buf):
        data = bytes(buf)  # the buffer is one message
    else:
        with memoryview(buf) as mv:
            data = mv[r.start : end].tobytes()
    return Packet.new_from_string(data), end
