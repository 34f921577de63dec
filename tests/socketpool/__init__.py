"""Tests for netsip.socketpool, one module per concern.

* ``test_core``: settings, UDP and TCP exchange, idle expiry, scale and
  lifecycle, per-connection shortcuts;
* ``test_ipv6``: address family mismatches, destination forms and callback
  shapes over ::1;
* ``test_batching``: UDP batch reads, responses held until the end of a
  batch, coalesced stream writes;
* ``test_limits``: slow and idle attackers, header and body limits, fd
  exhaustion on accept, write backpressure;
* ``test_faults``: resets at awkward moments, ICMP errors on UDP,
  exceptions raised by user callbacks;
* ``test_flood``: a UDP garbage flood and a soak of TCP connections,
  scaled down for CI (``benchmarks/bench_hardening.py`` runs them at full
  size).

TLS is in ``tests/test_tls.py``; the same streams through the parser's
shortcut and a pool are in ``tests/test_framing.py``.
"""
