#!/usr/bin/env python3
"""Memory of the registrar: N registrations held in the in-memory store, RSS per registration.

Each of ``--count`` (100,000) users registers one contact, the way a UA does
it: a REGISTER with its own Call-ID (32 hex digits, as netsip's Endpoint
makes them), a Contact with port and transport, ``Expires: 3600``. Each
request is parsed from its wire form and handed to
:meth:`netsip.registrar.Registrar.receive`, as the Dispatcher would; the
responses are built but not sent (the dispatcher's ``deliver`` is a no-op),
so what stays in memory is what the registrar keeps: the store's table, its
bindings and the expiry heap. Then the clock moves past the expiry and
:meth:`Registrar.expire` drops them all.

Printed: RSS before, after registering, after expiry (from
``/proc/self/statm``, after ``gc.collect()``), RSS per registration, the
store's own estimate (``sys.getsizeof`` over table, bindings, their strings
and the heap), and the CPU time per REGISTER and per expired binding. RSS does not
shrink after the expiry: CPython keeps the freed memory in its own arenas
for reuse (the store does not hold it: see its size estimate).

Run::

    python3 benchmarks/bench_registrar.py [--count N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.packet import Packet, Request
from netsip.registrar import MemoryStore, Registrar
from netsip.testing import FakeClock


def rss_bytes() -> int:
    """The resident set size of this process, in bytes (Linux /proc)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def register_bytes(i: int) -> bytes:
    """User i's REGISTER (a distinct AOR, Call-ID and contact per user)."""
    callid = f"{i:08x}" + "5f3a9c2e7b1d4a6f8e0c2b4d6f8a0c2e"[8:]
    ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    return (
        f"REGISTER sip:example.org SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{callid[:16]};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:user{i}@example.org>;tag={callid[:10]}\r\n"
        f"To: <sip:user{i}@example.org>\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:user{i}@{ip}:5060;transport=udp>\r\n"
        f"Expires: 3600\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def store_estimate(store: MemoryStore) -> int:
    """sys.getsizeof over what the store holds (shared small objects counted once)."""
    seen: set[int] = set()
    total = 0

    def add(obj: object) -> None:
        nonlocal total
        if id(obj) not in seen:
            seen.add(id(obj))
            total += sys.getsizeof(obj)

    add(store._table)  # (private: this is the store's own benchmark)
    add(store._scheduled)
    add(store._heap)
    for aor, bindings in store._table.items():
        add(aor)
        add(bindings)
        for b in bindings:
            add(b)
            for v in (b.contact, b.callid, b.params, b.path, b.instance, b.reg_id, b.q):
                add(v)
    for entry in store._heap:
        add(entry)
    for when in store._scheduled.values():
        add(when)
    return total


def run(count: int) -> dict[str, Any]:
    clock = FakeClock(1_000_000.0)
    loop = EventLoop(clock=clock)
    disp = Dispatcher((), loop)
    disp.deliver = lambda *a, **k: None  # type: ignore[method-assign]  # (responses not sent: see the docstring)
    store = MemoryStore()
    reg = Registrar(dispatcher=disp, store=store)
    leg: Any = None
    src: Any = None
    wires = (register_bytes(i) for i in range(count))
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.process_time()
    codes = 0
    for data in wires:
        packet = Packet.new_from_string(data)
        assert isinstance(packet, Request)
        codes += reg.receive(packet, leg, src) == 200
    cpu_register = time.process_time() - t0
    gc.collect()
    rss1 = rss_bytes()
    estimate = store_estimate(store)
    assert codes == count and len(store) == count
    assert reg.query("sip:user7@example.org") == ["sip:user7@10.0.0.7:5060;transport=udp"]
    clock.now += 3601
    t0 = time.process_time()
    loop.loop(0)  # the registrar's expiry timer fires
    cpu_expire = time.process_time() - t0
    dropped = count - len(store)
    gc.collect()
    rss2 = rss_bytes()
    reg.close()
    loop.close()
    return {
        "count": count,
        "rss_before": rss0,
        "rss_registered": rss1,
        "rss_after_expiry": rss2,
        "rss_per_registration": (rss1 - rss0) / count,
        "store_estimate_per_registration": estimate / count,
        "cpu_us_per_register": cpu_register / count * 1e6,
        "expired": dropped,
        "cpu_us_per_expired_binding": cpu_expire / max(dropped, 1) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    r = run(args.count)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    mib = 1 / (1 << 20)
    print(f"registrations held:          {r['count']:,}")
    print(
        f"RSS before / registered / after expiry: {r['rss_before'] * mib:.1f} / "
        f"{r['rss_registered'] * mib:.1f} / {r['rss_after_expiry'] * mib:.1f} MiB"
    )
    print(f"RSS per registration:        {r['rss_per_registration']:.0f} bytes")
    est = r["store_estimate_per_registration"]
    print(f"store's own size estimate:   {est:.0f} bytes per registration")
    print(f"CPU per REGISTER (parse + registrar): {r['cpu_us_per_register']:.1f} us")
    per = r["cpu_us_per_expired_binding"]
    print(f"expiry timer: {r['expired']:,} bindings dropped, {per:.2f} us each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
