#!/usr/bin/env python3
"""The calling side of the user agent's media benchmark (:mod:`benchmarks.bench_ua`).

It calls an echoing answerer (``netsip answer --echo``, Perl's
``examples/bench/listen.pl``) with more and more calls at once, sends 50
RTP packets/s on each (160 bytes of PCMU every 20 ms) and measures, at the
caller, what comes back: the share of the packets lost and the echo's round
trip. The answerer is the same for each step; the calls of a step stay up
for the next one (only the new ones are set up), so a ramp costs the set-up
of its largest step once.

Signalling is netsip's :class:`~netsip.endpoint.Endpoint` (Leg + Dispatcher
+ Endpoint, INVITE with an SDP offer, the endpoint's ACK, BYE at the end),
paced while the set-up runs and idle while a step is measured. Media is not
netsip's :mod:`netsip.rtp`: one UDP socket of its own carries every call's
RTP (the SDP offers all name it; the answerers send each call's echo there
from the call's own port), paced by a 1 ms timer that sends the packets of
the calls whose 1 ms slot of the 20 ms period is due (the calls are spread
evenly over the slots) with one ``sendmmsg`` per slot, the echoes read by
``recvmmsg`` up to 256 at a time (libc through ``ctypes``; without them, or
with ``--no-mmsg``, a ``sendto``/``recv_into`` per packet, about a tenth
more CPU at 800-1,000 calls). A packet
is a 12-byte RTP header and a 160-byte payload that starts with (call,
measurement window, send time in ns); both answerers echo the payload as it
came, so the round trip is the receive time less the send time, and loss is
counted per window (packets sent in a window whose echo has not arrived
``--grace`` seconds after it). A step that is not held while the caller's
own sends were more than 10 ms late against their slots (other processes
had the cores) is measured again, at most twice. This costs a few microseconds of CPU per
packet, well below the answerers' cost, so the caller is not what limits
the count; it reports its own CPU share, how late its sends were against
their slots, and the drops of its socket (``/proc/net/udp``) to show that.

Why not sipp: sipp can set up the calls and send RTP (``-rtp_echo`` is the
echoing side; pcap play sends a recorded stream from a thread per call), but
it does not measure the echo's loss and round trip per packet, and a thread
per call is not cheap at hundreds of calls.

    python -m benchmarks.ua_caller --target 127.0.0.1:5060 --pid PID \\
        --steps 1,10,20,50,100 [--measure 2] [--max-loss 1] [--max-delay 20]

Prints one JSON object on stdout: the steps (calls, packets sent and
received, loss %, round trip mean/p50/p95/max in ms, added delay against the
1-call step, the answerer's and the caller's CPU %, send lag, socket drops,
failed set-ups) and whether the ramp stopped on a limit.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

# Run from a checkout without installing: the benchmarks package is in the parent.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.load import cpu_seconds
from netsip.dispatcher import Dispatcher
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EV_READ, EventLoop
from netsip.leg import Leg
from netsip.packet import Packet
from netsip.sdp import PCMU, SDPError, offer, sdp_from_body

#: packets per second of a call (20 ms of PCMU each)
PPS: Final = 50
PERIOD_NS: Final = 1_000_000_000 // PPS
SLOTS: Final = 20  # 1 ms slots of the 20 ms period
SLOT_NS: Final = PERIOD_NS // SLOTS
PAYLOAD: Final = 160
#: RTP header (V=2, PT 0, seq, timestamp, SSRC) and the payload's head
#: (call number, window, send time in ns)
PACKET: Final = struct.Struct("!BBHII IiQ")
HEAD: Final = struct.Struct("!IiQ")
RTP_HEADER: Final = 12
#: the most calls being set up at once
SETUP_IN_FLIGHT: Final = 50
#: a step not held while the caller's sends were this late (ms) is measured again,
#: at most RETRIES more times: the caller did not get a core in time
MAX_SEND_LAG_MS: Final = 10.0
RETRIES: Final = 2
#: echoes read per recvmmsg, and the bytes kept of each (the head is enough)
RECV_BATCH: Final = 256
RECV_KEEP: Final = 64
MSG_DONTWAIT: Final = 0x40


# ------------------------------------------- sendmmsg/recvmmsg (Linux, libc)


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_MSG_LEN: Final = struct.Struct("=I")
_MSG_LEN_AT: Final = _MMsgHdr.msg_len.offset
_MMSG_SIZE: Final = ctypes.sizeof(_MMsgHdr)


def _libc() -> ctypes.CDLL | None:
    """libc with ``sendmmsg`` and ``recvmmsg``, or None (then one syscall per packet)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        send, recv = libc.sendmmsg, libc.recvmmsg
    except (OSError, AttributeError):
        return None
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    return libc


