"""Call TO from FROM and record what the peer sends (Net::SIP's invite_and_recv.pl).

    python examples/invite_and_recv.py -T 10 -O record.raw sip:30@127.0.0.1 sip:31@127.0.0.1:5070

The received G.711 payload is written raw to OUTFILE (or as WAV when it ends in .wav).
Differences from the Perl example: no -d (use --debug for logging at DEBUG level); the leg
defaults to an ephemeral port on FROM's host instead of trying 5060 first.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("from_", metavar="FROM")
    p.add_argument("to", metavar="TO")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("-P", "--proxy", help="outgoing proxy host[:port]; registrar unless -R")
    p.add_argument("-R", "--registrar", help="register at host[:port] first")
    p.add_argument("-O", "--outfile", help="write received RTP payload to this file")
    p.add_argument("-T", "--time", type=float, help="hang up after this many seconds")
    p.add_argument("-L", "--leg", help="local ip[:port] for the leg")
    p.add_argument("-C", "--contact", help="contact address for REGISTER and INVITE")
    p.add_argument("--username", help="user name for digest authorization")
    p.add_argument("--password", help="password for digest authorization")
    p.add_argument("--route", action="append", default=[], help="SIP route (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip.simple import Simple  # noqa: PLC0415 (--help needs no stack)

    registrar = args.registrar or args.proxy
    leg = args.leg
    if not leg:
        m = re.search(r"@([\w\-.]+)", args.from_)
        if not m:
            print(f"cannot find SIP domain in {args.from_!r}", file=sys.stderr)
            return 2
        leg = f"{m.group(1)}:0"
    auth = (args.username, args.password) if args.username else None
    ua = Simple(
        from_=args.from_,
        leg=leg,
        outgoing_proxy=args.proxy,
        registrar=registrar,
        auth=auth,
        contact=args.contact,
        route=args.route or None,
    )
    if registrar and ua.register() is None:
        print(f"registration failed: {ua.error()}", file=sys.stderr)
        return 1
    done: list[bool] = []
    call = ua.invite(
        args.to,
        # Perl: rtp('recv_echo', $outfile, 0): record to the file and echo it back
        # at once (a delay of -1 would not echo)
        init_media=ua.rtp("recv_echo", args.outfile, 0),
        recv_bye=lambda *_: done.append(True),
    )
    if ua.error():
        print(f"invite failed: {ua.error()}", file=sys.stderr)
        return 1
    ua.loop(args.time, done)
    if not done:
        call.bye()
    ua.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
