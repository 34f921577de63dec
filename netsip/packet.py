"""Port of Perl's ``Net::SIP::Packet``, ``Net::SIP::Request`` and ``Net::SIP::Response``.

The SIP message model: :class:`Request` and :class:`Response`, their
common part :class:`Packet`, and :class:`PacketError`. A packet is made by
parsing (:meth:`Packet.new_from_string`; :func:`parse_stream` for a stream
transport's read buffer), from parts (the constructors,
:meth:`Packet.new_from_parts`), or from another packet
(:meth:`Request.create_response`, :meth:`Request.create_ack`,
:meth:`Request.create_cancel`, :meth:`Packet.clone`).

How it works: the private modules below this one do the parts of the job,
each in one place. :mod:`netsip._abnf` holds the grammar (every regular
expression, under its RFC 3261 ABNF); :mod:`netsip._cache` the bounded
caches; :mod:`netsip._fields` header names and values, start-line fields
and reason phrases; :mod:`netsip._parser` turns bytes into the parts of a
packet, knowing nothing of the classes here; :mod:`netsip._headers` is the
header list with its index, the base of :class:`Packet`. A packet not
built by its public constructor is made from parts (the parser's, or
taken from another packet) by ``_request(parts)`` or ``_response(parts)``;
``Packet._set`` is the one place all slots are written, for those and for
the public constructors.

Representation: headers are an ordered list of ``(key, value, line)``
tuples (see :mod:`netsip._headers`). Header bytes are decoded as UTF-8
with ``surrogateescape``, so any byte sequence round-trips (``as_bytes``
encodes the same way) while valid UTF-8 display names read naturally. The
body is ``bytes``. As in Net::SIP a parsed packet remembers its original
header lines: the wire form of an unmodified packet is the received bytes,
and after modification every line whose values are all still present is
emitted verbatim; new headers are written with their canonical name
(``Call-ID``, ``CSeq``, ``WWW-Authenticate``...).

Performance plan:

- Operations: per message received, a parse and a handful of header
  lookups (``tid``, ``get_header``); per message sent, a few header edits
  and one serialisation; per request answered, ``create_response``.
- Plan: the transaction id is computed while parsing (and copied by
  ``create_response``); the header index is kept up to date rather than
  dropped; the wire form is cached until the packet changes; a response to
  a registered code takes a ready-made status line.
- CPython specialises a call or an attribute store for one type per place
  in the code. So each class has its own constructor function
  (``_request``, ``_response``), and its own copy of the slot writer
  ``Packet._set``, with a code object of its own (``_own_copy``): shared by
  requests and responses, the stores cost about 100 ns more per packet.
  (Interpreted only: compiled, ``_NATIVE``, packets are made through their
  ``__init__`` and there are no copies.)

Differences from Net::SIP:

- ``as_bytes`` always writes a correct ``Content-Length`` (corrected in
  place; appended, as Net::SIP does, when there is none).
- Folded lines are unfolded to one SP (RFC 3261 7.3.1), and so are line
  breaks in values given by users: no value can inject a header line.
- ``create_response`` adds a To tag to a non-100 response when the request
  has none (RFC 3261 8.2.6.2), the same for every retransmission, and
  copies Timestamp into a 100 (8.2.6.1).
- Methods are case-sensitive in the constructor (RFC 3261 7.1);
  :meth:`Packet.new_from_parts` upper-cases as Net::SIP does.
- Packets compare by wire form and are unhashable.
- The parser's differences are listed in :mod:`netsip._parser`.

This module and its private parts are pure: they do no I/O and import
nothing from ``socket``, ``selectors``, ``ssl`` or ``time``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from types import FunctionType
from typing import Final, Literal, TypeVar, cast

from netsip._abnf import CSEQ_RE, TAG_PARAM_RE
from netsip._cache import CSEQ_NUMBER_CACHE, HEADER_START_CACHE, KEY_CACHE
from netsip._fields import (
    ENC,
    ERRORS,
    REASON_PHRASES,
    STATUS_LINES,
    BodyTruncatedError,
    Hdr,
    HeadersArg,
    PacketError,
    body_bytes,
    canonical_header_name,
    checked_code,
    checked_method,
    checked_msg,
    checked_uri,
    clean_value,
    header_start,
    iter_values,
    make_headers,
    make_tid,
    normalize_header_key,
)
from netsip._headers import HeaderFields
from netsip._parser import Parts, parse
from netsip._parser import parse_stream as _parse_stream
from netsip.digest import Auth, NonceCounter
from netsip.digest import authorize as _authorize

__all__ = [
    "REASON_PHRASES",
    "BodyTruncatedError",
    "Packet",
    "PacketError",
    "Request",
    "Response",
    "canonical_header_name",
    "normalize_header_key",
    "parse_stream",
    "refused_request",
    "truncated_request",
    "warning",
]

# the caches' lookups (see netsip._cache: bound, so as fast as a dict's)
_header_start_get: Final = HEADER_START_CACHE.get
_key_get: Final = KEY_CACHE.get
_cseq_number_get: Final = CSEQ_NUMBER_CACHE.get
# a packet's object, before Packet._set fills it
_new: Final = object.__new__

# the headers of the response-cache key (Packet._ckey)
_KEY_HEADERS: Final = frozenset(("from", "to", "call-id", "cseq"))

# the headers create_response copies from the request (RFC 3261 8.2.6.2)
_RESPONSE_COPIES: Final = frozenset(
    ("via", "record-route", "from", "to", "call-id", "cseq", "timestamp")
)

# key for the To-tags create_response adds: stable within a process (so a
# retransmitted request gets the same tag), different between processes
_TAG_KEY: Final = os.urandom(16)
_TAG_HASH: Final = hashlib.blake2s(digest_size=8, key=_TAG_KEY)


def _tag_of(callid: str | None, frm: str | None) -> str:
    # copying the keyed state costs less than setting up a keyed hash
    h = _TAG_HASH.copy()
    h.update(f"{callid}\x00{frm}".encode(ENC, ERRORS))
    return h.hexdigest()


#: this module runs compiled (mypyc, the ``compiled`` build of netsip): its
#: functions are native ones. A native class is made only through its
#: ``__init__`` and takes no copied methods, so the two interpreter tricks
#: of the performance plan are off then.
_NATIVE: Final = not isinstance(_tag_of, FunctionType)


# the last (Call-ID, From, tag) of Request._to_tag
_last_tag: tuple[str | None, str | None, str] = (None, None, _tag_of(None, None))


def _has_tag(addr: str) -> bool:
    # the tag is a header parameter: after the URI's '>' in name-addr form;
    # a name-addr ending in '>' has no parameters (the usual To of a request)
    if addr[-1:] == ">" and "<" in addr:
        return False
    params = addr.rpartition(">")[2] if "<" in addr else addr
    return TAG_PARAM_RE.search(params) is not None


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
    parts = _parse_stream(buf, start, hend, max_body)
    if parts is None:
        return None
    wire = parts[8]
    assert wire is not None
    if parts[0] is None:
        return _response(parts), start + len(wire)
    return _request(parts), start + len(wire)


class Packet(HeaderFields):
    """A SIP message: the common part of :class:`Request` and :class:`Response`.

    The header methods (``get_header``, ``add_header``, ...) are those of
    :class:`netsip._headers.HeaderFields`. Equality compares the wire form
    (``as_bytes()``), so two packets are equal when they would put the same
    bytes on the wire; packets are mutable and therefore unhashable.
    """

    __slots__ = (
        "_body",
        "_ckey",
        "_cmethod",
        "_code",
        "_first",
        "_lines",
        "_method",
        "_text",
        "_tid",
        "_wire",
    )

    # the start line: method (None in a response), status code (0 in a
    # request), Request-URI or reason phrase
    _method: str | None
    _code: int
    _text: str
    # the original header lines (raw text incl. folding) of a parsed packet,
    # None for a packet built from parts
    _lines: list[str] | None
    # the start line as text, made on demand (None until then)
    _first: str | None
    _body: bytes
    # the wire form, cached until the packet changes
    _wire: bytes | None
    # the transaction id, None until known; reset whenever Call-ID or CSeq
    # change. SocketPool and Dispatcher ask for it several times per
    # transaction (request and response); the parser fills it in from the
    # Call-ID and CSeq it has at hand, create_response copies it.
    _tid: str | None
    # the response-cache key (netsip.respcache.cache_key: CSeq, Call-ID,
    # From, To without tag), None until the dispatcher asks for it; reset
    # whenever one of those headers changes. The dispatcher computes it for
    # every request received and every response sent; create_response
    # gives a response its request's key when the two must be equal.
    _ckey: str | None
    # a response's method (the one in its CSeq), False until asked for;
    # reset whenever CSeq changes. The dispatcher, the leg and the endpoint
    # ask for it several times per response.
    _cmethod: str | Literal[False] | None

    # -- construction -----------------------------------------------------

    def _set(self, parts: Parts) -> None:
        """Fill every slot from ``parts`` (the fields in the order the parser
        gives them): the one place a packet's state is written as a whole."""
        (
            self._method,
            self._code,
            self._text,
            self._hdrs,
            self._tid,
            self._lines,
            self._first,
            self._body,
            self._wire,
        ) = parts
        self._index = None
        self._ckey = None
        self._cmethod = False

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
        if type(data) is not bytes:  # bytes: what transports pass
            if isinstance(data, str):
                try:
                    data = data.encode(ENC, ERRORS)
                except UnicodeEncodeError as exc:
                    raise PacketError(f"cannot encode the message: {exc}") from None
            elif not isinstance(data, bytes):
                if not isinstance(data, (bytearray, memoryview)):
                    raise TypeError(f"expected bytes or str, not {type(data).__name__}")
                data = bytes(data)
        parts = parse(data)
        if parts[0] is None:
            return _response(parts)
        return _request(parts)

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
            tid = self._tid = make_tid(self.get_header("call-id"), self.get_header("cseq"))
        return tid

    def cseq(self) -> str | None:
        """The CSeq header (``"<number> <method>"``) or None."""
        return self.get_header("cseq")

    def cseq_number(self) -> int | None:
        """The number of the CSeq header, or None if there is none."""
        cseq = self.get_header("cseq")
        if cseq is None:
            return None
        # the same few values come back in every call ("1 INVITE", "2 BYE"):
        # remembered (-1: not a CSeq)
        n = _cseq_number_get(cseq)
        if n is None:
            m = CSEQ_RE.fullmatch(cseq)
            n = int(m.group(1)) if m else -1
            CSEQ_NUMBER_CACHE.put(cseq, n)
        return n if n >= 0 else None

    def callid(self) -> str | None:
        """The Call-ID header or None."""
        return self.get_header("call-id")

    def method(self) -> str | None:
        """The request method; for a response the method in its CSeq."""
        raise NotImplementedError

    # -- headers (the methods are HeaderFields') ----------------------------

    def _headers_changed(self, key: str) -> None:
        if key in _KEY_HEADERS:
            self._ckey = None
            # the tid depends on Call-ID and CSeq only
            if key in ("call-id", "cseq"):
                self._tid = None
                self._cmethod = False
        self._wire = None

    # -- body -------------------------------------------------------------

    def body(self) -> bytes:
        """The body (``b""`` if none)."""
        return self._body

    def set_body(self, body: bytes | bytearray | memoryview | str | None) -> None:
        """Replace the body (``str`` is encoded as UTF-8); Content-Length follows."""
        self._body = body_bytes(body)
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
            start_get = _header_start_get
            out += [(start_get(k) or header_start(k)) + v for k, v, _ in hdrs]
        else:
            out.extend(self._header_lines(lines))
        # the last line ends the header block (joined with CRLF: one empty line)
        out.append(f"Content-Length: {blen}\r\n\r\n" if add_cl else "\r\n")
        wire = "\r\n".join(out).encode(ENC, ERRORS) + body
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
        start_get = _header_start_get
        for k, v, ln in self._hdrs:
            if ln < 0:
                out.append((start_get(k) or header_start(k)) + v)
            elif ln != last:
                out.append(lines[ln])
                last = ln
        return out

    def as_string(self) -> str:
        """The wire form as ``str`` (UTF-8, surrogateescape for other bytes)."""
        return self.as_bytes().decode(ENC, ERRORS)

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
        parts: Parts = (
            self._method,
            self._code,
            self._text,
            list(self._hdrs),
            self._tid,
            self._lines,
            self._first,
            self._body,
            self._wire,
        )
        cls = type(self)
        if _NATIVE or cls is Request or cls is Response:  # (compiled: no subclasses)
            return _request(parts) if isinstance(self, Request) else _response(parts)
        new = _new(cls)  # a subclass stays one
        new._set(parts)
        assert isinstance(new, (Request, Response))
        return new

    def _callid_repr(self) -> str:
        return next((v for k, v, _ in self._hdrs if k == "call-id"), "-")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return type(self) is type(other) and self.as_bytes() == other.as_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, like list


