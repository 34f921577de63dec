"""Fuzz harness for :meth:`netsip.packet.Packet.new_from_string`.

Invariants checked for every input:

* only :class:`~netsip.packet.PacketError` comes out of the parser (for the
  bytes and for the equivalent ``str`` input, which must give the same result);
* a parsed packet answers every accessor (``tid``, ``cseq``, ``headers`` ...;
  ``get_header`` may raise ``PacketError`` for conflicting values only);
* it is parsed within :data:`BUDGET` seconds of CPU;
* its wire form parses again to an equal packet (same headers, apart from
  a ``Content-Length`` that ``as_bytes`` adds, and body), and so does the wire form of
  a modified copy (what a proxy forwarding it would send).

Run (from the repository root)::

    python3 -m fuzz.run packet -max_total_time=600 fuzz/out/packet
"""

from __future__ import annotations

import contextlib
import sys
import time

from netsip._fields import LIMITS
from netsip.packet import Packet, PacketError, Request, Response

_ENC = "utf-8"


def _parse(data: bytes | str) -> Request | Response | PacketError:
    try:
        return Packet.new_from_string(data)
    except PacketError as exc:
        # the message must say what is wrong
        assert str(exc), "PacketError without a message"
        return exc


def _items(pkt: Request | Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in pkt.header_items() if k != "content-length"]


def _exercise(pkt: Request | Response) -> None:
    pkt.tid()
    pkt.cseq()
    pkt.cseq_number()
    pkt.callid()
    pkt.method()
    pkt.dump()
    for key in pkt.headers():
        with contextlib.suppress(PacketError):  # several different values: may raise
            pkt.get_header(key)
        pkt.get_headers(key)
    if isinstance(pkt, Request):
        pkt.uri()
        with contextlib.suppress(PacketError):
            pkt.create_response(200)
    else:
        pkt.code()
        pkt.msg()


#: CPU seconds one input may cost to parse (a datagram of up to 65,507 bytes):
#: a slow input is a failure, not only a crash. The hostile inputs the parser
#: is bounded against take under 10 ms; before they were bounded, seconds.
#: The budget leaves room for a busy machine (CPU time still grows with
#: cache misses when other processes run).
BUDGET = 0.5


def _one_over_the_bound(res: Request | Response | PacketError) -> bool:
    """A message at MAX_HEADERS that got one (or two) header lines more and is
    refused for it, as every bounded parser (Kamailio's too) would."""
    if not isinstance(res, PacketError):
        return False
    text = str(res)
    limit = LIMITS.max_headers
    return text.startswith(
        (f"too many header lines: {limit + 1} ", f"too many header lines: {limit + 2} ")
    )


def check(data: bytes) -> None:
    """TestOneInput: raise if an invariant is broken for ``data``."""
    start = time.thread_time()
    res = _parse(data)
    spent = time.thread_time() - start
    assert spent < BUDGET, f"parsing {len(data)} bytes took {spent * 1000:.1f} ms of CPU"
    res_str = _parse(data.decode(_ENC, "surrogateescape"))
    assert type(res) is type(res_str), (res, res_str)
    if isinstance(res, PacketError):
        return
    assert res == res_str
    _exercise(res)

    wire = res.as_bytes()
    again = _parse(wire)
    if _one_over_the_bound(again):
        return  # as_bytes added the Content-Length line the bound had no room for
    assert not isinstance(again, PacketError), f"own wire form does not parse: {again}"
    assert again == res
    # as_bytes() adds a missing Content-Length to the wire form only
    assert _items(again) == _items(res)
    assert again.body() == res.body()

    copy = res.clone()
    copy.add_header("x-fuzz", "1")
    copy.set_body(res.body() + b"!")
    rebuilt = _parse(copy.as_bytes())
    if _one_over_the_bound(rebuilt):
        return  # at the bound, one header more than the parser takes: refused, rightly
    assert not isinstance(rebuilt, PacketError), f"modified packet does not parse: {rebuilt}"
    assert _items(rebuilt) == _items(copy), (_items(rebuilt), _items(copy))
    assert rebuilt.body() == copy.body()


if __name__ == "__main__":  # pragma: no cover
    from fuzz.run import main

    main([sys.argv[0], "packet", *sys.argv[1:]])