class _Batch:
    """Messages for one ``sendmmsg``/``recvmmsg``: ``count`` buffers of ``size`` bytes
    back to back in ``data``, each with its iovec and (to send) its address."""

    def __init__(self, count: int, size: int, dsts: list[tuple[str, int]] | None) -> None:
        self.count = count
        self.data = (ctypes.c_char * (count * size))()
        self.iov = (_IOVec * count)()
        self.msgs = (_MMsgHdr * count)()
        self.names = (ctypes.c_char * (16 * max(len(dsts or ()), 1)))()
        base, iov = ctypes.addressof(self.data), ctypes.addressof(self.iov)
        for i in range(count):
            self.iov[i].iov_base = base + i * size
            self.iov[i].iov_len = size
            hdr = self.msgs[i].msg_hdr
            hdr.msg_iov = iov + i * ctypes.sizeof(_IOVec)
            hdr.msg_iovlen = 1
            if dsts is not None:  # struct sockaddr_in
                ip, port = dsts[i]
                struct.pack_into("=H", self.names, 16 * i, socket.AF_INET)
                struct.pack_into("!H4s", self.names, 16 * i + 2, port, socket.inet_aton(ip))
                hdr.msg_name = ctypes.addressof(self.names) + 16 * i
                hdr.msg_namelen = 16


@dataclass(slots=True)
class _Call:
    number: int
    ctx: Context | None = None
    dst: tuple[str, int] = ("", 0)
    seq: int = 0
    ts: int = 0
    state: str = "new"  # new | inviting | up | failed | bye | ended


@dataclass(slots=True)
class _Window:
    sent: int = 0
    rtts: list[int] = field(default_factory=list)  # ns
    open: bool = True


