"""RTP media for the simple user agent: echo and send/receive (``Net::SIP::Simple::RTP``).

``media_recv_echo(output, delay)`` and ``media_send_recv(input, repeat, output)``
return ``init_media`` callbacks: ``Call`` calls them with itself and a
:class:`MediaArgs` once the SDP offer/answer is done, and owns the returned
:class:`MediaSession` (``close()`` on hang-up). ``create_rtp_sockets`` is the
port of the function of the same name in ``Net::SIP::Util``.

RTP (RFC 3550 5.1): version 2, random SSRC, sequence number and timestamp;
the timestamp advances by the samples per packet (160 for 20 ms at 8 kHz).
On receive the padding, CSRC list and header extension are skipped.

Differences from Net::SIP:
- Sending is paced by one repeating EventLoop timer per session (every packet
  interval); after a stall the frames that are due are sent, but at most a
  few per tick (catch up without bursting), no threads.
- Symmetric RTP (RFC 4961): we send from the socket we receive on. Until the
  first valid packet arrives we send to the SDP address; the source of the
  first valid packet is latched (peer behind NAT), packets from any other
  source are then dropped (logged once per session).
- Bad packets (short, wrong version, unexpected source) are dropped with a
  rate limited log line; nothing raises out of the loop.
- Per stream counters (packets/bytes sent and received, lost by sequence gaps).
- RTCP (Net::SIP has none): receiver reports every 5 s and BYE on close
  (from a stream that sent RTP or RTCP: RFC 3550 6.3.7), see
  :mod:`netsip._rtcp`; incoming RTCP is parsed tolerantly and logged, read
  when the next report goes out (one fd less to watch per call).
- WAV input (mu-law, A-law, PCM16 8 kHz mono encoded with
  :mod:`netsip._g711`) and WAV output, see :mod:`netsip._wav`.
- DTMF is sent and extracted with :mod:`netsip.dtmf` (the hooks
  ``_DTMF_GENERATOR``/``_DTMF_EXTRACTOR`` let tests put fakes in). A DTMF
  slot replaces the audio frame of the first stream (RFC 4733 on the
  negotiated telephone-event type, else in-band): paced by the send timer
  in ``media_send_recv``, and by the received packets in an echoing
  ``media_recv_echo`` (as Perl); a receive-only session sends none.
"""

from __future__ import annotations

import collections
import errno
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from netsip._g711 import alaw_encode, ulaw_encode
from netsip._log import get_logger
from netsip._rtcp import ReceptionStats, build_bye, build_rr, parse_rtcp
from netsip._wav import Encoder, WavWriter, read_media
from netsip.dtmf import dtmf_extractor, dtmf_generator
from netsip.eventloop import EV_READ, EventLoop, TimerLike

__all__ = [
    "DTMFRequest",
    "InitMedia",
    "MediaArgs",
    "MediaCall",
    "MediaSession",
    "RTPHeader",
    "StreamStats",
    "build_rtp",
    "check_media_input",
    "create_rtp_sockets",
    "media_recv_echo",
    "media_send_recv",
    "parse_rtp",
]

log = get_logger(__name__)


def _pcm_encode(pt: int, pcm: bytes) -> bytes:
    """PCM16 WAV input to the payload type's G.711 law (8 PCMA, else PCMU)."""
    return alaw_encode(pcm) if pt == 8 else ulaw_encode(pcm)


#: the PCM16 -> G.711 encoder for WAV input
_PCM_ENCODER: Encoder | None = _pcm_encode

#: (event, duration_ms, *, rfc2833_type, audio_type) -> gen(seq, ts, ssrc) -> packets;
#: netsip.dtmf.dtmf_generator once merged
DTMFGenerator = Callable[..., Callable[[int, int, int], list[bytes]]]
#: (*, rfc2833_type, audio_type) -> x(packet, time) -> (event, ms, method) | None
DTMFExtractor = Callable[..., Callable[[bytes, "float | None"], "tuple[str, int, str] | None"]]
_DTMF_GENERATOR: DTMFGenerator | None = dtmf_generator
_DTMF_EXTRACTOR: DTMFExtractor | None = dtmf_extractor

#: ports tried by create_rtp_sockets (Net::SIP uses any free even port)
DEFAULT_PORT_RANGE = (20000, 40000)
#: RTCP report interval (RFC 3550 6.2: 5 s minimum)
RTCP_INTERVAL = 5.0
#: at most this many frames are sent in one timer tick when catching up
MAX_CATCHUP = 3

