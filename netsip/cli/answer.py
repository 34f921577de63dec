"""``netsip answer``: accept calls, echo or play audio, print DTMF, on
:class:`netsip.simple.Simple`.

Every INVITE is answered 200 with an SDP answer (PCMU and telephone-event,
RFC 3264, 4733); the media of each call is the caller's own audio sent back
(``--echo``, the default) or the file of ``--play`` followed by silence, and
what the caller sends is kept for ``--record``. DTMF digits the caller
sends (RFC 4733 events, or in-band tones when the caller did not offer
telephone-event, or with ``--dtmf-detect both``) are printed. Calls run in
parallel; each ends with the caller's BYE or, after ``--duration``, with
ours. ``--register`` registers the listening address first (with digest,
refreshed while the command runs) so that calls through a registrar reach
it.

One line per event goes to stdout (a call coming in, established, each DTMF
digit, the BYE, the end) and a summary when the command stops: on
SIGINT/SIGTERM, or after ``--calls`` calls ended. Exit 0 then; 1 if the
registration failed; 2 for bad arguments (a port in use included).

Net::SIP's counterpart is ``examples/bench/listen.pl`` (the listening side
of its benchmark; ``netsip call`` is the calling side):
``Simple->listen(init_media => $ua->rtp('recv_echo'))``. Differences:
``--play``/``--record`` with WAV files, DTMF printed, and several legs (UDP
and TCP on one port by default) where Perl listens on one.
"""

from __future__ import annotations

import argparse
import errno
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsip import rtp
from netsip._log import get_logger
from netsip.cli._client import parse_target, peer
from netsip.cli._common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Parents,
    SignalStop,
    Subparsers,
    count,
    seconds,
    strerror,
)
from netsip.cli._listen_sockets import (
    ListenSpec,
    add_server_arguments,
    make_legs,
    open_listen_sockets,
    server_specs,
)
from netsip.cli._media import Player, Recorder, read_audio
from netsip.cli.register import add_credentials, default_aor, sip_uri_arg
from netsip.eventloop import EventLoop
from netsip.simple import Simple
from netsip.util import Addr, Var

__all__ = ["add_parser", "cmd_answer", "record_path"]

log = get_logger(__name__)


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``answer`` subcommand and its options."""
    p = subparsers.add_parser(
        "answer",
        parents=[parents.common, parents.tls],
        help="accept calls: echo or play audio, print DTMF",
        description="Accept every call, send the caller's audio back (--echo) or play a "
        "file (--play), record (--record), print DTMF digits; a summary on "
        "Ctrl-C/SIGTERM or after --calls calls.",
    )
    add_server_arguments(p)
    media = p.add_mutually_exclusive_group()
    media.add_argument(
        "--echo", action="store_true", help="send each caller's audio back (the default)"
    )
    media.add_argument(
        "--play",
        metavar="FILE",
        help="send this audio, then silence: WAV (8000 Hz mono 16-bit) or raw PCMU",
    )
    p.add_argument(
        "--dtmf-detect",
        choices=("auto", "both"),
        default="auto",
        help="auto (default): RFC 4733 events when the caller offered telephone-event, "
        "else in-band tones; both: tones too (the tone detector rejects silence and "
        "constant audio in a few µs per packet, speech costs it some 50 µs per packet)",
    )
    p.add_argument(
        "--record",
        metavar="FILE",
        help="write what the caller sends: WAV if *.wav, else raw PCMU; "
        "call N>1 goes to FILE with -N before the suffix",
    )
    p.add_argument(
        "-d",
        "--duration",
        type=seconds,
        metavar="S",
        help="hang up S seconds after a call was established (default: the caller does)",
    )
    p.add_argument(
        "-n",
        "--calls",
        type=count,
        default=0,
        metavar="N",
        help="stop after N calls ended (default %(default)s: until Ctrl-C/SIGTERM)",
    )
    p.add_argument("--register", metavar="URI", help="register at this registrar first")
    add_credentials(p, required=False)
    p.add_argument(
        "--from",
        dest="from_",
        metavar="URI",
        help="our address, also the AOR of --register "
        "(default: sip:USER@ the registrar's host, else sip:netsip@ the first listen address)",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for the registrar (default %(default)s)",
    )


def record_path(path: str, number: int) -> str:
    """Where ``--record`` puts call ``number``: ``path``, then ``stem-N.suffix``."""
    if number <= 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{number}{p.suffix}"))


@dataclass(slots=True)
class CallInfo:
    """One incoming call, for its lines and the summary."""

    number: int
    started: float
    established_at: float | None = None
    bye: str = ""  # "peer" or "us"
    dtmf: list[str] = field(default_factory=list)
    recorder: Recorder | None = None


@dataclass(slots=True)
class Stats:
    """The calls of the command's run."""

    calls: list[CallInfo] = field(default_factory=list)
    ended: int = 0

    def summary(self, elapsed: float) -> list[str]:
        established = sum(c.established_at is not None for c in self.calls)
        by_peer = sum(c.bye == "peer" for c in self.calls)
        by_us = sum(c.bye == "us" for c in self.calls)
        digits = "".join(d for c in self.calls for d in c.dtmf)
        return [
            f"--- netsip answer: {len(self.calls)} calls in {elapsed:.3f} s ---",
            f"{established} established, {self.ended} ended "
            f"({by_peer} by the caller's BYE, {by_us} by ours); DTMF received: {digits or '-'}",
        ]


