"""Run a fuzz harness under atheris (libFuzzer).

Usage, from the repository root::

    python3 -m fuzz.run packet|framing [libFuzzer options] [corpus dirs]

The netsip modules are imported inside ``atheris.instrument_imports`` so only
they get coverage instrumentation (instrumenting the whole standard library
costs many seconds at start-up); the ``str`` hook lets libFuzzer learn the
literals the parsers compare against. Without corpus
directories the seed corpus is written to a temporary directory first.
Unless given, ``-max_len=65507`` (the largest UDP datagram) and
``-timeout=2`` (seconds per input) are added: a slow input counts as a
failure, as a crash does.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

TARGETS = ("packet", "framing")


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``argv[1]`` is the target, the rest goes to libFuzzer."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: python3 -m fuzz.run {'|'.join(TARGETS)} [libFuzzer args]")
    target = argv[1]
    args = [argv[0], *argv[2:]]

    import atheris  # noqa: PLC0415 - optional dependency (pip install netsip[fuzz])

    # The "RegEx" hook is left off: its pattern proxy does not take the
    # pos/endpos arguments the parsers pass to match() (atheris 3.0).
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["netsip", "fuzz"]):
        harness = importlib.import_module(f"fuzz.harness_{target}")
        seeds = importlib.import_module("fuzz.seeds")

    # every input as big as a UDP datagram can be, and a slow one is a
    # failure (libFuzzer's per-input timeout, in seconds)
    if not any(a.startswith("-max_len=") for a in args):
        args.append("-max_len=65507")
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=2")
    if not any(not a.startswith("-") for a in args[1:]):
        # no corpus given: start from the seeds
        tmp = Path(tempfile.mkdtemp(prefix=f"netsip-fuzz-{target}-"))
        make = seeds.packet_seeds if target == "packet" else seeds.framing_seeds
        seeds.write_corpus(tmp, make())
        args.append(str(tmp))

    atheris.Setup(args, harness.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
