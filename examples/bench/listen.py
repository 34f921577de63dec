"""Answer every call and echo its RTP back, several calls at once (Net::SIP's bench/listen.pl).

    python examples/bench/listen.py -L 127.0.0.1:5070

Differences from the Perl example: -d is a flag (logging at DEBUG level), not a level;
usage errors exit 2 as argparse does.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    p.add_argument("-F", "--from", dest="from_", metavar="FROM", default="sip:me@two.example.com")
    p.add_argument("-L", "--leg", default="127.0.0.1:5070", help="leg to listen on")
    p.add_argument("-R", "--registrar", help="register there first")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from netsip.simple import Simple  # noqa: PLC0415 (--help needs no stack)

    ua = Simple(from_=args.from_, leg=args.leg, registrar=args.registrar)
    if args.registrar:
        if ua.register() is None:
            print(f"Registration failed: {ua.error()}", file=sys.stderr)
            return 1
        print("Registered", file=sys.stderr)
    ua.listen(init_media=ua.rtp("recv_echo"))  # echo everything back
    print("Listening...", flush=True)
    ua.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
