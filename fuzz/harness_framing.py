"""Fuzz harness for the stream framer :func:`netsip.framing.frame`.

Input layout: byte 0 selects ``max_header`` (``8 + 4*b``: 8..1028), byte 1
``max_body`` (``8*b``: 0..2040), byte 2 the chunk size for the incremental
run (1..256), the rest is the byte stream of one connection. Small limits
let short inputs reach every limit check.

Invariants checked:

* only :class:`~netsip.framing.FramingError` comes out of ``frame``;
* every :class:`~netsip.framing.Message` respects the limits: it lies inside
  the buffer, is preceded only by keep-alive CRLFs, its header (up to the
  first ``CRLF CRLF``) has at most ``max_header`` bytes, and its body, the
  rest of the span, at most ``max_body`` bytes;
* a :class:`~netsip.framing.NeedMore` is consistent (``start <= scan <= len``,
  ``need`` 0 or beyond the buffer);
* feeding the stream in chunks the way SocketPool does (resuming at
  ``scan``, skipping calls below ``need``) yields exactly the messages and
  the error that framing the whole stream at once yields.

Run (from the repository root)::

    python3 -m fuzz.run framing -max_total_time=600 fuzz/out/framing
"""

from __future__ import annotations

import sys

from netsip.framing import FramingError, Message, NeedMore, frame

_CRLF = b"\r\n"


def limits(data: bytes) -> tuple[int, int, int, bytes]:
    """``(max_header, max_body, chunk, stream)`` decoded from a fuzz input."""
    head = data[:3].ljust(3, b"\0")
    return 8 + 4 * head[0], 8 * head[1], 1 + head[2], data[3:]


def _check_message(buf: bytes | bytearray, pos: int, m: Message, mh: int, mb: int) -> None:
    assert pos <= m.start < m.end <= len(buf), (pos, m, len(buf))
    gap = bytes(buf[pos : m.start])
    assert gap == _CRLF * (len(gap) // 2), f"non keep-alive bytes skipped: {gap!r}"
    hend = buf.find(b"\r\n\r\n", m.start)
    assert hend >= 0, "message without header end"
    assert hend - m.start <= mh, f"header of {hend - m.start} bytes > {mh}"
    body = m.end - (hend + 4)
    assert 0 <= body <= mb, f"body of {body} bytes > {mb}"


def _check_need(buf: bytes | bytearray, pos: int, r: NeedMore) -> None:
    n = len(buf)
    assert pos <= r.start <= r.scan <= n, (pos, r, n)
    assert r.need == 0 or r.need > n, (r, n)


def frame_whole(stream: bytes, mh: int, mb: int) -> tuple[list[bytes], str | None]:
    """Frame the whole stream at once: the messages and the error (if any)."""
    out: list[bytes] = []
    pos = 0
    while True:
        try:
            r = frame(stream, mh, mb, pos)
        except FramingError as exc:
            return out, str(exc)
        if isinstance(r, NeedMore):
            _check_need(stream, pos, r)
            return out, None
        _check_message(stream, pos, r, mh, mb)
        out.append(stream[r.start : r.end])
        pos = r.end


def frame_chunked(stream: bytes, mh: int, mb: int, chunk: int) -> tuple[list[bytes], str | None]:
    """Frame the stream as it arrives in ``chunk``-byte reads (SocketPool's way)."""
    buf = bytearray()
    out: list[bytes] = []
    scan = need = 0
    for i in range(0, len(stream), chunk):
        buf += stream[i : i + chunk]
        if len(buf) < need:
            continue
        pos = 0
        while True:
            try:
                r = frame(buf, mh, mb, pos, scan)
            except FramingError as exc:
                return out, str(exc)
            if isinstance(r, NeedMore):
                _check_need(buf, pos, r)
                break
            _check_message(buf, pos, r, mh, mb)
            out.append(bytes(buf[r.start : r.end]))
            pos = scan = r.end
        del buf[: r.start]
        scan = r.scan - r.start
        need = r.need - r.start if r.need else 0
    return out, None


def check(data: bytes) -> None:
    """TestOneInput: raise if an invariant is broken for ``data``."""
    mh, mb, chunk, stream = limits(data)
    whole = frame_whole(stream, mh, mb)
    chunked = frame_chunked(stream, mh, mb, chunk)
    # the error text may differ only in which limit was seen first; both must fail
    assert whole[0] == chunked[0], (whole, chunked)
    assert (whole[1] is None) == (chunked[1] is None), (whole, chunked)


if __name__ == "__main__":  # pragma: no cover
    from fuzz.run import main

    main([sys.argv[0], "framing", *sys.argv[1:]])
