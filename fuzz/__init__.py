"""Fuzz harnesses for netsip's parsers (atheris, coverage guided).

``harness_packet`` fuzzes :meth:`netsip.packet.Packet.new_from_string`,
``harness_framing`` the stream framer :func:`netsip.framing.frame`. Each module
has a ``check(data)`` function (libFuzzer's ``TestOneInput``) that raises
``AssertionError`` (or whatever escaped the code under test) when an invariant
is broken, and a ``main()`` that runs it under atheris. ``seeds`` builds the
seed corpora from ``tests/data/rfc4475`` and the test vectors. See
docs/robustness.md for how to run them and what they found.
"""
