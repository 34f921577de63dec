"""The SIP message parser: bytes in, the parts of a packet out.

Private to :mod:`netsip.packet` (which makes packets of the parts) and
:mod:`netsip.framing` (through :func:`netsip.packet.parse_stream`); the
parsing half of ``Net::SIP::Packet::new_from_string``. Pure: no I/O, no
clock, and no knowledge of the packet classes.

A message is parsed in one pass: the start line, then each header line
(continuation lines unfolded, compact names such as ``v`` or ``i``
normalised to ``via`` / ``call-id``), then per-header rules: list headers
are split at commas outside quotes and ``<>``, numeric headers must be
numbers, ``Call-ID`` and ``CSeq`` must have their syntax, addresses (From,
To, Contact, Route, ...) and Via must be well formed, single-valued headers
may not conflict, the CSeq method must be the request's, and
``Content-Length`` must fit the body. Everything is validated eagerly, so a
message that parsed is sane; what was wrong otherwise is said by
:class:`~netsip._fields.PacketError`. The result is :data:`Parts`: the
fields of a packet, which :mod:`netsip.packet` makes a packet of.

Performance plan:

- Operations: every datagram and every stream message received is parsed;
  most of its lines (Max-Forwards, To, CSeq, Content-Length, Allow, ...) are
  the lines of the previous message, a few (Via, From tag, Call-ID) are new
  in every call.
- Goal: a line seen before costs one dict lookup and an append; a new line
  costs its checks once.
- Plan: the fast path takes the usual message (the header block ends at
  the first CRLF CRLF, no bare CR or LF, nothing folded) and splits it at
  CRLF. A bare CR or LF or a folded line fails there (no such line is ever
  cached, names starting with SP/HT are refused), and any failure goes to
  the general path, which unfolds first and so raises exactly the error it
  always did. Each line is then looked up in the caches of
  :mod:`netsip._cache`: whole valid lines (``LINE_CACHE``); Via and From/To
  lines without their last parameter, the branch or tag that is all that is
  new in them (``PREFIX_CACHE``); the Call-ID line is validated by one
  match. A tagged From/To line or a Call-ID line found valid these ways
  enters ``DIALOG_LINE_CACHE``, looked up after ``LINE_CACHE``: the
  dialog's later requests (ACK, BYE) repeat it (a Via, with a branch per
  transaction, does not enter). That cache is small (the calls in flight),
  apart from the stable lines, so that lines unique per call neither evict
  those nor hold much memory. Only a line none of these know takes the
  general way (:func:`_parse_line`), which fills the caches. What depends on the other
  lines of the message (conflicting single values, the CSeq method) is
  checked for every line, cached or not, in one place. The transaction id
  is made while Call-ID and CSeq are at hand.

Differences from Net::SIP: besides the stricter syntax (see
:mod:`netsip._abnf`), conflicting values of any single-valued header are
refused (Net::SIP: a few), octets beyond Content-Length are dropped
(RFC 3261 18.3) rather than refused, and a Content-Length larger than the
body is an error.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias

from netsip._abnf import (
    ADDR_RE,
    CALLID_LINE_RE,
    CALLID_RE,
    HEADER_END,
    HEADER_END_ANY_RE,
    LAST_PARAM_RE,
    REQUEST_LINE_RE,
    STATUS_LINE_RE,
    VIA_RE,
)
from netsip._cache import (
    DIALOG_LINE_CACHE,
    FIRST_CACHE,
    LINE_CACHE,
    LINE_CACHE_LINE_MAX,
    NAME_CACHE,
    PREFIX_CACHE,
    PREFIX_SEEN,
    LineEntry,
)
from netsip._fields import (
    ADDR,
    ADDRLIST,
    CALLID,
    CSEQ,
    ENC,
    ERRORS,
    KIND,
    LIMITS,
    LIST,
    NUM,
    NUM_MAX,
    VIA,
    BodyTruncatedError,
    Hdr,
    PacketError,
    check_addr,
    check_balanced,
    check_cseq,
    check_number,
    check_uri,
    first_line_error,
    make_tid,
    normalize_header_key,
    split_list,
)
from netsip._log import get_logger

# the packet layer's logger: this module is its private part
log: Final = get_logger("netsip.packet")

# A parsed message: (method or None, status code or 0, Request-URI or
# reason phrase, headers, transaction id, the raw header lines, the start
# line, body, wire form or None if the received bytes cannot serve as one).
Parts: TypeAlias = tuple[
    str | None, int, str, list[Hdr], str | None, list[str] | None, str | None, bytes, bytes | None
]

# the caches' lookups (see netsip._cache: bound, so as fast as a dict's)
_line_get: Final = LINE_CACHE.get
_dialog_get: Final = DIALOG_LINE_CACHE.get
_prefix_get: Final = PREFIX_CACHE.get
_seen_get: Final = PREFIX_SEEN.get
_first_get: Final = FIRST_CACHE.get
_name_get: Final = NAME_CACHE.get


# ---------------------------------------------------------------------------
# entry points


def parse(data: bytes) -> Parts:
    """Parse one whole message (a datagram, or a message a stream framer cut out).

    Raises:
        PacketError: the message is malformed; the text says why.
    """
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 7.5: CRLFs before the start line are ignored
        data = data.lstrip(b"\r\n")
    i = data.find(HEADER_END)
    if i >= 0:  # the fast path (see the performance plan)
        lines = data[:i].decode(ENC, ERRORS).split("\r\n")
        try:
            return _build(data, lines, lines, i + 4, True)
        except BodyTruncatedError:
            raise  # (the general way would only find it again)
        except PacketError:
            pass
    return parse_general(data)


def parse_general(data: bytes) -> Parts:
    """Parse any message: bare LF line ends, folded lines, or one that is invalid."""
    hend, bstart, complete = _find_header_end(data)
    head = data[:hend].decode(ENC, ERRORS)

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


def parse_stream(buf: bytes | bytearray, start: int, hend: int, max_body: int) -> Parts | None:
    """Frame and parse the usual message of a stream in one go (see
    :func:`netsip.packet.parse_stream`): None unless the header block
    ``buf[start:hend]`` is one the fast path takes and its Content-Length
    (at most ``max_body``) says where the message ends within ``buf``. The
    message is then the wire form of the parts, ``buf[start:start + len(wire)]``.
    """
    if buf[start] in (10, 13):
        return None  # line breaks before the start line: see parse
    lines = buf[start:hend].decode(ENC, ERRORS).split("\r\n")
    try:
        parts = _build(
            b"", lines, lines, hend + 4, True, stream=buf, start=start, max_body=max_body
        )
    except PacketError:
        return None
    return None if parts[8] is None else parts


# ---------------------------------------------------------------------------
# the header block


def _find_header_end(data: bytes) -> tuple[int, int, bool]:
    """(end of the header block, start of the body, whether an empty line ends it)."""
    # the usual CRLFCRLF is found with a fast substring search; Net::SIP also
    # accepts LFs without CR, so an earlier separator of that kind wins
    i = data.find(HEADER_END)
    limit = len(data) if i < 0 else i + 3
    if data.find(b"\n\n", 0, limit) >= 0 or data.find(b"\n\r\n", 0, limit) >= 0:
        m = HEADER_END_ANY_RE.search(data)
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
    the unfolded lines are returned. Linear in the number of lines: each
    logical line is joined once (16,000 continuation lines used to cost a
    string rebuild each).
    """
    groups: list[list[str]] = [[lines[0]]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(groups) == 1:
                raise PacketError(f"bad header line {line!r}")
            groups[-1].append(line)
        else:
            groups.append([line])
    raw: list[str] = []
    flat: list[str] = []
    for group in groups:
        if len(group) == 1:
            raw.append(group[0])
            flat.append(group[0])
            continue
        raw.append("\r\n".join(group))
        conts = [c for c in (line.strip(" \t") for line in group[1:]) if c]
        flat.append(group[0].rstrip(" \t") + " " + " ".join(conts) if conts else group[0])
    lines[:] = raw
    return flat


def _build(
    data: bytes,
    lines: list[str],
    flat: list[str],
    bstart: int,
    complete: bool,
    *,
    stream: bytes | bytearray | None = None,
    start: int = 0,
    max_body: int = 0,
) -> Parts:
    """Validate the start line and headers of a split message; its parts.

    Args:
        data: the whole message; the body starts at ``bstart``.
        lines: the raw logical header lines (kept for re-emission), start line first.
        flat: the same lines unfolded (``lines`` itself if nothing was folded).
        complete: an empty line ended the header.
        stream: for :func:`parse_stream`: the connection's buffer, the
            message starting at ``start``, its body at ``bstart`` (``data``
            is empty); the message ends where its Content-Length (at most
            ``max_body``) says. If it cannot (no or too large a
            Content-Length, the body not all in the buffer), the parts have
            no wire form.
    """
    first = lines[0]
    # from here on the raw header lines alone, index = line number (kept
    # for re-emission); ``flat`` likewise
    del lines[0]
    if flat is not lines:
        del flat[0]
    known = _first_get(first)
    if known is not None:
        method, code, text = known
    else:
        method, code, text = _first_line(first)

    limits = LIMITS
    if len(flat) > limits.max_headers:
        raise PacketError(f"too many header lines: {len(flat)} > {limits.max_headers}")
    hdrs: list[Hdr] = []
    append = hdrs.append
    once: dict[str, str] = {}
    cseq_method: str | None = None
    line_get = _line_get
    dialog_get = _dialog_get
    dialog_put = DIALOG_LINE_CACHE.put
    prefix_get = _prefix_get
    last_param = LAST_PARAM_RE.fullmatch
    callid_line = CALLID_LINE_RE.fullmatch
    values: tuple[str, ...] | None
    cm: str | None
    for lineno, line in enumerate(flat):
        hit = line_get(line)
        if hit is None:
            hit = dialog_get(line)
        if hit is not None:
            # a line seen (and found valid) before
            key, value, values, single, cm = hit
        else:
            i = line.rfind(";")
            if (
                i > 0
                and (seen := prefix_get(line[:i])) is not None
                and last_param(line, i) is not None
            ):
                # a Via or From/To line whose last parameter (branch, tag)
                # is new and plain, the rest seen and valid before
                key, single, vstart = seen
                value = line[vstart:]
                values = cm = None
                if single and len(line) <= LINE_CACHE_LINE_MAX:
                    # a tagged From/To: the same line comes back in the
                    # dialog's later requests (ACK, BYE), a Via (a branch
                    # per transaction) does not
                    dialog_put(line, (key, value, None, True, None))
            elif i <= 0 and (m := callid_line(line)) is not None:
                key = "call-id"
                value = m[1]
                single = True
                values = cm = None
                if len(line) <= LINE_CACHE_LINE_MAX:
                    dialog_put(line, (key, value, None, True, None))  # (likewise)
            else:
                key, value, values, single, cm = _parse_line(line, i)
        # what depends on the other lines of the message: done for every line
        if values is not None:
            if len(values) > limits.max_values:
                raise PacketError(f"too many values in {key}: {len(values)} > {limits.max_values}")
            for v in values:
                append((key, v, lineno))
            continue
        if single:
            if cm is not None:
                cseq_method = cm
            # several different values make the message ambiguous (RFC 4475
            # 3.3.9 multi01, 3.3.10 mcl01); the same value repeated does not
            prev = once.setdefault(key, value)
            if prev != value:
                raise PacketError(f"conflicting definition of {key}: {prev!r} and {value!r}")
        append((key, value, lineno))

    if method is not None and cseq_method is not None and cseq_method != method:
        raise PacketError(
            f"method in cseq does not match method of request: {cseq_method} != {method}"
        )

    # Call-ID and CSeq are single-valued and at hand: the tid costs less now
    # than through the header index later, and every receiver asks for it
    tid = make_tid(once.get("call-id"), once.get("cseq"))
    cl = once.get("content-length")
    if stream is not None:
        # RFC 3261 20.14: Content-Length is mandatory on streams; it frames the message
        n = -1 if cl is None else int(cl)
        end = bstart + n
        if n < 0 or n > max_body or end > len(stream):
            return method, code, text, hdrs, tid, lines, first, b"", None
        message = bytes(stream[start:end])
        body = message[bstart - start :] if n else b""
        return method, code, text, hdrs, tid, lines, first, body, message
    body = data[bstart:]
    if cl is not None:
        n = int(cl)
        if n < len(body):
            # RFC 3261 18.3: octets beyond Content-Length are discarded
            log.debug("discarding %d octets after the body", len(body) - n)
            body = body[:n]
            data = data[: bstart + n]
        elif n > len(body):
            raise BodyTruncatedError(
                f"content-length {n} is larger than the body ({len(body)} octets)",
                (method, code, text, hdrs, tid, lines, first, body, None),
            )
    # the received bytes are the wire form, unless they lack Content-Length
    # (needed on stream transports, RFC 3261 20.14) or the empty line
    wire = data if cl is not None and complete else None
    return method, code, text, hdrs, tid, lines, first, body, wire


def _parse_line(line: str, i: int) -> LineEntry:
    """Validate a header line no cache knows; ``i`` is its last ``;`` (or -1).

    Returns:
        What LINE_CACHE holds for it (and holds from now on, unless the line
        is unique per transaction or call: Via, Call-ID, a tagged From/To).
    """
    if "\r" in line or "\n" in line:
        # only in the fast path: the general path takes over
        raise PacketError(f"bare CR or LF in line {line!r}")
    name, colon, value = line.partition(":")
    if not colon:
        raise PacketError(f"bad header line {line!r}")
    cached = _name_get(name)
    key, kind = _line_key(name, line) if cached is None else cached
    value = value.strip(" \t")
    entry: LineEntry
    if kind is None:
        entry = (key, value, None, False, None)
    elif kind >= LIST:
        if "," not in value:  # one element: the common case, checked inline
            if kind == VIA:
                if VIA_RE.fullmatch(value) is None:
                    raise PacketError(f"invalid via: {value!r}")
                if i > 0:
                    _learn_prefix(line, i, value, key, single=False, pattern=VIA_RE)
            elif kind == ADDRLIST:
                if ADDR_RE.fullmatch(value) is None:
                    check_addr(value, key)
            elif '"' in value or "<" in value or "\\" in value:
                check_balanced(value, key)
            entry = (key, value, None, False, None)
        else:
            elems = split_list(value, key)
            if len(elems) > LIMITS.max_values:  # before each value is checked
                raise PacketError(f"too many values in {key}: {len(elems)} > {LIMITS.max_values}")
            if kind == ADDRLIST:
                for v in elems:
                    if ADDR_RE.fullmatch(v) is None:
                        check_addr(v, key)
            elif kind == VIA:
                for v in elems:
                    if VIA_RE.fullmatch(v) is None:
                        raise PacketError(f"invalid via: {v!r}")
            entry = (key, value, tuple(elems), False, None)
        if kind == VIA:
            return entry  # its branch makes every Via unique: not worth caching
    else:
        tagged = False
        cseq_method = None
        if kind == ADDR:
            if ADDR_RE.fullmatch(value) is None:
                check_addr(value, key)
            # a tag (or other last parameter) makes the line unique per
            # dialog: not worth the line cache, its prefix may be
            tagged = i > 0 and ">" not in line[i:]
            if tagged:
                _learn_prefix(line, i, value, key, single=True, pattern=ADDR_RE)
        elif kind == NUM:
            if not (value.isdigit() and value.isascii() and len(value) <= 12) or (
                int(value) > NUM_MAX[key]
            ):
                check_number(value, key)  # raises, saying what is wrong
        elif kind == CALLID:
            if CALLID_RE.fullmatch(value) is None:
                raise PacketError(f"invalid callid, should be 'word [@ word]': {value!r}")
        elif kind == CSEQ:
            cseq_method = check_cseq(value)
        entry = (key, value, None, True, cseq_method)
        if kind == CALLID or tagged:
            return entry  # unique per call (dialog): not worth caching
    if len(line) <= LINE_CACHE_LINE_MAX:
        LINE_CACHE.put(line, entry)
    return entry


def _line_key(name: str, line: str) -> tuple[str, int | None]:
    """Key and kind for the name part of a header line (NAME_CACHE missed)."""
    rname = name.rstrip(" \t")
    if not rname or rname[0] in " \t":
        raise PacketError(f"bad header line {line!r}")
    key = normalize_header_key(rname)
    result = key, KIND.get(key)
    NAME_CACHE.put(name, result)
    return result


def _first_line(first: str) -> tuple[str | None, int, str]:
    """Validate a start line (FIRST_CACHE missed): (method, 0, Request-URI)
    or (None, code, phrase)."""
    m = REQUEST_LINE_RE.fullmatch(first)
    if m is not None:
        method, text, _ = m.groups()
        check_uri(text)
        result: tuple[str | None, int, str] = (method, 0, text)
    else:
        m = STATUS_LINE_RE.fullmatch(first)
        if m is None:
            raise first_line_error(first)
        result = (None, int(m.group(1)), (m.group(2) or "").rstrip(" \t"))
    if len(first) <= LINE_CACHE_LINE_MAX:
        FIRST_CACHE.put(first, result)
    return result


def _learn_prefix(
    line: str, i: int, value: str, key: str, *, single: bool, pattern: re.Pattern[str]
) -> None:
    """After ``value`` (of ``line``) was found valid: remember the line up to its
    last ``;`` (at ``i``) in PREFIX_CACHE if what follows is a plain parameter
    and the rest is valid alone.

    A line with a known prefix and a plain last parameter (LAST_PARAM_RE) is
    valid: the parameter repetition at the end of VIA_RE and ADDR_RE takes
    one more, and nothing before the last ';' can extend over it (a ';' there
    is part of a parameter, a quoted string or <...>, and the new parameter
    has no '"' or '>' that could close one).

    A prefix is checked and kept only the second time it is seen: with a
    connection (or socket) per call the sender's port is in every Via and
    From, so most prefixes never come back, and checking them twice would
    only cost (and churn the cache).
    """
    prefix = line[:i]
    if not _seen_get(prefix):
        PREFIX_SEEN.put(prefix, True)
        return
    off = len(line) - len(value)  # the parameter ends the line: nothing stripped
    j = i - off  # the ';' in value
    if (
        j > 0
        and LAST_PARAM_RE.fullmatch(value, j) is not None
        and pattern.fullmatch(value, 0, j) is not None
    ):
        PREFIX_CACHE.put(prefix, (key, single, off))