Pair = tuple[socket.socket, socket.socket]
Addr = tuple[str, int]
#: output: a file name or callable(payload, seq, timestamp, channel)
Output = str | Callable[[bytes, int, int, int], None] | None
#: input: a file name or callable(seq, channel) -> payload or None when done
Input = str | Callable[[int, int], "bytes | None"]


def create_rtp_sockets(
    laddr: str,
    count: int = 1,
    *,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
    tries: int = 100,
) -> tuple[int, list[Pair]]:
    """``count`` consecutive (RTP even, RTCP = RTP+1) UDP socket pairs on ``laddr``.

    Returns the first RTP port and the pairs; raises OSError when no free
    range was found in ``tries`` attempts.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    fam = socket.AF_INET6 if ":" in laddr else socket.AF_INET
    # (Linux: non-blocking from the start, no fcntl per socket)
    kind = socket.SOCK_DGRAM | getattr(socket, "SOCK_NONBLOCK", 0)
    lo, hi = port_range
    for _ in range(tries):
        base = random.randrange(lo, hi - 2 * count) & ~1
        socks: list[socket.socket] = []
        try:
            for i in range(2 * count):
                s = socket.socket(fam, kind)
                socks.append(s)
                s.bind((laddr, base + i))
                if kind == socket.SOCK_DGRAM:
                    s.setblocking(False)
        except OSError as e:
            for s in socks:
                s.close()
            if e.errno != errno.EADDRINUSE:
                raise
            continue
        return base, [(socks[2 * i], socks[2 * i + 1]) for i in range(count)]
    raise OSError(errno.EADDRINUSE, f"no free RTP port range on {laddr}")


@dataclass(slots=True)
class DTMFRequest:
    """DTMF events to send (``Call.dtmf``), consumed by the sender."""

    events: str
    duration: int = 100
    methods: frozenset[str] = frozenset({"rfc2833", "audio"})
    callback: Callable[[], None] | None = None


@dataclass(slots=True)
class MediaArgs:
    """What ``Call`` hands to ``init_media`` (Perl's ``$args``)."""

    loop: EventLoop
    lsocks: list[Pair | None]
    raddr: list[tuple[Addr, Addr | None] | None]
    rtp_param: tuple[int, int, float] = (0, 160, 0.02)
    ssocks: list[Pair | None] | None = None
    dtmf_events: collections.deque[DTMFRequest] = field(default_factory=collections.deque)
    dtmf_xtract: list[tuple[int | None, int | None] | None] = field(default_factory=list)
    cb_dtmf: Callable[[str, int], None] | None = None
    cb_rtp_done: Callable[[], None] | None = None


class MediaCall(Protocol):
    """The part of ``Call`` the media callbacks use."""

    def bye(self) -> None:
        """End the call (the media is done)."""
        ...


@dataclass(slots=True)
class RTPHeader:
    """The fields of an RTP header (RFC 3550 5.1) and where the payload is."""

    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def build_rtp(
    pt: int, seq: int, timestamp: int, ssrc: int, payload: bytes, *, marker: bool = False
) -> bytes:
    """An RTP packet, version 2, no CSRC/extension/padding (RFC 3550 5.1)."""
    return (
        struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | (pt & 0x7F),
            seq & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc & 0xFFFFFFFF,
        )
        + payload
    )