@dataclass(slots=True)
class Step:
    """One step of the ramp: ``calls`` calls with RTP, measured ``seconds``."""

    calls: int
    seconds: float
    sent: int = 0
    received: int = 0
    loss_pct: float = 0.0
    rtt_ms: dict[str, float] = field(default_factory=dict)  # mean, p50, p95, max
    added_delay_ms: float | None = None  # mean round trip less the 1-call step's
    answerer_cpu_pct: float = 0.0
    answerer_sys_pct: float = 0.0  # of which in the kernel (clock ticks: coarse)
    caller_cpu_pct: float = 0.0
    other_cores: float = 0.0  # CPU the rest of the machine took meanwhile, in cores
    send_lag_ms: dict[str, float] = field(default_factory=dict)  # mean, max
    caller_drops: int = 0
    setup_failed: int = 0
    setup_s: float = 0.0
    held: bool = True
    attempts: int = 1  # measurements (more when the caller's own sends were late)


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine spent so far (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _system_seconds(pid: int) -> float:
    """System CPU time of ``pid`` (``/proc/PID/stat``, in clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[12]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _udp_drops(port: int) -> int:
    """Drops counted by the kernel on the UDP socket bound to ``port`` (IPv4)."""
    want = f":{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1].endswith(want):
                    return int(parts[-1])
    except (OSError, StopIteration, ValueError):
        pass
    return 0


class Caller:
    """The calls, their RTP, the measurement windows."""

    def __init__(
        self, target: tuple[str, int], pid: int, setup_rate: float, *, mmsg: bool = True
    ) -> None:
        self.target = target
        self.pid = pid
        self.setup_rate = setup_rate
        self.loop = EventLoop()
        self.leg = Leg(addr="127.0.0.1", port=0, proto="udp")
        self.disp = Dispatcher([self.leg], self.loop)
        self.ep = Endpoint(self.disp)
        sip_port = self.leg.socketpool().master().getsockname()[1]
        self.from_ = f"<sip:caller@127.0.0.1:{sip_port}>"
        self.contact = f"<sip:caller@127.0.0.1:{sip_port}>"
        self.to = f"<sip:echo@{target[0]}:{target[1]}>"
        self.rtp, self.rtcp = _rtp_pair()
        self.rtp_port = self.rtp.getsockname()[1]
        self.sdp = bytes(offer(addr="127.0.0.1", media=[("audio", self.rtp_port)], codecs=[PCMU]))
        self.calls: list[_Call] = []
        self.slots: list[list[_Call]] = [[] for _ in range(SLOTS)]
        self.windows: dict[int, _Window] = {}
        self.window = -1  # the window packets are sent in (-1: none)
        self.next_slot = 0
        self.next_due = time.monotonic_ns()
        self.lags: list[int] = []  # ns late, per batch of the current window
        self.sbuf = bytearray(RTP_HEADER + PAYLOAD)
        self.rbuf = bytearray(2048)
        # one sendmmsg per slot and one recvmmsg per up to RECV_BATCH echoes
        # when libc has them (the kernel's work per packet stays, the system
        # call and Python's per-call overhead go)
        self.libc = _libc() if mmsg else None
        self.send_batches: list[_Batch | None] = [None] * SLOTS
        self.recv_batch = _Batch(RECV_BATCH, RECV_KEEP, None) if self.libc else None
        self.inviting = 0
        self.loop.add_fd(self.rtp, EV_READ, lambda _fd: self._receive(), "rtp")
        self.loop.add_fd(self.rtcp, EV_READ, lambda _fd: self._drain_rtcp(), "rtcp")
        self.loop.add_timer(0, lambda _t: self._tick(), SLOT_NS / 1e9, "rtp-send")

    # ---------------------------------------------------------------- RTP

    def _tick(self) -> None:
        now = time.monotonic_ns()
        pack, buf, send = PACKET.pack_into, self.sbuf, self.rtp.sendto
        win = self.window
        libc, fd, size = self.libc, self.rtp.fileno(), RTP_HEADER + PAYLOAD
        while self.next_due <= now:
            batch = self.slots[self.next_slot]
            if batch:
                t = time.monotonic_ns()
                if libc is not None:
                    mm = self.send_batches[self.next_slot]
                    if mm is None or mm.count != len(batch):  # (calls were added)
                        mm = _Batch(len(batch), size, [c.dst for c in batch])
                        self.send_batches[self.next_slot] = mm
                    data = mm.data
                    for i, c in enumerate(batch):
                        pack(data, i * size, 0x80, 0, c.seq, c.ts, c.number, c.number, win, t)
                        c.seq = (c.seq + 1) & 0xFFFF
                        c.ts = (c.ts + PAYLOAD) & 0xFFFFFFFF
                    # (a full send buffer: the rest of the batch is lost)
                    libc.sendmmsg(fd, mm.msgs, mm.count, MSG_DONTWAIT)
                else:
                    for c in batch:
                        pack(buf, 0, 0x80, 0, c.seq, c.ts, c.number, c.number, win, t)
                        c.seq = (c.seq + 1) & 0xFFFF
                        c.ts = (c.ts + PAYLOAD) & 0xFFFFFFFF
                        with contextlib.suppress(OSError):  # (a full send buffer: a loss)
                            send(buf, c.dst)
                if win >= 0:
                    self.windows[win].sent += len(batch)
                    self.lags.append(t - self.next_due)
            self.next_slot = (self.next_slot + 1) % SLOTS
            self.next_due += SLOT_NS

    def _receive(self) -> None:
        if self.libc is not None and self.recv_batch is not None:
            self._receive_batches(self.libc, self.recv_batch)
            return
        recv, buf, unpack = self.rtp.recv_into, self.rbuf, HEAD.unpack_from
        windows = self.windows
        for _ in range(10000):
            try:
                n = recv(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if n < RTP_HEADER + HEAD.size:
                continue
            _number, win, t = unpack(buf, RTP_HEADER)
            if win >= 0:
                w = windows.get(win)
                if w is not None and w.open:
                    w.rtts.append(time.monotonic_ns() - t)

    def _receive_batches(self, libc: ctypes.CDLL, mm: _Batch) -> None:
        fd, unpack, msg_len = self.rtp.fileno(), HEAD.unpack_from, _MSG_LEN.unpack_from
        data, msgs, windows = mm.data, mm.msgs, self.windows
        short = RTP_HEADER + HEAD.size
        for _ in range(100):  # (bounded: the loop is level triggered)
            n = libc.recvmmsg(fd, msgs, mm.count, MSG_DONTWAIT, None)
            if n <= 0:
                return
            now = time.monotonic_ns()  # (all of them were queued by now)
            for i in range(n):
                if msg_len(msgs, i * _MMSG_SIZE + _MSG_LEN_AT)[0] < short:
                    continue
                _number, win, t = unpack(data, i * RECV_KEEP + RTP_HEADER)
                if win >= 0:
                    w = windows.get(win)
                    if w is not None and w.open:
                        w.rtts.append(now - t)
            if n < mm.count:
                return

    def _drain_rtcp(self) -> None:
        for _ in range(1000):
            try:
                self.rtcp.recv(2048)
            except OSError:
                return

    # ---------------------------------------------------------- signalling

    def add_calls(self, n: int, timeout: float) -> tuple[int, float]:
        """Set up ``n`` more calls, paced; (how many failed, seconds taken)."""
        new = [_Call(len(self.calls) + i) for i in range(n)]
        self.calls += new
        t0 = time.monotonic()
        pending = list(reversed(new))
        interval = 1.0 / self.setup_rate
        deadline = t0 + timeout

        def issue(_t: object = None) -> None:
            # catch up with the rate, but never more than SETUP_IN_FLIGHT at once
            due = int((time.monotonic() - t0) / interval) + 1 - (len(new) - len(pending))
            while pending and due > 0 and self.inviting < SETUP_IN_FLIGHT:
                self._invite(pending.pop())
                due -= 1

        timer = self.loop.add_timer(0, lambda _t: issue(), 0.005, "invite")
        try:
            while time.monotonic() < deadline and any(c.state in ("new", "inviting") for c in new):
                self.loop.loop(0.05)
        finally:
            timer.cancel()
        failed = 0
        for c in new:
            if c.state != "up":
                failed += 1
                if c.state == "inviting" and c.ctx is not None:
                    self.ep.close_context(c.ctx)
                c.state = "failed"
        return failed, time.monotonic() - t0

    def _invite(self, c: _Call) -> None:
        c.state = "inviting"
        self.inviting += 1
        c.ctx = self.ep.invite(
            {"from_": self.from_, "to": self.to, "contact": self.contact},
            lambda ep, ctx, error, code, packet, leg, from_: self._on_invite(
                c, error, code, packet
            ),
            self.sdp,
            content_type="application/sdp",
        )

    def _on_invite(self, c: _Call, error: int, code: int, packet: Packet | None) -> None:
        if c.state != "inviting" or (not error and code < 200):
            return
        self.inviting -= 1
        if error or not 200 <= code < 300 or packet is None:
            c.state = "failed"
            return
        try:
            sdp = sdp_from_body(str(packet.get_header("content-type") or ""), packet.body())
        except SDPError:
            sdp = None
        if sdp is None or not sdp.media or not sdp.media[0].addr or not sdp.media[0].port:
            c.state = "failed"
            return
        m = sdp.media[0]
        c.dst = (str(m.addr), m.port)
        c.seq, c.ts = c.number * 7919 & 0xFFFF, c.number * 104729 & 0xFFFFFFFF
        c.state = "up"
        self.slots[c.number % SLOTS].append(c)

    def hang_up(self, timeout: float) -> int:
        """BYE every call that is up, paced; how many did not get a 200."""
        up = [c for c in self.calls if c.state == "up"]
        for batch in self.slots:
            batch.clear()
        done: list[int] = [0, 0]  # ok, failed

        def on_bye(c: _Call, error: int, code: int) -> None:
            if c.state == "bye" and (error or code >= 200):
                c.state = "ended"
                done[0 if not error and code < 300 else 1] += 1

        t0 = time.monotonic()
        interval = 1.0 / self.setup_rate
        for i, c in enumerate(up):
            if c.ctx is None:
                continue
            c.state = "bye"
            self.ep.new_request(
                "BYE",
                c.ctx,
                lambda ep, ctx, error, code, packet, leg, from_, c=c: on_bye(c, error, code),
            )
            wait = t0 + (i + 1) * interval - time.monotonic()
            if wait > 0:
                self.loop.loop(wait)
        deadline = time.monotonic() + timeout
        while sum(done) < len(up) and time.monotonic() < deadline:
            self.loop.loop(0.05)
        return len(up) - done[0]

    # -------------------------------------------------------- measurement

    def measure(self, calls: int, seconds: float, grace: float) -> Step:
        """Measure the calls that are up for ``seconds``; the echo may come ``grace`` late."""
        win = len(self.windows)
        w = self.windows[win] = _Window()
        self.lags = []
        drops0 = _udp_drops(self.rtp_port)
        t0 = time.monotonic()
        cpu0, own0 = cpu_seconds(self.pid), cpu_seconds(os.getpid())
        sys0, busy0 = _system_seconds(self.pid), _busy_seconds()
        self.window = win
        self.loop.loop(seconds)
        self.window = -1
        wall = time.monotonic() - t0
        cpu, own = cpu_seconds(self.pid) - cpu0, cpu_seconds(os.getpid()) - own0
        sys_cpu = _system_seconds(self.pid) - sys0
        others = _busy_seconds() - busy0 - cpu - own
        self.loop.loop(grace)
        w.open = False
        lags = self.lags
        step = Step(calls=calls, seconds=round(wall, 3), sent=w.sent, received=len(w.rtts))
        got = min(len(w.rtts), w.sent)
        step.loss_pct = round(100.0 * (1 - got / w.sent), 3) if w.sent else 100.0
        rtts = sorted(w.rtts)
        if rtts:
            step.rtt_ms = {
                "mean": round(sum(rtts) / len(rtts) / 1e6, 3),
                "p50": round(rtts[len(rtts) // 2] / 1e6, 3),
                "p95": round(rtts[min(len(rtts) - 1, len(rtts) * 95 // 100)] / 1e6, 3),
                "max": round(rtts[-1] / 1e6, 3),
            }
        if lags:
            step.send_lag_ms = {
                "mean": round(sum(lags) / len(lags) / 1e6, 3),
                "max": round(max(lags) / 1e6, 3),
            }
        step.answerer_cpu_pct = round(100 * cpu / wall, 1)
        step.answerer_sys_pct = round(100 * sys_cpu / wall, 1)
        step.caller_cpu_pct = round(100 * own / wall, 1)
        step.other_cores = round(max(others / wall, 0.0), 2)
        step.caller_drops = _udp_drops(self.rtp_port) - drops0
        w.rtts = []
        return step

    def close(self) -> None:
        self.ep.close()
        self.disp.close()
        for s in (self.rtp, self.rtcp):
            self.loop.del_fd(s)
            s.close()
        self.loop.close()


def _rtp_pair() -> tuple[socket.socket, socket.socket]:
    """An RTP socket on an even port and its RTCP socket on the next one."""
    for _ in range(100):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0 and port < 65535:
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind(("127.0.0.1", port + 1))
            except OSError:
                rtcp.close()
                rtp.close()
                continue
            for s in (rtp, rtcp):
                s.setblocking(False)
            # (bounded by net.core.rmem_max/wmem_max; the drops are reported)
            rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            rtp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            return rtp, rtcp
        rtp.close()
    raise RuntimeError("no free RTP port pair")


def ramp(args: argparse.Namespace) -> dict[str, Any]:
    host, _, port = args.target.rpartition(":")
    caller = Caller((host, int(port)), args.pid, args.setup_rate, mmsg=not args.no_mmsg)
    steps: list[Step] = []
    stopped = ""
    baseline: float | None = None
    try:
        for n in args.steps:
            more = n - sum(c.state == "up" for c in caller.calls)
            more = max(more, 0)
            # (an answerer that needs 5 s more than the pace to take the calls is overloaded)
            failed, secs = caller.add_calls(more, timeout=more / args.setup_rate + 5)
            caller.loop.loop(args.settle)
            for attempt in range(1 + RETRIES):
                step = caller.measure(n, args.measure, args.grace)
                step.setup_failed, step.setup_s = failed, round(secs, 2)
                step.attempts = attempt + 1
                mean = step.rtt_ms.get("mean")
                if baseline is None and mean is not None:
                    baseline = mean
                if mean is not None and baseline is not None:
                    step.added_delay_ms = round(mean - baseline, 3)
                step.held = (
                    failed == 0
                    and step.loss_pct < args.max_loss
                    and (step.added_delay_ms is not None and step.added_delay_ms < args.max_delay)
                )
                # the caller itself was held up (other processes took the cores):
                # measured again, not a verdict on the answerer
                if step.held or failed or step.send_lag_ms.get("max", 0.0) <= MAX_SEND_LAG_MS:
                    break
            steps.append(step)
            print(
                f"  {n:5d} calls: loss {step.loss_pct:.2f} %, rtt {step.rtt_ms}, "
                f"answerer {step.answerer_cpu_pct} % CPU, caller {step.caller_cpu_pct} %, "
                f"lag {step.send_lag_ms}, drops {step.caller_drops}, set-up failed {failed}",
                file=sys.stderr,
                flush=True,
            )
            if not step.held:
                stopped = (
                    "set-up failed" if failed else
                    f"loss {step.loss_pct:.2f} %" if step.loss_pct >= args.max_loss else
                    f"added delay {step.added_delay_ms} ms"
                )  # fmt: skip
                break
    finally:
        unanswered = caller.hang_up(timeout=10)
        caller.close()
    return {
        "steps": [asdict(s) for s in steps],
        "baseline_rtt_ms": baseline,
        "stopped": stopped,
        "bye_unanswered": unanswered,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--target", required=True, help="the answerer's SIP address, IP:PORT")
    ap.add_argument("--pid", type=int, required=True, help="the answerer's process (for its CPU)")
    ap.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], required=True)
    ap.add_argument("--measure", type=float, default=2.0, help="seconds measured per step")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds after the set-up")
    ap.add_argument("--grace", type=float, default=0.3, help="seconds an echo may come late")
    ap.add_argument("--setup-rate", type=float, default=200.0, help="calls/s of the set-up")
    ap.add_argument("--max-loss", type=float, default=1.0, help="loss %% that ends the ramp")
    ap.add_argument(
        "--no-mmsg", action="store_true", help="a system call per packet, no sendmmsg/recvmmsg"
    )
    ap.add_argument("--max-delay", type=float, default=20.0, help="added ms that end the ramp")
    args = ap.parse_args(argv)
    print(json.dumps(ramp(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
