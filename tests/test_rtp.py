"""netsip.rtp over real loopback UDP sockets, the loop driven by a FakeClock."""

from __future__ import annotations

import itertools
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import netsip.rtp as rtp_mod
from netsip._log import FILTER
from netsip._rtcp import parse_rtcp
from netsip.eventloop import EventLoop
from netsip.rtp import (
    DTMFRequest,
    MediaArgs,
    MediaSession,
    build_rtp,
    check_media_input,
    create_rtp_sockets,
    media_recv_echo,
    media_send_recv,
    parse_rtp,
)
from netsip.testing import FakeClock, advance, datagrams, open_fds, udp_socket


class _Call:
    def __init__(self) -> None:
        self.byes = 0

    def bye(self) -> None:
        self.byes += 1


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    FILTER.reset()
    caplog.set_level(logging.INFO, "netsip.rtp")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    lp = EventLoop(clock=clock)
    yield lp
    lp.close()


def _addr(s: socket.socket) -> tuple[str, int]:
    a = s.getsockname()
    return (a[0], a[1])


def _close(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    for a, b in pairs:
        a.close()
        b.close()


def test_create_rtp_sockets_pairs_even_odd() -> None:
    port, pairs = create_rtp_sockets("127.0.0.1", 3)
    try:
        assert port % 2 == 0
        ports = [p for pair in pairs for p in (_addr(pair[0])[1], _addr(pair[1])[1])]
        assert ports == list(range(port, port + 6))
    finally:
        _close(pairs)


def test_build_parse_roundtrip_and_header_features() -> None:
    pkt = build_rtp(8, 65535, 0xFFFFFFFF, 1234, b"abc", marker=True)
    h = parse_rtp(pkt)
    assert h is not None
    assert (h.payload_type, h.marker, h.seq, h.timestamp, h.ssrc, h.payload) == (
        8,
        True,
        65535,
        0xFFFFFFFF,
        1234,
        b"abc",
    )
    # 2 CSRCs, an extension of 1 word, 2 octets padding
    b0 = 0x80 | 0x20 | 0x10 | 2
    raw = struct.pack("!BBHII", b0, 0, 1, 2, 3) + b"C" * 8 + struct.pack("!HH", 0xBEDE, 1) + b"XXXX"
    raw += b"pay" + b"\x00\x02"
    h = parse_rtp(raw)
    assert h is not None and h.payload == b"pay"
    assert parse_rtp(b"\x80" * 11) is None
    assert parse_rtp(b"\x40" + b"\x00" * 20) is None  # version 1
    assert parse_rtp(struct.pack("!BBHII", 0x80 | 0x10, 0, 1, 2, 3)) is None  # truncated ext


def _session_pair(
    loop: EventLoop,
) -> tuple[list[tuple[socket.socket, socket.socket]], socket.socket, MediaArgs]:
    _, pairs = create_rtp_sockets("127.0.0.1")
    peer = udp_socket()
    rtcp = udp_socket()
    args = MediaArgs(
        loop=loop,
        lsocks=[pairs[0]],
        raddr=[(_addr(peer), _addr(rtcp))],
    )
    rtcp.close()
    return pairs, peer, args


def test_recv_echo_echoes_and_writes_output(loop: EventLoop, clock: FakeClock) -> None:
    pairs, peer, args = _session_pair(loop)
    got: list[tuple[bytes, int, int, int]] = []
    sess = media_recv_echo(lambda p, s, t, c: got.append((p, s, t, c)), delay=1)(_Call(), args)
    try:
        dst = _addr(pairs[0][0])
        for i in range(3):
            peer.sendto(build_rtp(0, 100 + i, 160 * i, 99, bytes([i]) * 160), dst)
        advance(loop, clock, 0.25)
        assert [g[1] for g in got] == [100, 101, 102]
        back = [parse_rtp(d) for d in datagrams(peer)]
        assert [h.payload[:1] for h in back if h] == [b"\x00", b"\x01"]  # one packet delay
        seqs = [h.seq for h in back if h]
        assert seqs[1] == (seqs[0] + 1) & 0xFFFF
        assert sess.stats()[0].recv_packets == 3 and sess.stats()[0].sent_packets == 2
    finally:
        sess.close()
        sess.close()
        _close(pairs)
        peer.close()


def test_recv_echo_bad_input_and_latching(
    loop: EventLoop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pairs, peer, args = _session_pair(loop)
    other = udp_socket()
    got: list[int] = []
    sess = media_recv_echo(lambda p, s, t, c: got.append(s), delay=-1)(_Call(), args)
    try:
        dst = _addr(pairs[0][0])
        peer.sendto(b"short", dst)
        peer.sendto(b"\x40" * 40, dst)
        peer.sendto(build_rtp(0, 65534, 0, 1, b"a"), dst)
        peer.sendto(build_rtp(0, 65535, 0, 1, b"a"), dst)
        peer.sendto(build_rtp(0, 2, 0, 1, b"a"), dst)  # wrap, 2 lost
        advance(loop, clock, 0.1)
        other.sendto(build_rtp(0, 3, 0, 1, b"a"), dst)
        other.sendto(build_rtp(0, 4, 0, 1, b"a"), dst)
        advance(loop, clock, 0.1)
        peer.sendto(build_rtp(0, 3, 0, 1, b"a"), dst)
        advance(loop, clock, 0.1)
        assert got == [65534, 65535, 2, 3]
        st = sess.stats()[0]
        assert st.lost == 2 and st.dropped == 4
        assert sum("ignoring packets from" in r.getMessage() for r in caplog.records) == 1
    finally:
        sess.close()
        _close(pairs)
        peer.close()
        other.close()


def test_send_recv_file_paced_repeat_and_done(
    loop: EventLoop, clock: FakeClock, tmp_path: Path
) -> None:
    src = tmp_path / "in.ulaw"
    src.write_bytes(bytes(range(160)) * 3)
    out = tmp_path / "out.raw"
    pairs, peer, args = _session_pair(loop)
    call = _Call()
    sess = media_send_recv(str(src), repeat=2, output=str(out))(call, args)
    try:
        advance(loop, clock, 0.05)
        first = datagrams(peer)
        assert 2 <= len(first) <= 4  # paced, 20 ms each
        advance(loop, clock, 0.5)
        pkts = [parse_rtp(d) for d in first + datagrams(peer)]
        hs = [h for h in pkts if h is not None]
        assert len(hs) == 6 and call.byes == 1
        assert all(
            (b.seq - a.seq) & 0xFFFF == 1 and (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
            for a, b in itertools.pairwise(hs)
        )
        peer.sendto(build_rtp(0, 1, 0, 5, b"xyz"), _addr(pairs[0][0]))
        advance(loop, clock, 0.1)
    finally:
        sess.close()
        _close(pairs)
        peer.close()
    assert out.read_bytes() == b"xyz"


def test_send_recv_stall_catches_up_without_burst(loop: EventLoop, clock: FakeClock) -> None:
    pairs, peer, args = _session_pair(loop)
    done: list[bool] = []
    args.cb_rtp_done = lambda: done.append(True)
    sess = media_send_recv(lambda seq, ch: b"\xff" * 160)(_Call(), args)
    try:
        loop.loop(0)
        datagrams(peer)
        clock.advance(2.0)  # a stall of 100 frames
        loop.loop(0)
        assert 1 <= len(datagrams(peer)) <= 3
        assert not done
    finally:
        sess.close()
        _close(pairs)
        peer.close()


def test_check_media_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        check_media_input(str(tmp_path / "nope"))
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        media_send_recv(str(tmp_path / "empty"))


def test_no_leak_200_sessions(loop: EventLoop) -> None:
    fds, timers = open_fds(), loop.timer_count()
    for _ in range(200):
        _, pairs = create_rtp_sockets("127.0.0.1")
        args = MediaArgs(loop=loop, lsocks=[pairs[0]], raddr=[(("127.0.0.1", 9), None)])
        sess: MediaSession = media_send_recv(lambda s, c: b"\x00" * 160)(_Call(), args)
        sess.close()
        _close(pairs)
    assert open_fds() == fds and loop.timer_count() == timers and loop.fd_count() == 0


def test_rtcp_receiver_report_bye_and_garbage(
    loop: EventLoop, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    _, pairs = create_rtp_sockets("127.0.0.1")
    peer, peer_rtcp = udp_socket(), udp_socket()
    args = MediaArgs(loop=loop, lsocks=[pairs[0]], raddr=[(_addr(peer), _addr(peer_rtcp))])
    sess = media_recv_echo(delay=-1)(_Call(), args)
    try:
        for seq in (10, 11, 14):  # 12, 13 lost
            peer.sendto(build_rtp(0, seq, seq * 160, 77, b"x" * 160), _addr(pairs[0][0]))
        peer_rtcp.sendto(b"\xff garbage", _addr(pairs[0][1]))
        peer_rtcp.sendto(b"\x80\xc9\x00\x09", _addr(pairs[0][1]))  # length beyond the data
        advance(loop, clock, 5.5)
        rr = datagrams(peer_rtcp)
        assert len(rr) == 1
        assert parse_rtcp(rr[0]) == [(201, sess.streams[0].ssrc)]
        ssrc, lost_word, highest, _jitter = struct.unpack_from("!IIII", rr[0], 8)
        assert ssrc == 77 and highest == 14
        assert lost_word & 0xFFFFFF == 2 and lost_word >> 24 == (2 << 8) // 5
        assert sum("rtcp: dropped invalid" in r.getMessage() for r in caplog.records) == 2
        sess.close()
        bye = datagrams(peer_rtcp)
        assert len(bye) == 1 and (203, sess.streams[0].ssrc) in (parse_rtcp(bye[0]) or [])
    finally:
        sess.close()
        _close(pairs)
        peer.close()
        peer_rtcp.close()


def test_rtcp_bye_only_from_a_stream_that_sent(loop: EventLoop) -> None:
    # RFC 3550 6.3.7: no BYE from a participant that never sent RTP or RTCP
    # (a call ended before its media began); one after an echoed packet
    for send_first in (False, True):
        _, pairs = create_rtp_sockets("127.0.0.1")
        peer, peer_rtcp = udp_socket(), udp_socket()
        args = MediaArgs(loop=loop, lsocks=[pairs[0]], raddr=[(_addr(peer), _addr(peer_rtcp))])
        sess = media_recv_echo()(_Call(), args)
        try:
            if send_first:
                peer.sendto(build_rtp(0, 1, 160, 77, b"x" * 160), _addr(pairs[0][0]))
                loop.loop(0)
                assert len(datagrams(peer)) == 1  # the echo
            sess.close()
            bye = datagrams(peer_rtcp)
            if send_first:
                assert len(bye) == 1 and (203, sess.streams[0].ssrc) in (parse_rtcp(bye[0]) or [])
            else:
                assert bye == []
        finally:
            sess.close()
            _close(pairs)
            peer.close()
            peer_rtcp.close()


def _wav(tag: int, body: bytes, rate: int = 8000, bits: int = 8) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate, 1, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(body))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(body))
        + body
    )


def test_wav_input_passthrough_and_wav_output(
    loop: EventLoop, clock: FakeClock, tmp_path: Path
) -> None:
    src = tmp_path / "in.wav"
    src.write_bytes(_wav(7, b"\x11" * 320))
    out = tmp_path / "out.wav"
    pairs, peer, args = _session_pair(loop)
    sess = media_send_recv(str(src), output=str(out))(_Call(), args)
    try:
        advance(loop, clock, 0.2)
        hs = [parse_rtp(d) for d in datagrams(peer)]
        assert [h.payload for h in hs if h] == [b"\x11" * 160] * 2
        peer.sendto(build_rtp(0, 1, 0, 5, b"\x22" * 160), _addr(pairs[0][0]))
        advance(loop, clock, 0.1)
    finally:
        sess.close()
        _close(pairs)
        peer.close()
    assert out.read_bytes() == _wav(7, b"\x22" * 160)


def test_bad_wav_rejected(tmp_path: Path) -> None:
    stereo = tmp_path / "s.wav"
    stereo.write_bytes(_wav(7, b"\x00" * 10, rate=16000))
    with pytest.raises(ValueError, match="8 kHz mono"):
        check_media_input(str(stereo))
    odd = tmp_path / "o.wav"
    odd.write_bytes(_wav(85, b"\x00" * 10))
    with pytest.raises(ValueError, match="unsupported WAV format"):
        media_send_recv(str(odd))
    junk = tmp_path / "j.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00XXXX")
    with pytest.raises(ValueError, match="not WAVE"):
        check_media_input(str(junk))