def parse_rtp(data: bytes) -> RTPHeader | None:
    """Parse an RTP packet; None if it is not valid RTP version 2 (RFC 3550 5.1, A.1)."""
    if len(data) < 12:
        return None
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    if b0 >> 6 != 2:
        return None
    end = len(data)
    if b0 & 0x20:  # padding: the last octet counts the padding octets
        pad = data[-1]
        end -= pad
    off = 12 + 4 * (b0 & 0x0F)  # CSRC list
    if b0 & 0x10:  # header extension (RFC 3550 5.3.1)
        if off + 4 > end:
            return None
        (words,) = struct.unpack_from("!H", data, off + 2)
        off += 4 + 4 * words
    if off > end or end > len(data):
        return None
    return RTPHeader(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, data[off:end])


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream (m-line)."""

    sent_packets: int = 0
    sent_bytes: int = 0
    recv_packets: int = 0
    recv_bytes: int = 0
    lost: int = 0
    dropped: int = 0


class _Stream:
    __slots__ = (
        "channel",
        "dtmf_x",
        "echo_buf",
        "last_seq",
        "latched",
        "raddr",
        "rtcp",
        "rtcp_raddr",
        "rtcp_sent",
        "rtp",
        "rx",
        "send_sock",
        "seq",
        "ssrc",
        "stats",
        "timestamp",
        "warned",
    )

    def __init__(
        self, channel: int, rtp: socket.socket, send_sock: socket.socket, raddr: Addr | None
    ) -> None:
        self.channel = channel
        self.rtp = rtp
        self.send_sock = send_sock
        self.raddr = raddr
        self.latched = False
        self.warned = False
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.last_seq: int | None = None
        self.stats = StreamStats()
        self.echo_buf: collections.deque[bytes] = collections.deque()
        self.rtcp: socket.socket | None = None
        self.rtcp_raddr: Addr | None = None
        self.rtcp_sent = False
        self.rx = ReceptionStats()
        self.dtmf_x: Callable[[bytes, float | None], tuple[str, int, str] | None] | None = None

    def send_rtcp(self, data: bytes) -> None:
        if self.rtcp is None or self.rtcp_raddr is None:
            return
        try:
            self.rtcp.sendto(data, self.rtcp_raddr)
        except OSError as e:
            log.info("rtcp: send to %s failed: %s", self.rtcp_raddr, e)
            return
        self.rtcp_sent = True

    def send(self, pt: int, payload: bytes, samples: int) -> None:
        if self.raddr is None:
            return
        pkt = build_rtp(pt, self.seq, self.timestamp, self.ssrc, payload)
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        try:
            self.send_sock.sendto(pkt, self.raddr)
        except OSError as e:
            log.info("rtp: send to %s failed: %s", self.raddr, e)
            return
        self.stats.sent_packets += 1
        self.stats.sent_bytes += len(pkt)


class MediaSession:
    """The running media of one call; ``close()`` releases everything."""

    def __init__(
        self,
        call: MediaCall,
        args: MediaArgs,
        *,
        echo_delay: int | None = None,
        output: Output = None,
        input: Input | None = None,
        repeat: int = 1,
    ) -> None:
        self.loop = args.loop
        self.args = args
        self.call = call
        self.pt, self.samples, self.interval = args.rtp_param
        self.streams: list[_Stream] = []
        self.closed = False
        self._echo_delay = echo_delay
        self._out_file: IO[bytes] | WavWriter | None = None
        self._out_cb: Callable[[bytes, int, int, int], None] | None = None
        if isinstance(output, str) and output.lower().endswith(".wav"):
            self._out_file = WavWriter(output, self.pt)
        elif isinstance(output, str):
            self._out_file = open(output, "wb")  # noqa: SIM115 - closed in close()
        elif output is not None:
            self._out_cb = output
        self._input = input
        self._repeat = repeat
        self._in_data = b""
        self._in_pos = 0
        if isinstance(input, str):
            check_media_input(input)
            with open(input, "rb") as f:
                self._in_data = read_media(f.read(), input, self.pt, _PCM_ENCODER)
        self._timer: TimerLike | None = None
        self._dtmf_gen: Callable[[int, int, int], list[bytes]] | None = None
        self._dtmf_req: DTMFRequest | None = None
        self._dtmf_left = ""
        self._next_send = self.loop.looptime
        ssocks = args.ssocks if args.ssocks is not None else args.lsocks
        self._fds: list[socket.socket] = []
        self._rtcp_in: list[socket.socket] = []
        for i, pair in enumerate(args.lsocks):
            if pair is None:
                continue
            spair = ssocks[i] if i < len(ssocks) else None
            ra = args.raddr[i] if i < len(args.raddr) else None
            st = _Stream(i, pair[0], (spair or pair)[0], ra[0] if ra else None)
            xt = args.dtmf_xtract[i] if i < len(args.dtmf_xtract) else None
            if xt is not None and _DTMF_EXTRACTOR is not None and args.cb_dtmf is not None:
                st.dtmf_x = _DTMF_EXTRACTOR(rfc2833_type=xt[0], audio_type=xt[1])
            st.rtcp = (spair or pair)[1]
            st.rtcp_raddr = ra[1] if ra else None
            self.streams.append(st)
            # (the RTCP socket is read when the reports go out, see _report:
            # no fd to watch per call for what is only logged)
            self.loop.add_fd(pair[0], EV_READ, self._reader(st), f"rtp{i}")
            self._fds.append(pair[0])
            self._rtcp_in.append(pair[1])
        self._rtcp_timer: TimerLike | None = self.loop.add_timer(
            RTCP_INTERVAL, self._report, RTCP_INTERVAL, "rtcp-rr"
        )
        if input is not None:
            self._timer = self.loop.add_timer(0, self._tick, self.interval, "rtp-send")

    # -- statistics
    def stats(self) -> list[StreamStats]:
        """Counters per stream (m-lines that were not rejected)."""
        return [s.stats for s in self.streams]

    # -- receiving
    def _reader(self, st: _Stream) -> Callable[[object], None]:
        return lambda _fd: self._receive(st)

    def _receive_rtcp(self, sock: socket.socket) -> None:
        for _ in range(64):  # (bounded; the peer reports every few seconds)
            try:
                data, src = sock.recvfrom(65536)
            except OSError:
                return
            parsed = parse_rtcp(data)
            if parsed is None:
                log.info("rtcp: dropped invalid packet (%d bytes) from %s", len(data), src[:2])
            else:
                log.debug("rtcp from %s: %s", src[:2], parsed)

    def _report(self, _timer: object = None) -> None:
        """Read what came in on the RTCP sockets, then a receiver report on
        each stream (RFC 3550 6.4.2)."""
        for sock in self._rtcp_in:
            self._receive_rtcp(sock)
        for st in self.streams:
            st.send_rtcp(build_rr(st.ssrc, st.rx if st.rx.base_seq is not None else None))

    def _receive(self, st: _Stream) -> None:
        for _ in range(64):  # bounded: the loop is level triggered
            try:
                data, src = st.rtp.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.info("rtp: receive failed: %s", e)
                return
            self._packet(st, data, (src[0], src[1]))

    def _packet(self, st: _Stream, data: bytes, src: Addr) -> None:
        hdr = parse_rtp(data)
        if hdr is None:
            st.stats.dropped += 1
            log.info("rtp: dropped invalid packet (%d bytes) from %s", len(data), src)
            return
        # symmetric RTP (RFC 4961): latch to the first valid source
        if not st.latched:
            st.latched = True
            if st.raddr is not None:
                st.raddr = src
        elif st.raddr is not None and src != st.raddr:
            st.stats.dropped += 1
            if not st.warned:
                st.warned = True
                log.warning("rtp: ignoring packets from %s, latched to %s", src, st.raddr)
            return
        if st.last_seq is not None:
            gap = (hdr.seq - st.last_seq) & 0xFFFF
            if 1 < gap < 3000:  # RFC 3550 A.1 MAX_DROPOUT
                st.stats.lost += gap - 1
            elif gap == 0 or gap >= 0x10000 - 100:
                st.stats.dropped += 1  # duplicate or late
                return
        st.last_seq = hdr.seq
        st.rx.update(hdr.seq, hdr.timestamp, hdr.ssrc, self.loop.looptime)
        st.stats.recv_packets += 1
        st.stats.recv_bytes += len(data)
        if st.dtmf_x is not None and self.args.cb_dtmf is not None:
            found = st.dtmf_x(data, self.loop.looptime)
            if found is not None:
                self.args.cb_dtmf(found[0], found[1])
            xt = self.args.dtmf_xtract[st.channel]
            if xt is not None and hdr.payload_type == xt[0]:
                return  # telephone-event, not audio
        self._write(hdr.payload, hdr.seq, hdr.timestamp, st.channel)
        if self._echo_delay is not None and self._echo_delay >= 0:
            # queued DTMF replaces the echo while it plays, paced by the
            # packets that arrive (as Perl's media_recv_echo)
            if (
                (self.args.dtmf_events or self._dtmf_req is not None)
                and st is self.streams[0]
                and self._send_dtmf()
            ):
                return
            st.echo_buf.append(hdr.payload)
            while len(st.echo_buf) > self._echo_delay:
                st.send(hdr.payload_type, st.echo_buf.popleft(), self.samples)

    def _write(self, payload: bytes, seq: int, ts: int, channel: int) -> None:
        if self._out_file is not None:
            self._out_file.write(payload)
        elif self._out_cb is not None:
            self._out_cb(payload, seq, ts, channel)

    # -- sending
    def _frame(self, st: _Stream) -> bytes | None:
        if callable(self._input):
            return self._input(st.seq, st.channel)
        size = self.samples
        if self._in_pos >= len(self._in_data):
            self._repeat -= 1
            if self._repeat <= 0 or not self._in_data:
                return None
            self._in_pos = 0
        buf = self._in_data[self._in_pos : self._in_pos + size]
        return buf

    def _tick(self, _timer: object = None) -> None:
        if self.closed:
            return
        now = self.loop.looptime
        self._next_send = max(self._next_send, now - MAX_CATCHUP * self.interval)
        sent = 0
        while self._next_send <= now + 1e-9 and sent < MAX_CATCHUP:
            self._next_send += self.interval
            sent += 1
            if self._send_dtmf():
                continue
            done = False
            for st in self.streams:
                payload = self._frame(st)
                if payload is None:
                    done = True
                    break
                st.send(self.pt, payload, self.samples)
            if not callable(self._input):
                self._in_pos += self.samples
            if done:
                self._finished()
                return

    def _send_dtmf(self) -> bool:
        """Send the next DTMF slot instead of audio (RFC 4733); False if none is queued."""
        st = self.streams[0] if self.streams else None
        if st is None or _DTMF_GENERATOR is None:
            return False
        while True:
            if self._dtmf_gen is not None:
                pkts = self._dtmf_gen(st.seq, st.timestamp, st.ssrc)
                if pkts:
                    for pkt in pkts:
                        if pkt and st.raddr is not None:
                            try:
                                st.send_sock.sendto(pkt, st.raddr)
                            except OSError as e:
                                log.info("rtp: dtmf send failed: %s", e)
                            st.stats.sent_packets += 1
                            st.stats.sent_bytes += len(pkt)
                            st.seq = (st.seq + 1) & 0xFFFF
                    st.timestamp = (st.timestamp + self.samples) & 0xFFFFFFFF
                    return True
                self._dtmf_gen = None
            if self._dtmf_left and self._dtmf_req is not None:
                ev, self._dtmf_left = self._dtmf_left[0], self._dtmf_left[1:]
                xt = self.args.dtmf_xtract[0] if self.args.dtmf_xtract else None
                rfc = xt[0] if xt and "rfc2833" in self._dtmf_req.methods else None
                audio = self.pt if rfc is None and "audio" in self._dtmf_req.methods else None
                self._dtmf_gen = _DTMF_GENERATOR(
                    ev, self._dtmf_req.duration, rfc2833_type=rfc, audio_type=audio
                )
                continue
            if self._dtmf_req is not None:
                done, self._dtmf_req = self._dtmf_req, None
                if done.callback is not None:
                    done.callback()
            if not self.args.dtmf_events:
                return False
            self._dtmf_req = self.args.dtmf_events.popleft()
            self._dtmf_left = self._dtmf_req.events

    def _finished(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cb = self.args.cb_rtp_done
        if cb is not None:
            cb()
        else:
            self.call.bye()

    def close(self) -> None:
        """Unregister the sockets, cancel the timer, close the output; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
            self._rtcp_timer = None
        for st in self.streams:
            # RFC 3550 6.3.7: a participant that never sent an RTP or RTCP
            # packet must not send a BYE (a call ended before its media began)
            if st.stats.sent_packets or st.rtcp_sent:
                st.send_rtcp(build_bye(st.ssrc))  # RFC 3550 6.6
        for s in self._fds:
            self.loop.del_fd(s)
        self._fds = []
        self._rtcp_in = []
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None