_F = TypeVar("_F", bound=Callable[..., None])


def _own_copy(func: _F) -> _F:
    """``func`` with a code object of its own (see the performance plan)."""
    assert isinstance(func, FunctionType)
    copy = FunctionType(func.__code__.replace(), func.__globals__, func.__name__)
    return cast(_F, copy)


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

    __slots__ = ()

    def __init__(
        self,
        method: str,
        uri: str,
        headers: HeadersArg = None,
        body: bytes | str = b"",
        *,
        _parts: Parts | None = None,
    ) -> None:
        # _parts: internal, the parser's (and _request's) fields, taken unchecked
        if _parts is not None:  # from _request: already checked
            self._set(_parts)
            return
        method = checked_method(method)
        uri = checked_uri(uri)
        self._set((method, 0, uri, make_headers(headers), None, None, None, body_bytes(body), None))

    def is_request(self) -> bool:
        """True: this is a request."""
        return True

    def method(self) -> str:
        """The request method."""
        return self._method  # type: ignore[return-value]  # never None in a Request

    def uri(self) -> str:
        """The Request-URI."""
        return self._text

    def set_uri(self, uri: str) -> None:
        """Replace the Request-URI."""
        self._text = checked_uri(uri)
        self._first = None
        self._wire = None

    def set_cseq(self, number: int) -> None:
        """Set the CSeq header to ``number`` and this request's method."""
        self.set_header("cseq", f"{int(number)} {self._method}")

    def _start_line(self) -> str:
        first = self._first
        if first is None:
            first = self._first = f"{self._method} {self._text} SIP/2.0"
        return first

    def as_parts(self) -> tuple[str, str, list[tuple[str, str]], bytes]:
        """``(method, uri, [(key, value), ...], body)``."""
        return self._method, self._text, self.header_items(), self._body  # type: ignore[return-value]

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
            first = STATUS_LINES.get(code)
            msg = REASON_PHRASES.get(code, "")
        # the Vias come first in the response, in order: they go to hdrs at once
        hdrs: list[Hdr] = []
        rr: list[str] = []
        frm = to = callid = cseq = ts = None
        # the request's cache key serves the response if the key's headers
        # are each there once (a repeated one is in the request's key
        # twice, once in the response's)
        ckey = self._ckey
        copied = _RESPONSE_COPIES
        for k, v, _ in self._hdrs:
            if k not in copied:
                continue
            if k == "via":
                hdrs.append(("via", v, -1))
            elif k == "record-route":
                rr.append(v)
            elif k == "from":
                if frm is not None:
                    ckey = None
                frm = v
            elif k == "to":
                if to is not None:
                    ckey = None
                to = v
            elif k == "call-id":
                if callid is not None:
                    ckey = None
                callid = v
            elif k == "cseq":
                if cseq is not None:
                    ckey = None
                cseq = v
            elif k == "timestamp":
                ts = v
        if to is not None and code != 100 and not _has_tag(to):
            if to[-1:] != ">":
                # (appended to a name-addr's '>', the tag leaves the key's To
                # as it was: the key strips a tag after the last '>')
                ckey = None
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
        if first is None:
            code = checked_code(code)
            msg = checked_msg(msg)
        # the same Call-ID and CSeq values, so the same tid (None if the
        # request's is not known: then it may not be valid, e.g. two Call-IDs);
        # set_header below resets it if ``headers`` replaces either
        resp = _response(
            (
                None,
                code,
                msg,
                hdrs,
                self._tid,
                None,
                first,
                body if type(body) is bytes else body_bytes(body),
                None,
            )
        )
        resp._ckey = ckey
        if cseq is not None:
            # (what Response.method() would find: the CSeq's method, known
            # here without building the response's header index for it)
            parts = cseq.split()
            resp._cmethod = parts[1] if len(parts) > 1 else None
        if headers:
            items = (
                headers.items()
                if type(headers) is dict or isinstance(headers, Mapping)
                else headers
            )
            added: set[str] | None = None
            for name, values in items:
                key = _key_get(name) or normalize_header_key(name)
                if key in copied or (added is not None and key in added):
                    resp.set_header(name, values)
                    continue
                # a header the response does not have yet (Contact, Content-Type
                # ...): set_header would scan the headers for it and append;
                # appended directly (the index is not built yet, and the
                # transaction id does not depend on it)
                if type(values) is str and "\n" not in values and "\r" not in values:
                    # (one plain value, the usual case: what clean_value makes of it)
                    resp._hdrs.append((key, values.strip(" \t"), -1))
                else:
                    resp._hdrs.extend([(key, clean_value(v), -1) for v in iter_values(values)])
                if added is None:
                    added = set()
                added.add(key)
        return resp

    def response_tag(self) -> str:
        """The To tag :meth:`create_response` gives this request's responses
        when its To has none (the same for every response and retransmission).
        A UAS uses it as its local tag (RFC 3261 12.1.1)."""
        return self._to_tag(self.get_header("call-id"), self.get_header("from"))

    @staticmethod
    def _to_tag(callid: str | None, frm: str | None) -> str:
        # the last tag is remembered: a UAS asks for the same request's tag
        # several times in a row (its local tag, the 180, the 200)
        global _last_tag
        last = _last_tag
        if last[0] == callid and last[1] == frm:
            return last[2]
        tag = _tag_of(callid, frm)
        _last_tag = (callid, frm, tag)
        return tag

    def _dialog_request(self, method: str, to: list[str]) -> Request:
        num = ""
        cseq = self.get_header("cseq")
        if cseq:
            num = cseq.split(None, 1)[0]
        vias = self.get_headers("via")
        hdrs: list[Hdr] = [("via", vias[0], -1)] if vias else []
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
        return _request((method, 0, self._text, hdrs, None, None, None, b"", None))

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

    def authorize(
        self, response: Response, auth: Auth, *, nonces: NonceCounter | None = None
    ) -> bool:
        """Add digest credentials for the challenges of a 401/407 (RFC 3261 22.2).

        ``Authorization`` answers ``WWW-Authenticate``, ``Proxy-Authorization``
        answers ``Proxy-Authenticate``; per realm the strongest supported
        challenge, replacing earlier credentials for that realm. On success the
        CSeq number is raised above the response's (as Net::SIP does). See
        :func:`netsip.digest.authorize`.

        Args:
            response: the 401/407 to this request.
            auth: ``(user, password)``, a mapping realm -> ``(user, password)``,
                or a callable ``realm -> (user, password) | None``.
            nonces: the context's nonce counts (``nc``); without, ``nc`` is 1.

        Returns:
            True if credentials were added; False (request unchanged) if no
            challenge was usable, none had credentials, or the credentials
            were refused (a repeated challenge without ``stale=true``).
        """
        return _authorize(self, response, auth, nonces=nonces)

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._text} call-id={self._callid_repr()}>"


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

    __slots__ = ()

    def __init__(
        self,
        code: int | str,
        msg: str,
        headers: HeadersArg = None,
        body: bytes | str = b"",
        *,
        _parts: Parts | None = None,
    ) -> None:
        # _parts: internal, the parser's (and _response's) fields, taken unchecked
        if _parts is not None:  # from _response: already checked
            self._set(_parts)
            return
        code = checked_code(code)
        msg = checked_msg(msg)
        self._set(
            (None, code, msg, make_headers(headers), None, None, None, body_bytes(body), None)
        )

    def is_response(self) -> bool:
        """True: this is a response."""
        return True

    def code(self) -> int:
        """The status code."""
        return self._code

    def msg(self) -> str:
        """The reason phrase."""
        return self._text

    def method(self) -> str | None:
        """The method of the request, from the CSeq header (None without)."""
        method = self._cmethod
        if method is not False:
            return method
        cseq = self.get_header("cseq")
        if not cseq:
            method = None
        else:
            parts = cseq.split()
            method = parts[1] if len(parts) > 1 else None
        self._cmethod = method
        return method

    def _start_line(self) -> str:
        first = self._first
        if first is None:
            first = self._first = f"SIP/2.0 {self._code} {self._text}"
        return first

    def as_parts(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """``(code, msg, [(key, value), ...], body)``."""
        return self._code, self._text, self.header_items(), self._body

    def __repr__(self) -> str:
        return f"<Response {self._code} {self._text!r} call-id={self._callid_repr()}>"


if not _NATIVE:  # each class its own copy of the slot writer (see the performance plan)
    setattr(Request, "_set", _own_copy(Packet._set))  # noqa: B010
    setattr(Response, "_set", _own_copy(Packet._set))  # noqa: B010


def _request(parts: Parts) -> Request:
    """A Request with the fields ``parts``. With :func:`_response` the way
    every packet is made but by its public constructor: the parser's
    results, ACK/CANCEL, responses. One function per class rather than one
    taking the class: CPython specialises the calls and stores in it for
    one type, and this runs for every packet."""
    if _NATIVE:  # (compiled, a class is made through its __init__ only)
        return Request("", "", _parts=parts)
    pkt = _new(Request)
    pkt._set(parts)
    return pkt


def _response(parts: Parts) -> Response:
    """A Response with the fields ``parts`` (see :func:`_request`)."""
    if _NATIVE:
        return Response(0, "", _parts=parts)
    pkt = _new(Response)
    pkt._set(parts)
    return pkt


#: the headers a 400 needs (RFC 3261 8.2.6.2), long and compact names
_ANSWER_HEADERS: Final = frozenset({"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"})


def refused_request(data: bytes) -> Request | None:
    """The request in a datagram the parser refused, for its 400 (RFC 3261 21.4.1).

    The message again with only Via, From, To, Call-ID and CSeq: enough to
    answer. None for a response, an ACK (never answered), or headers that
    are broken even so.
    """
    head = data.lstrip(b"\r\n").partition(b"\r\n\r\n")[0]
    lines: list[str] = []
    for line in head.decode(ENC, ERRORS).split("\r\n"):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()  # folded (RFC 3261 7.3.1)
        else:
            lines.append(line)
    keep = [ln for ln in lines[1:] if ln.partition(":")[0].strip().lower() in _ANSWER_HEADERS]
    first = lines[0].split(" ")
    starts = [lines[0]]
    if len(first) == 3 and first[0].isalpha() and first[2] == "SIP/2.0":
        # a bad Request-URI: the response does not carry it
        starts.append(f"{first[0]} sip:invalid.invalid SIP/2.0")
    for start in starts:
        try:
            pkt = Packet.new_from_string(
                ("\r\n".join([start, *keep]) + "\r\n\r\n").encode(ENC, ERRORS)
            )
            break
        except PacketError:
            continue
    else:
        return None
    if not isinstance(pkt, Request) or pkt.method() == "ACK" or not pkt.get_headers("via"):
        return None
    return pkt


def warning(reason: object, agent: str = "netsip") -> str:
    """A Warning header value (RFC 3261 20.43) saying ``reason``: code 399,
    printable ASCII only, at most 100 characters."""
    text = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in str(reason)[:100])
    return f'399 {agent} "{text}"'


def truncated_request(exc: BodyTruncatedError) -> Request | None:
    """The request of a datagram whose body is shorter than its Content-Length.

    RFC 3261 18.3: such a request is answered with 400; this gives the
    request (its body as far as it came) for ``create_response``. None if
    the message was a response (those are discarded).
    """
    parts = cast(Parts, exc.parts)
    return _request(parts) if parts[0] is not None else None