def test_pcm_wav_is_accepted_and_encoded(tmp_path: Path) -> None:
    pcm = tmp_path / "p.wav"
    pcm.write_bytes(_wav(1, b"\x00\x00" * 10, bits=16))
    check_media_input(str(pcm))  # (PCM16 is encoded with netsip._g711)


def test_pcm_wav_without_encoder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rtp_mod, "_PCM_ENCODER", None)
    pcm = tmp_path / "p.wav"
    pcm.write_bytes(_wav(1, b"\x00\x00" * 10, bits=16))
    with pytest.raises(ValueError, match=r"G\.711 encoder"):
        check_media_input(str(pcm))


def test_dtmf_slots_replace_audio_and_extraction_once(
    loop: EventLoop, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:

    def gen(event: str, duration: int, **kw: int | None) -> Callable[[int, int, int], list[bytes]]:
        left = [2]

        def g(seq: int, ts: int, ssrc: int) -> list[bytes]:
            if not left[0]:
                return []
            left[0] -= 1
            return [build_rtp(kw["rfc2833_type"] or 0, seq, ts, ssrc, event.encode())]

        return g

    def xtr(**kw: int | None) -> Callable[[bytes, float | None], tuple[str, int, str] | None]:
        def x(pkt: bytes, t: float | None) -> tuple[str, int, str] | None:
            h = parse_rtp(pkt)
            return (h.payload.decode(), 100, "rfc2833") if h and h.payload_type == 101 else None

        return x

    monkeypatch.setattr(rtp_mod, "_DTMF_GENERATOR", gen)
    monkeypatch.setattr(rtp_mod, "_DTMF_EXTRACTOR", xtr)
    pairs, peer, args = _session_pair(loop)
    args.dtmf_xtract = [(101, None)]
    digits: list[tuple[str, int]] = []
    args.cb_dtmf = lambda e, d: digits.append((e, d))
    done: list[bool] = []
    args.dtmf_events.append(DTMFRequest("12", callback=lambda: done.append(True)))
    audio: list[bytes] = []
    sess = media_send_recv(lambda s, c: b"\xaa" * 160, output=lambda p, s, t, c: audio.append(p))(
        _Call(), args
    )
    try:
        advance(loop, clock, 0.2)
        hs = [h for h in (parse_rtp(d) for d in datagrams(peer)) if h]
        assert [h.payload for h in hs[:4]] == [b"1", b"1", b"2", b"2"]
        assert all(h.payload_type == 101 for h in hs[:4]) and hs[4].payload == b"\xaa" * 160
        assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(hs))
        assert done == [True]
        peer.sendto(build_rtp(101, 1, 0, 5, b"9"), _addr(pairs[0][0]))
        peer.sendto(build_rtp(0, 2, 160, 5, b"\x01"), _addr(pairs[0][0]))
        advance(loop, clock, 0.1)
        assert digits == [("9", 100)] and audio == [b"\x01"]
    finally:
        sess.close()
        _close(pairs)
        peer.close()
