"""``netsip call``: one call with audio, DTMF and BYE, on :class:`netsip.simple.Simple`.

The INVITE carries an SDP offer (PCMU and telephone-event, RFC 3264, 4733);
once the 2xx came (and was ACKed), RTP flows: the frames of ``--play`` (a
WAV file or raw PCMU), else silence, and what the peer sends is kept for
``--record``. ``--dtmf`` digits go out as RFC 4733 events (in-band tones if
the peer offered none). The call ends with our BYE ``--duration`` seconds
after it was established; without ``--duration`` when ``--play`` and
``--dtmf`` are done, or else when the peer hangs up (or on Ctrl-C). A digest
challenge (401/407) is answered with ``--user``/``--password``, and
``--proxy`` sends every request through an outbound proxy.

One line per event goes to stdout (each provisional response, the final
response, DTMF digits sent and received, the BYE) and a summary at the end.
Exit 0 when the call was established and ended with a BYE (ours or the
peer's); 1 with the final status (or ``timeout``, ``Connection refused``)
on one line of stderr when it failed; 2 for bad arguments.

Net::SIP's counterpart is ``examples/bench/call.pl`` (and
``examples/bin/answer_machine.pl``'s calling side), a few lines on
``Net::SIP::Simple``. Differences: WAV files besides raw PCMU, and the call
sends silence when there is nothing to play (Perl echoes the peer back).
"""

from __future__ import annotations

import argparse
import errno
import time
from dataclasses import dataclass, field
from typing import Any, Final

from netsip import rtp
from netsip.cli._client import ClientLeg, Target, leg_session, parse_target, peer
from netsip.cli._common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Parents,
    Subparsers,
    seconds,
    strerror,
)
from netsip.cli._media import Player, Recorder, read_audio
from netsip.cli.register import add_credentials, default_aor, sip_uri_arg
from netsip.packet import Response
from netsip.simple import Simple
from netsip.util import Var

__all__ = ["DTMF_DIGITS", "add_parser", "check_dtmf", "cmd_call"]

#: what ``--dtmf`` may hold: the 16 events of RFC 4733 3.2; ``,`` is a pause
DTMF_DIGITS: Final = frozenset("0123456789*#ABCDabcd,")
#: seconds after the last DTMF digit before the BYE, so that its final
#: RFC 4733 end packets (sent three times, 3.6) reach the peer first
DTMF_GRACE: Final = 0.3


def add_parser(subparsers: Subparsers, parents: Parents) -> None:
    """Add the ``call`` subcommand and its options."""
    p = subparsers.add_parser(
        "call",
        parents=[parents.common, parents.client, parents.tls],
        help="make a call: audio, DTMF, BYE",
        description="Call URI, send audio (--play) and DTMF (--dtmf), record what comes back "
        "(--record), hang up with BYE after --duration; exit 0 when the call was "
        "established and ended with BYE.",
    )
    p.add_argument("uri", metavar="URI", help="whom to call, e.g. sip:bob@127.0.0.1:5080")
    add_credentials(p, required=False)
    p.add_argument(
        "--from",
        dest="from_",
        metavar="URI",
        help="our address (default: sip:USER@ the target's host with --user, "
        "else sip:netsip@ the local address)",
    )
    p.add_argument("--proxy", metavar="URI", help="outbound proxy for every request")
    p.add_argument(
        "--play", metavar="FILE", help="audio to send: WAV (8000 Hz mono 16-bit) or raw PCMU"
    )
    p.add_argument(
        "--record", metavar="FILE", help="write the audio received: WAV if *.wav, else raw PCMU"
    )
    p.add_argument(
        "--dtmf", metavar="DIGITS", help="DTMF to send once established: 0-9 * # A-D, ',' pauses"
    )
    p.add_argument(
        "--dtmf-duration",
        type=seconds,
        default=0.1,
        metavar="S",
        help="length of each DTMF digit (default %(default)s)",
    )
    p.add_argument(
        "-d",
        "--duration",
        type=seconds,
        metavar="S",
        help="hang up S seconds after the call was established (default: once --play and "
        "--dtmf are done; without them when the peer hangs up or on Ctrl-C)",
    )
    p.add_argument(
        "--ring-time",
        type=seconds,
        default=60.0,
        metavar="S",
        help="CANCEL the call if not answered within S seconds (default %(default)s)",
    )


