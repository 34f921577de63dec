"""SocketPool's batching: UDP batch reads, responses held until the end of a
batch, and coalesced writes on streams.

Each is a shortcut of the hot path (``docs/performance.md``) and is checked
here against the behaviour it must not change: every packet delivered, in
order; nothing read after the pool is closed; held responses sent in order,
also when a callback raises or the pool closes; a failed send reported to its
callback; a burst's responses all written and confirmed, within the write
limit. Timing is the business of ``benchmarks/``, not of tests.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable

import pytest

from netsip.eventloop import EventLoop
from netsip.packet import Packet, Request
from netsip.socketpool import SocketPool
from netsip.util import Addr
from tests.support import addr_of, datagrams, options, skip_unless_native, udp_socket

# ------------------------------------------------------------- UDP batch reads


def test_udp_batch_reads_deliver_all_and_stop_when_closed(loop: EventLoop) -> None:
    master = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    master.bind(("127.0.0.1", 0))
    pool = SocketPool("udp", master)
    got: list[Packet] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        got.append(packet)
        if len(got) == 50:
            pool.close()  # from inside a batch: nothing more is read

    pool.attach_eventloop(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        for n in range(10):
            cli.sendto(b"\r\n\r\n", master.getsockname())  # keep-alives in between
            cli.sendto(options(n), master.getsockname())
        for _ in range(3):
            loop.loop(0)
        assert [p.callid() for p in got] == [f"{n}@127.0.0.1" for n in range(10)]
        for n in range(10, 100):
            cli.sendto(options(n), master.getsockname())
        for _ in range(10):
            loop.loop(0)
    assert len(got) == 50
    assert pool.closed


# ---------------------------------------- UDP responses held until the batch ends


def _udp_pool(loop: EventLoop, on_packet: Callable[[Packet, Addr], None]) -> SocketPool:
    pool = SocketPool("udp", udp_socket())
    pool.attach_eventloop(loop, on_packet)
    return pool


def test_udp_responses_of_a_batch_go_out_after_it_in_order(loop: EventLoop) -> None:
    sent_during: list[int] = []
    pool: SocketPool

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        pool.sendto(packet.create_response(200), from_)
        # held: nothing has reached the client while the batch is delivered
        sent_during.append(len(datagrams(cli)))

    pool = _udp_pool(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.bind(("127.0.0.1", 0))
        for n in range(10):
            cli.sendto(options(n), pool.master().getsockname())
        for _ in range(3):
            loop.loop(0)
        got = datagrams(cli)
        assert sent_during == [0] * 10
        assert [Packet.new_from_string(d).callid() for d in got] == [
            f"{n}@127.0.0.1" for n in range(10)
        ]
        # outside a batch a datagram goes out at once
        pool.sendto(Packet.new_from_string(options(99)), addr_of(cli))
        assert len(datagrams(cli)) == 1
    pool.close()


def test_udp_held_responses_survive_a_raising_callback_and_close(loop: EventLoop) -> None:
    skip_unless_native(loop, "a callback's exception goes to asyncio's handler, not out of loop()")
    calls: list[int] = []
    pool: SocketPool

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        calls.append(1)
        pool.sendto(packet.create_response(200), from_)
        if len(calls) == 2:
            raise RuntimeError("application bug")
        if len(calls) == 4:
            pool.close()  # what it sent before goes out before the socket closes

    pool = _udp_pool(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.bind(("127.0.0.1", 0))
        for n in range(6):
            cli.sendto(options(n), pool.master().getsockname())
        with pytest.raises(RuntimeError, match="application bug"):
            loop.loop(0)
        assert len(datagrams(cli)) == 2  # the two responses before the raise
        for _ in range(3):
            loop.loop(0)
        assert len(calls) == 4
        assert len(datagrams(cli)) == 2  # the next two, then the pool closed
    assert pool.closed


def test_udp_held_send_failure_reaches_its_callback(loop: EventLoop) -> None:
    errors: list[int] = []
    pool: SocketPool

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        # port 0 cannot be sent to: the error comes after the batch
        pool.sendto(packet.create_response(200), Addr.parse("127.0.0.1:0"), errors.append)
        assert errors == []

    pool = _udp_pool(loop, on_packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
        cli.sendto(options(1), pool.master().getsockname())
        for _ in range(3):
            loop.loop(0)
    assert len(errors) == 1
    assert errors[0] != 0
    pool.close()


# ------------------------------------------------------------- stream writes


def test_stream_responses_to_a_burst_are_written_and_confirmed(loop: EventLoop) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pool = SocketPool("tcp", listener)
    written: list[int] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        pool.sendto(packet.create_response(200), from_, written.append)

    pool.attach_eventloop(loop, on_packet)
    with socket.create_connection(listener.getsockname()) as cli:
        cli.sendall(b"".join(options(n) for n in range(20)))  # one burst
        buf = b""
        for _ in range(200):
            loop.loop(0.01)
            cli.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                buf += cli.recv(65536)
            if buf.count(b"SIP/2.0 200 ") == 20:
                break
    assert buf.count(b"SIP/2.0 200 ") == 20
    assert written == [0] * 20
    pool.close()


def test_coalescing_does_not_make_the_write_limit_bite(loop: EventLoop) -> None:
    """A burst whose responses exceed MAX_WBUF together, each fits: all are written."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pool = SocketPool("tcp", listener, settings={"MAX_WBUF": 600})
    results: list[int] = []

    def on_packet(packet: Packet, from_: Addr) -> None:
        assert isinstance(packet, Request)
        pool.sendto(packet.create_response(200), from_, results.append)

    pool.attach_eventloop(loop, on_packet)
    with socket.create_connection(listener.getsockname()) as cli:
        cli.sendall(b"".join(options(n) for n in range(5)))  # 5 x ~400 bytes of responses
        for _ in range(50):
            loop.loop(0.01)
            if len(results) == 5:
                break
    assert results == [0] * 5
    assert errno.ENOBUFS not in results
    pool.close()
