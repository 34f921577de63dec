"""Call TO, play FILE, then each next FILE in a re-INVITE (Net::SIP's invite_and_send.pl).

    python examples/invite_and_send.py sip:30@127.0.0.1 sip:31@127.0.0.1:5070 a.raw b.wav

Each FILE is raw G.711 (PCMU) or a .wav file. The call ends with BYE after the last file,
unless the peer hangs up first. Differences from the Perl example: -d is a flag; the
registrar is only used when given (no '-' placeholder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("from_", metavar="FROM")
    p.add_argument("to", metavar="TO")
    p.add_argument("files", metavar="FILE", nargs="+", help="audio to send, one per (re-)INVITE")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("-P", "--proxy", help="outgoing proxy host[:port]")
    p.add_argument("-R", "--registrar", help="register at host[:port] first")
    p.add_argument("-L", "--leg", action="append", default=[], help="local ip[:port] (repeatable)")
    p.add_argument("-T", "--ring-time", type=float, default=None, help="give up after S ringing")
    p.add_argument("--username", help="user name for digest authorization")
    p.add_argument("--password", help="password for digest authorization")
    return p.parse_args(argv)


def flag(box: list[object]) -> Callable[..., None]:
    """A callback that marks `box` (a loop stop variable) with its arguments."""
    return lambda *a: box.append(a)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip.simple import Simple  # noqa: PLC0415 (--help needs no stack)

    ua = Simple(
        from_=args.from_,
        legs=args.leg or ["127.0.0.1:0"],
        outgoing_proxy=args.proxy,
        auth=(args.username, args.password) if args.username else None,
    )
    if args.registrar and ua.register(registrar=args.registrar) is None:
        print(f"registration failed: {ua.error()}", file=sys.stderr)
        return 1
    peer_hangup: list[object] = []
    no_answer: list[object] = []
    files = list(args.files)
    rtp_done: list[object] = []
    call = ua.invite(
        args.to,
        init_media=ua.rtp("send_recv", files[0]),
        cb_rtp_done=lambda *a: rtp_done.append(a),
        recv_bye=lambda *a: peer_hangup.append(a),
        cb_noanswer=lambda *a: no_answer.append(a),
        ring_time=args.ring_time,
    )
    if ua.error():
        print(f"invite failed: {ua.error()}", file=sys.stderr)
        return 1
    ua.loop(None, rtp_done, peer_hangup, no_answer)
    if no_answer:
        print("no answer", file=sys.stderr)
        return 1
    while not peer_hangup:
        files.pop(0)  # done with this file
        if not files:
            break
        next_done: list[object] = []
        call.reinvite(
            init_media=ua.rtp("send_recv", files[0]),
            cb_rtp_done=flag(next_done),
            recv_bye=lambda *a: peer_hangup.append(a),
        )
        ua.loop(None, next_done, peer_hangup)
    if not peer_hangup:
        bye_done: list[object] = []
        call.bye(cb_final=lambda *a: bye_done.append(a))
        ua.loop(None, bye_done)
    ua.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