def check_dtmf(text: str) -> str:
    """The ``--dtmf`` digits, upper case.

    Raises:
        CliError: a character that is no DTMF event (status 2).
    """
    bad = sorted(set(text) - DTMF_DIGITS)
    if bad or not text:
        raise CliError(f"invalid --dtmf {text!r}: use 0-9 * # A-D (and ',' to pause)")
    return text.upper()


@dataclass(slots=True)
class Outcome:
    """How the call went, for the summary and the exit status."""

    started: float
    established_at: float | None = None
    status: str = ""  # the final response ("200 OK") or the error
    failed: bool = False
    ended_by: str = ""  # "us" or "peer"
    bye_done: bool = False
    ended_at: float | None = None
    dtmf_sent: str = ""
    dtmf_received: list[str] = field(default_factory=list)

    def ms(self, now: float) -> str:
        return f"{(now - self.started) * 1000:.1f} ms"


def cmd_call(args: argparse.Namespace) -> int:
    """``netsip call``."""
    target = parse_target(args.uri, args.transport)
    via = parse_target(args.proxy, args.transport) if args.proxy else target
    dtmf = check_dtmf(args.dtmf) if args.dtmf is not None else None
    if args.password is not None and not args.user:
        raise CliError("--password needs --user")
    user: str | None = args.user
    from_ = sip_uri_arg(args.from_, "--from") if args.from_ else None
    if from_ is None and user:
        from_ = f"<{default_aor(user, target)}>"
    player = Player(read_audio(args.play)) if args.play else None
    recorder = Recorder(args.record) if args.record else None
    auth = (user, args.password) if user and args.password is not None else None

    out: Outcome
    with leg_session(args, via, ClientLeg) as (client, stop):
        out = _run(args, client, target, stop, from_, auth, dtmf, player, recorder)
    if recorder is not None and out.established_at is not None:
        try:
            recorder.save()
        except OSError as exc:
            raise CliError(
                f"--record: cannot write {recorder.path}: {exc.strerror or exc}"
            ) from None
    _summary(target, out, recorder)
    if out.failed or out.established_at is None:
        raise CliError(f"INVITE {target.uri}: {out.status or 'interrupted'}", EXIT_FAIL)
    return EXIT_OK if out.ended_by else EXIT_FAIL