InitMedia = Callable[[MediaCall, MediaArgs], MediaSession]


def check_media_input(input: Input) -> None:
    """Raise ValueError if ``input`` is a file name that cannot be sent."""
    if callable(input):
        return
    try:
        with open(input, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise ValueError(f"media input {input!r}: {e.strerror or e}") from e
    if not head:
        raise ValueError(f"media input {input!r} is empty")
    if head.startswith(b"RIFF"):
        with open(input, "rb") as f:
            read_media(f.read(), input, 0, _PCM_ENCODER)


def media_recv_echo(output: Output = None, delay: int = 0) -> InitMedia:
    """Echo received packets after ``delay`` packets (< 0: receive only).

    Received payloads are written to ``output`` (file name or callable).
    """

    def init(call: MediaCall, args: MediaArgs) -> MediaSession:
        return MediaSession(call, args, echo_delay=delay, output=output)

    return init


def media_send_recv(input: Input, repeat: int = 1, output: Output = None) -> InitMedia:
    """Send frames from ``input`` (raw G.711 file or callable) ``repeat`` times.

    Received payloads are written to ``output``; when the input is exhausted
    ``cb_rtp_done`` (default ``call.bye()``) is called.
    """
    if isinstance(input, str):
        check_media_input(input)

    def init(call: MediaCall, args: MediaArgs) -> MediaSession:
        return MediaSession(call, args, echo_delay=-1, output=output, input=input, repeat=repeat)

    return init
