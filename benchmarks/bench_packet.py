#!/usr/bin/env python3
"""Benchmark netsip.packet against Perl's Net::SIP::Packet.

One iteration parses a typical INVITE with an SDP body, creates the 200
response (with an SDP answer) and serialises it: the work a UAS does for
each incoming call. The same loop runs in Python and, when ``perl
-MNet::SIP`` is available, in Perl (inline script, same message, same time
budget); both rates and their ratio are printed.

With ``--distinct`` every iteration takes the next of 20,000 INVITEs that
differ in branch, From tag and Call-ID (as the calls of one user agent do),
so nothing a parser remembers about the previous message helps with those
lines; the default parses the same message again and again.

Usage: python benchmarks/bench_packet.py [--seconds 3] [--distinct] [--json]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netsip.packet import Packet, Request  # after the sys.path setup

SDP_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
)
SDP_ANSWER = (
    b"v=0\r\n"
    b"o=bob 2808844564 2808844564 IN IP4 192.0.2.4\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.4\r\n"
    b"t=0 0\r\n"
    b"m=audio 3456 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: netsip-bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP_OFFER)).encode() + b"\r\n"
    b"\r\n" + SDP_OFFER
)
CONTACT = "<sip:bob@192.0.2.4>"
# INVITE with a call number in branch, From tag and Call-ID (--distinct)
INVITE_TEMPLATE = (
    INVITE.replace(b"branch=z9hG4bK776asdhds", b"branch=z9hG4bK776asdhds@@N@@")
    .replace(b"tag=1928301774", b"tag=1928301774@@N@@")
    .replace(b"Call-ID: a84b4c76e66710", b"Call-ID: a84b4c76e66710@@N@@")
)
DISTINCT = 20_000


def invite(n: int) -> bytes:
    """The INVITE of call ``n`` (see INVITE_TEMPLATE)."""
    return INVITE_TEMPLATE.replace(b"@@N@@", str(n).encode())


PERL = r"""
use strict; use warnings;
use Net::SIP; use MIME::Base64; use Time::HiRes qw(time);
my ($msg, $answer, $seconds, $distinct) =
    (decode_base64($ARGV[0]), decode_base64($ARGV[1]), $ARGV[2], $ARGV[3]);
my @msgs = $distinct ? map { (my $m = $msg) =~ s/\@\@N\@\@/$_/g; $m } 1..$distinct : ($msg);
my $i = 0;
my $one = sub {
    my $p = Net::SIP::Packet->new_from_string($msgs[$i++ % @msgs]);
    my $r = $p->create_response(200, 'OK', { contact => '<sip:bob@192.0.2.4>' }, $answer);
    return $r->as_string;
};
$one->() for 1..200;  # warm up
my ($n, $start) = (0, time());
my $end = $start + $seconds;
while (1) {
    $one->() for 1..100;
    $n += 100;
    last if time() >= $end;
}
printf "%d %.6f\n", $n, time() - $start;
"""


def one(msg: bytes = INVITE) -> bytes:
    p = Packet.new_from_string(msg)
    assert isinstance(p, Request)
    return p.create_response(200, headers={"contact": CONTACT}, body=SDP_ANSWER).as_bytes()


def bench_python(seconds: float, distinct: bool = False) -> tuple[int, float]:
    msgs = [invite(i) for i in range(1, DISTINCT + 1)] if distinct else [INVITE]
    it = itertools.cycle(msgs)
    for _ in range(200):  # warm up
        one(next(it))
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            one(next(it))
        n += 100
        if time.perf_counter() >= end:
            break
    return n, time.perf_counter() - start


def bench_perl(seconds: float, distinct: bool = False) -> tuple[int, float] | None:
    perl = shutil.which("perl")
    if perl is None:
        return None
    if (
        subprocess.run([perl, "-MNet::SIP", "-e", "1"], capture_output=True, check=False).returncode
        != 0
    ):
        return None
    res = subprocess.run(
        [
            perl,
            "-e",
            PERL,
            base64.b64encode(INVITE_TEMPLATE if distinct else INVITE).decode(),
            base64.b64encode(SDP_ANSWER).decode(),
            str(seconds),
            str(DISTINCT if distinct else 0),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds * 10 + 60,
    )
    n, elapsed = res.stdout.split()
    return int(n), float(elapsed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=3.0, help="time budget per language")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-perl", action="store_true", help="skip the Perl run")
    ap.add_argument(
        "--distinct",
        action="store_true",
        help=f"cycle through {DISTINCT:,} INVITEs of different calls",
    )
    args = ap.parse_args(argv)

    # the loop does what it claims
    resp = Packet.new_from_string(one())
    assert resp.is_response() and resp.body() == SDP_ANSWER

    py_n, py_t = bench_python(args.seconds, args.distinct)
    py_rate = py_n / py_t
    perl_res = None if args.no_perl else bench_perl(args.seconds, args.distinct)
    result: dict[str, object] = {
        "benchmark": "parse INVITE+SDP, create 200 with SDP, serialise",
        "messages": f"{DISTINCT} distinct calls" if args.distinct else "one message",
        "message_bytes": len(INVITE),
        "python": {"iterations": py_n, "seconds": round(py_t, 3), "msg_per_s": round(py_rate)},
        "python_version": sys.version.split()[0],
    }
    if perl_res is not None:
        perl_rate = perl_res[0] / perl_res[1]
        result["perl"] = {
            "iterations": perl_res[0],
            "seconds": round(perl_res[1], 3),
            "msg_per_s": round(perl_rate),
        }
        result["ratio"] = round(py_rate / perl_rate, 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"python: {py_rate:10.0f} msg/s ({py_n} in {py_t:.2f}s)")
        if perl_res is not None:
            print(
                f"perl:   {perl_res[0] / perl_res[1]:10.0f} msg/s "
                f"({perl_res[0]} in {perl_res[1]:.2f}s)"
            )
            print(f"ratio:  {result['ratio']}x")
        else:
            print("perl:   not run (perl -MNet::SIP unavailable or --no-perl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