def _run(  # noqa: PLR0917  (the command's settings, one sequence of events)
    args: argparse.Namespace,
    client: ClientLeg,
    target: Target,
    stop: Var[int],
    from_: str | None,
    auth: tuple[str, str] | None,
    dtmf: str | None,
    player: Player | None,
    recorder: Recorder | None,
) -> Outcome:
    """Call, wait for the end; the outcome."""

    loop = client.loop
    ua = Simple(
        from_=from_ or f"<{client.from_uri}>",
        dispatcher=client.dispatcher,
        outgoing_proxy=args.proxy,
        auth=auth,
    )
    ua.endpoint.timeout = args.timeout  # Timer B/F (RFC 3261 17.1.1.2) of --timeout
    out = Outcome(time.monotonic())
    done: Var[bool] = Var()
    timers: list[Any] = []
    waiting = {"dtmf": dtmf is not None, "play": player is not None}

    def line(text: str) -> None:
        print(text, flush=True)

    def hang_up(why: str) -> None:
        if out.ended_by or call.closed:
            return
        out.ended_by = "us"
        line(f">>> BYE ({why})")
        call.bye(cb_final=bye_done)

    def bye_done(*_args: object) -> None:
        out.bye_done = True
        out.ended_at = time.monotonic()
        done.value = True

    def maybe_hang_up() -> None:
        # without --duration: when everything we had to send is out
        sends = dtmf is not None or player is not None
        if args.duration is None and sends and not any(waiting.values()):
            timers.append(loop.add_timer(DTMF_GRACE, lambda _t: hang_up("done")))

    def preliminary(_call: object, code: int, packet: Response) -> None:
        line(f"<<< {code} {packet.msg()} ({out.ms(time.monotonic())})".rstrip())

    def final(status: str, _call: object, *more: Any, **info: Any) -> None:
        now = time.monotonic()
        for extra in more:  # (the details as keywords, or Perl's way: one mapping)
            if isinstance(extra, dict):
                info.update(extra)
        packet = info.get("packet")
        code = info.get("code") or (packet.code() if packet is not None else 0)
        if packet is not None:
            out.status = f"{code} {packet.msg()}".rstrip()
        else:
            out.status = strerror(info.get("errno") or errno.ETIMEDOUT)
        if status != "OK":
            out.failed = True
            line(f"<<< {out.status} ({out.ms(now)})")
            done.value = True
            return
        out.established_at = now
        line(f"<<< {out.status} ({out.ms(now)}): established")
        if args.duration is not None:
            timers.append(loop.add_timer(args.duration, lambda _t: hang_up("--duration")))
        if dtmf is not None:
            line(f">>> DTMF {dtmf}")
            try:
                call.dtmf(dtmf, duration=int(args.dtmf_duration * 1000), cb_final=dtmf_sent)
            except ValueError as exc:
                line(f"DTMF not sent: {exc}")
                waiting["dtmf"] = False
        maybe_hang_up()

    def dtmf_sent(*_args: object) -> None:
        out.dtmf_sent = dtmf or ""
        waiting["dtmf"] = False
        line(f"DTMF {dtmf} sent")
        maybe_hang_up()

    def rtp_done(*_args: object) -> None:
        waiting["play"] = False
        line(f"--play {args.play} sent")
        maybe_hang_up()

    def dtmf_received(event: str, duration: int) -> None:
        out.dtmf_received.append(event)
        line(f"<<< DTMF {event} ({duration} ms)")

    def peer_bye(*_args: object) -> None:
        if out.ended_by:
            return
        out.ended_by = "peer"
        out.ended_at = time.monotonic()
        line("<<< BYE" if out.established_at is not None else "<<< CANCEL")
        done.value = True

    source = player if player is not None else Player(b"", then_silence=True)
    init_media = rtp.media_send_recv(source, 1, recorder)
    line(
        f">>> INVITE {target.uri} from {ua.from_} via {peer(client.dst)} "
        f"(local {peer(client.leg.src)})"
    )
    try:
        call = ua.invite(
            target.uri,
            init_media=init_media,
            cb_preliminary=preliminary,
            cb_final=final,
            cb_dtmf=dtmf_received,
            cb_rtp_done=rtp_done,
            recv_bye=peer_bye,
        )
        ringing = loop.add_timer(args.ring_time, lambda _t: no_answer())

        def no_answer() -> None:
            if out.established_at is None and not out.failed:
                line(f">>> CANCEL (no answer within {args.ring_time:g} s)")
                out.status = f"no answer within {args.ring_time:g} s"
                out.failed = True
                call.cancel(cb_final=done)

        loop.loop(None, done, stop)
        ringing.cancel()
        if stop.value and not done.value:
            # Ctrl-C: hang up (or cancel) and wait a moment for the outcome
            if out.established_at is not None:
                hang_up("interrupted")
            else:
                out.status, out.failed = "interrupted", True
                call.cancel(cb_final=done)
            loop.loop(args.timeout, done)
    finally:
        for timer in timers:
            timer.cancel()
        ua.cleanup()
    return out


def _summary(target: Target, out: Outcome, recorder: Recorder | None) -> None:
    print(f"--- call {target.uri} ---")
    if out.established_at is None:
        print(f"not established: {out.status or 'interrupted'}", flush=True)
        return
    end = out.ended_at or time.monotonic()
    setup = (out.established_at - out.started) * 1000
    who = {"us": "by us (BYE)", "peer": "by the peer (BYE)"}.get(out.ended_by, "without BYE")
    print(f"established in {setup:.1f} ms, lasted {end - out.established_at:.3f} s, ended {who}")
    print(
        f"DTMF sent: {out.dtmf_sent or '-'}, received: {''.join(out.dtmf_received) or '-'}"
        + (f"; recorded {recorder.size / 8000:.2f} s to {recorder.path}" if recorder else ""),
        flush=True,
    )