def cmd_answer(args: argparse.Namespace) -> int:
    """``netsip answer``."""
    specs, tls = server_specs(args)
    if args.password is not None and not args.user:
        raise CliError("--password needs --user")
    registrar = parse_target(args.register, None) if args.register else None
    if registrar is not None and not args.user:
        raise CliError("--register needs --user (and --password)")
    from_ = sip_uri_arg(args.from_, "--from") if args.from_ else None
    if from_ is None and registrar is not None:
        from_ = f"<{default_aor(args.user, registrar)}>"
    audio = read_audio(args.play) if args.play else None
    if args.record:
        _check_writable(args.record)

    (bound,) = open_listen_sockets(specs)
    loop = EventLoop()
    stop: Var[int] = Var()
    stats = Stats()
    started = time.monotonic()
    try:
        with SignalStop(loop, stop):
            legs = make_legs(bound, tls)
            status = _serve(args, loop, stop, legs, bound[0][0], from_, audio, stats)
    finally:
        for _, sock in bound:
            sock.close()  # (no-op for those a leg closed)
        loop.close()
    for text in stats.summary(time.monotonic() - started):
        print(text)
    return status


def _check_writable(path: str) -> None:
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise CliError(f"--record: no such directory: {parent}")


def _serve(  # noqa: PLR0917  (the command's settings, one sequence of events)
    args: argparse.Namespace,
    loop: EventLoop,
    stop: Var[int],
    legs: list[Any],
    first: ListenSpec,
    from_: str | None,
    audio: bytes | None,
    stats: Stats,
) -> int:

    host = f"[{first.addr}]" if ":" in first.addr else first.addr
    auth = (args.user, args.password) if args.user and args.password is not None else None
    ua = Simple(
        from_=from_ or f"<sip:{args.user or 'netsip'}@{host}:{first.port}>",
        legs=legs,
        loop=loop,
        auth=auth,
    )
    try:
        if args.register:
            outcome: Var[Any] = Var()
            ua.register(
                registrar=args.register,
                auth=auth,
                cb_final=lambda status, *more, **info: _registered(outcome, status, more, info),
            )
            loop.loop(args.timeout, outcome, stop)
            if outcome.value is None or outcome.value[0] != "OK":
                why = outcome.value[1] if outcome.value is not None else "timeout"
                if stop.value:
                    why = "interrupted"
                raise CliError(f"REGISTER {args.register}: {why}", EXIT_FAIL)
            print(f"registered at {args.register}: expires {outcome.value[1]}", flush=True)

        def line(text: str) -> None:
            print(text, flush=True)

        def created(call: Any, request: Any, _leg: Any, from_addr: Addr) -> bool:
            info = CallInfo(len(stats.calls) + 1, time.monotonic())
            stats.calls.append(info)
            n = info.number
            line(f"call {n} from {request.get_header('from')} ({peer(from_addr)})")
            if args.record:
                info.recorder = Recorder(record_path(args.record, n))
            if audio is not None:
                media = rtp.media_send_recv(Player(audio, then_silence=True), 1, info.recorder)
            else:
                media = rtp.media_recv_echo(info.recorder, 0)
            events = b"telephone-event" in request.body()
            call.set_param(
                netsip_cli=info,
                init_media=media,
                # a caller that offered telephone-event sends digits as events (RFC 4733):
                # the tone detector would only cost CPU on every packet
                dtmf_methods="rfc2833" if events and args.dtmf_detect == "auto" else None,
                cb_dtmf=lambda event, duration: dtmf(info, event, duration),
                recv_bye=lambda *_a: peer_bye(info),
                cb_rtp_done=lambda *_a: None,  # (a played file ends in silence, not BYE)
            )
            return True

        def established(_status: str, call: Any) -> None:
            info: CallInfo = call.get_param("netsip_cli")
            info.established_at = time.monotonic()
            line(f"call {info.number}: established")
            if args.duration is not None:
                loop.add_timer(args.duration, lambda _t: hang_up(call, info))

        def hang_up(call: Any, info: CallInfo) -> None:
            if info.bye or call.closed:
                return
            info.bye = "us"
            line(f"call {info.number}: BYE (--duration)")
            call.bye()

        def dtmf(info: CallInfo, event: str, duration: int) -> None:
            info.dtmf.append(str(event))
            line(f"call {info.number}: DTMF {event} ({duration} ms)")

        def peer_bye(info: CallInfo) -> None:
            if info.bye:
                return
            info.bye = "peer"
            what = "BYE" if info.established_at is not None else "CANCEL"
            line(f"call {info.number}: {what} from the caller")

        def ended(call: Any) -> None:
            info: CallInfo | None = call.get_param("netsip_cli")
            if info is None:
                return  # (rejected before cb_create)
            stats.ended += 1
            length = time.monotonic() - (info.established_at or info.started)
            text = f"call {info.number}: ended after {length:.3f} s"
            if info.recorder is not None:
                try:
                    info.recorder.save()
                    text += f", recorded {info.recorder.size / 8000:.2f} s to {info.recorder.path}"
                except OSError as exc:
                    text += f", not recorded: {exc.strerror or exc}"
            line(text)
            if args.calls and stats.ended >= args.calls:
                calls_done.value = True

        calls_done: Var[bool] = Var()
        ua.listen(cb_create=created, cb_established=established, cb_cleanup=ended)
        for leg in legs:  # (after the registration: calls may come now)
            log.info("listening on %s:%s", leg.proto, leg.src)
        loop.loop(None, calls_done, stop)
    finally:
        ua.cleanup()
    return EXIT_OK


def _registered(
    outcome: Var[Any], status: str, more: tuple[Any, ...], info: dict[str, Any]
) -> None:
    for extra in more:  # (the details as keywords, or Perl's way: one mapping)
        if isinstance(extra, dict):
            info.update(extra)
    if status == "OK":
        outcome.value = ("OK", info.get("expires"))
        return
    packet = info.get("packet")
    if packet is not None:
        why = f"{packet.code()} {packet.msg()}".rstrip()
    else:
        why = strerror(int(info.get("errno") or 0) or errno.ETIMEDOUT)
    outcome.value = ("FAIL", why)
