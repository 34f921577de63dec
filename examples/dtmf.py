"""Call TO, send DTMF digits, record what comes back, hang up (Net::SIP's dtmf.pl).

    python examples/dtmf.py --from sip:100@127.0.0.1 sip:200@127.0.0.1:5070 '123*#'

'-' in DIGITS is a pause. Differences from the Perl example: everything the Perl one
hard-codes (from, to, credentials, output file, hang-up time, digits) is an option here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


def flag(box: list[object]) -> Callable[..., None]:
    """A callback that marks `box` (a loop stop variable) with its arguments."""
    return lambda *a: box.append(a)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("to", metavar="TO")
    p.add_argument("digits", metavar="DIGITS", nargs="?", default="ABCD*#123--4567890")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("-F", "--from", dest="from_", metavar="FROM", default="sip:100@127.0.0.1")
    p.add_argument("-L", "--leg", default="127.0.0.1:0", help="local ip[:port]")
    p.add_argument("-O", "--outfile", default="record.raw", help="received audio goes here")
    p.add_argument("-T", "--time", type=float, default=30.0, help="hang up after S seconds")
    p.add_argument("--username", help="user name for digest authorization")
    p.add_argument("--password", help="password for digest authorization")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip.simple import Simple  # noqa: PLC0415 (--help needs no stack)

    ua = Simple(
        from_=args.from_,
        leg=args.leg,
        auth=(args.username, args.password) if args.username else None,
    )
    peer_hangup: list[object] = []
    call = ua.invite(
        args.to,
        init_media=ua.rtp("recv_echo", args.outfile, 0),
        recv_bye=flag(peer_hangup),
    )
    if ua.error():
        print(f"invite failed: {ua.error()}", file=sys.stderr)
        return 1
    dtmf_done: list[object] = []
    call.dtmf(args.digits, cb_final=flag(dtmf_done))
    timeout: list[object] = []
    ua.add_timer(args.time, flag(timeout))
    ua.loop(None, timeout, peer_hangup, dtmf_done)
    if not peer_hangup:
        bye_done: list[object] = []
        call.bye(cb_final=flag(bye_done))
        ua.loop(None, bye_done)
    ua.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
