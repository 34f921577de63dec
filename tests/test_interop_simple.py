"""The user agent (Simple) against live peers: Perl's examples, both directions.

- bench: Perl's ``bench/listen.pl`` answers and echoes RTP for
  ``examples/bench/call.py``; Perl's ``bench/call.pl`` (as
  ``tests/perl/bench_call.pl``, see its header) calls ``examples/bench/listen.py``.
- audio files: Perl's ``invite_and_send.pl`` sends two files (the second in a
  re-INVITE) to ``netsip answer --record``, and Perl's ``invite_and_recv.pl``
  records ``netsip answer --play``; netsip's ``examples/invite_and_send.py``
  (two files, re-INVITE) and ``examples/invite_and_recv.py`` call Perl's
  ``bin/answer_machine.pl`` (Perl's only example that answers calls with files: it
  records each media session to its own file and plays a welcome file). Both
  Perl examples above are callers, so the Perl callee is always answer_machine.pl.
  What arrives is compared with what was sent byte for byte: G.711 payloads
  pass through unchanged.
- third party call control: ``examples/3pcc.py`` connects answer_machine.pl
  (called first, without SDP) with ``netsip answer``.

Each peer runs on a free loopback port and is stopped after the test; a
missing peer skips (fails under NETSIP_REQUIRE_PEERS=1). Subprocesses are
bounded by timeouts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import (
    ROOT,
    LineReader,
    Listen,
    free_port,
    missing_peer,
    netsip_command,
    python_env,
    require_perl_netsip,
    stop_process,
)

pytestmark = [pytest.mark.interop]

PERL_EXAMPLES = Path("/usr/share/doc/libnet-sip-perl/examples")
PERL_BENCH = PERL_EXAMPLES / "bench"
EXAMPLES = ROOT / "examples"
WAIT = 30.0  # upper bound for a peer to bind or a run to end
BENCH = ("-N", "3", "-S", "1", "--duration", "3")  # 3 calls, 3 s, statistics every second

#: Perl's bench/call.pl, fixed to keep its calls and given -L (see its header)
PERL_BENCH_CALL = ROOT / "tests" / "perl" / "bench_call.pl"


def _require_simple() -> None:
    pytest.importorskip("netsip.simple", reason="netsip.simple is not there yet")


def _perl_unbuffered() -> list[str]:
    """perl running the script named next with stdout unbuffered (lines arrive as printed)."""
    return [require_perl_netsip(), "-e", "$| = 1; $0 = shift; do $0; die $@ if $@"]


def _perl_example(script: Path) -> list[str]:
    """The command line that runs Net::SIP's example ``script`` (unbuffered)."""
    command = _perl_unbuffered()
    if not script.exists():
        missing_peer(f"Net::SIP's {script}", "apt-get install libnet-sip-perl")
    return [*command, str(script)]


def _perl_bench(name: str) -> list[str]:
    return _perl_example(PERL_BENCH / name)


def _wait_bound(proc: subprocess.Popen[bytes], port: int) -> None:
    """Wait until ``proc`` has bound UDP ``port`` (seen with psutil): nothing to drive here."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="udp")
        except psutil.NoSuchProcess:
            conns = []
        if any(c.laddr and c.laddr.port == port for c in conns):
            return
        assert proc.poll() is None, f"exited with {proc.returncode} before binding {port}"
        assert time.monotonic() < deadline, f"did not bind {port} within {WAIT} s"
        time.sleep(0.02)


def test_perl_listen_echoes_netsip_bench_call() -> None:
    _require_simple()
    listen = _perl_bench("listen.pl")
    port = free_port()
    peer = subprocess.Popen(
        [*listen, "-L", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_bound(peer, port)
        res = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "bench" / "call.py"),
                "-P",
                f"127.0.0.1:{port}",
                *BENCH,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=python_env(),
            check=False,
        )
    finally:
        stop_process(peer, WAIT)
    m = re.search(r"total\s+\d+ pkt=(\d+)/(\d+)/(\d+)", res.stdout)
    assert m, (res.returncode, res.stdout, res.stderr)
    ok, lost = int(m.group(1)), int(m.group(2))
    assert ok > 0 and lost == 0, res.stdout
    assert res.returncode == 0, res.stderr


def test_perl_bench_call_against_netsip_listen() -> None:
    """Perl's bench/call.pl (tests/perl/bench_call.pl: its calls kept alive, -L) calls
    examples/bench/listen.py: 3 calls connect and call.pl's statistics count echoed packets."""
    _require_simple()
    call = [*_perl_unbuffered(), str(PERL_BENCH_CALL)]
    port = free_port()
    netsip = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "bench" / "listen.py"), "-L", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=python_env(),
    )
    caller: subprocess.Popen[bytes] | None = None
    try:
        assert netsip.stdout is not None
        LineReader(netsip.stdout.fileno(), WAIT).wait_for("^Listening")
        caller = subprocess.Popen(
            [*call, "-L", f"127.0.0.1:{free_port()}", "-P", f"127.0.0.1:{port}", "-N", "3",
             "-S", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert caller.stdout is not None
        reader = LineReader(caller.stdout.fileno(), WAIT)
        reader.wait_for("^All 3 calls connected")
        # call.pl runs until stopped; its statistics: seconds pkt=good/lost/ignored delay(ms)=...
        (m,) = reader.wait_for(r"^\s*\d+ pkt=([1-9]\d*)/(\d+)/(\d+) delay\(ms\)=[\d.]+/")
    finally:
        if caller is not None:
            stop_process(caller, WAIT)
        stop_process(netsip, WAIT)
    good, lost, ignored = map(int, m.groups())
    assert good > 0 and lost == 0 and ignored == 0, m.group(0)


# ------------------------------------------------------- audio files, both directions

FRAME = 160  # PCMU bytes per 20 ms packet; Perl sends whole frames of a file only
FILE_RUN = 20.0  # upper bound for one example run (a few seconds of audio)


def _pcmu(frames: int, step: int) -> bytes:
    """Raw PCMU that differs from frame to frame and holds no 0xFF (mu-law silence)."""
    return bytes((i * step + i // FRAME) % 255 for i in range(frames * FRAME))


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an example to its end (bounded); its output."""
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FILE_RUN,
        check=False,
        env=env,
    )


def _answer(tmp_path: Path, *args: str) -> tuple[Listen, int]:
    """``netsip answer --calls 1 ARGS`` on a free UDP port; its port once it listens."""
    proc = Listen(
        [],
        tmp_path,
        command=[*netsip_command(), "answer", "-l", "udp:127.0.0.1:0", "--calls", "1", *args],
    )
    return proc, proc.addresses(1)["udp"].port


def _answer_output(proc: Listen) -> str:
    """Wait for ``answer --calls 1`` to exit by itself; its stdout."""
    proc.returncode = proc.proc.wait(timeout=FILE_RUN)
    proc.err.drain()
    return proc.stdout_path.read_text()


def test_perl_invite_and_send_reinvite_to_netsip_answer_record(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    """invite_and_send.pl -S a -S b: b in a re-INVITE; answer records a + b exactly."""
    _require_simple()
    command = _perl_example(PERL_EXAMPLES / "invite_and_send.pl")
    a, b = _pcmu(30, 7), _pcmu(20, 13)
    (tmp_path / "a.pcmu").write_bytes(a)
    (tmp_path / "b.pcmu").write_bytes(b)
    record = tmp_path / "record.pcmu"
    srv, port = _answer(tmp_path, "--record", str(record))
    listen_factory.append(srv)
    res = _run(
        [*command, "-L", f"127.0.0.1:{free_port()}", "-S", str(tmp_path / "a.pcmu"),
         "-S", str(tmp_path / "b.pcmu"), "sip:perl@127.0.0.1", f"sip:answer@127.0.0.1:{port}"],
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = _answer_output(srv)
    assert srv.returncode == 0, out
    assert "call 1: BYE from the caller" in out, out
    assert "1 established, 1 ended (1 by the caller's BYE" in out, out
    got = record.read_bytes()
    assert len(got) == len(a + b), out
    assert got == a + b


def test_perl_invite_and_recv_records_netsip_answer_play(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    """invite_and_recv.pl -O file -T 2 records what answer --play sends: the file, then silence."""
    _require_simple()
    command = _perl_example(PERL_EXAMPLES / "invite_and_recv.pl")
    audio = _pcmu(30, 11)
    (tmp_path / "play.pcmu").write_bytes(audio)
    srv, port = _answer(tmp_path, "--play", str(tmp_path / "play.pcmu"))
    listen_factory.append(srv)
    outfile = tmp_path / "perl.pcmu"
    res = _run(
        [*command, "-L", f"127.0.0.1:{free_port()}", "-O", str(outfile), "-T", "2",
         "sip:perl@127.0.0.1", f"sip:answer@127.0.0.1:{port}"],
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = _answer_output(srv)
    assert srv.returncode == 0, out
    assert "call 1: BYE from the caller" in out, out
    got = outfile.read_bytes()
    assert got[: len(audio)] == audio
    # after the file netsip sends mu-law silence until Perl hangs up (-T 2)
    assert len(got) > len(audio), len(got)
    assert set(got[len(audio) :]) == {0xFF}


def _answer_machine(
    tmp_path: Path, welcome: bytes, *args: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Perl's bin/answer_machine.pl on a free port: it plays ``welcome`` (then repeats its
    last frame) and records each media session to its own file in the returned directory;
    ``args`` replace its ``-T 20`` (it hangs up after -T seconds)."""
    command = _perl_example(PERL_EXAMPLES / "bin" / "answer_machine.pl")
    (tmp_path / "welcome.pcmu").write_bytes(welcome)
    savedir = tmp_path / "machine"
    savedir.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [*command, "-W", str(tmp_path / "welcome.pcmu"), "-D", str(savedir),
         *(args or ("-T", "20")), f"sip:perl@127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_bound(proc, port)
    except BaseException:
        stop_process(proc, WAIT)
        raise
    return proc, port, savedir


def _recordings(savedir: Path) -> list[bytes]:
    """answer_machine.pl's files (named TIME_FROM_.pcmu-8000), oldest first."""
    files = sorted(savedir.iterdir(), key=lambda f: int(f.name.split("_", 1)[0]))
    return [f.read_bytes() for f in files]


def test_netsip_invite_and_send_reinvite_to_perl_answer_machine(tmp_path: Path) -> None:
    """examples/invite_and_send.py a b (b in a re-INVITE): Perl records a, then b, exactly.

    answer_machine.pl names its recording after time() in seconds and opens it anew
    for each media session (the INVITE, the re-INVITE): ``a`` lasts 2 s, so the two
    sessions get two files instead of one overwritten.
    """
    _require_simple()
    a, b = _pcmu(100, 7), _pcmu(20, 13)
    (tmp_path / "a.pcmu").write_bytes(a)
    (tmp_path / "b.pcmu").write_bytes(b)
    perl, port, savedir = _answer_machine(tmp_path, _pcmu(10, 3))
    try:
        res = _run(
            [sys.executable, str(EXAMPLES / "invite_and_send.py"), "sip:netsip@127.0.0.1",
             f"sip:perl@127.0.0.1:{port}", str(tmp_path / "a.pcmu"), str(tmp_path / "b.pcmu")],
            env=python_env(),
        )  # fmt: skip
    finally:
        stop_process(perl, WAIT)
    assert res.returncode == 0, (res.stdout, res.stderr)
    recorded = _recordings(savedir)
    assert [len(r) for r in recorded] == [len(a), len(b)]
    assert recorded == [a, b]


def test_netsip_invite_and_recv_records_perl_answer_machine(tmp_path: Path) -> None:
    """examples/invite_and_recv.py -O file -T 2 records answer_machine.pl's welcome file
    (then the last frame of it again and again, as answer_machine.pl does); it echoes
    what it gets (as the Perl example), and answer_machine.pl records that echo."""
    _require_simple()
    welcome = _pcmu(25, 5)
    perl, port, savedir = _answer_machine(tmp_path, welcome)
    outfile = tmp_path / "netsip.pcmu"
    try:
        res = _run(
            [sys.executable, str(EXAMPLES / "invite_and_recv.py"), "-O", str(outfile), "-T", "2",
             "sip:netsip@127.0.0.1", f"sip:perl@127.0.0.1:{port}"],
            env=python_env(),
        )  # fmt: skip
    finally:
        stop_process(perl, WAIT)
    assert res.returncode == 0, (res.stdout, res.stderr)
    got = outfile.read_bytes()
    assert got[: len(welcome)] == welcome
    tail = got[len(welcome) :]
    assert tail, "nothing after the welcome file"
    assert tail == welcome[-FRAME:] * (len(tail) // FRAME)
    (echoed,) = _recordings(savedir)
    assert echoed[: len(welcome)] == welcome


def test_netsip_3pcc_connects_perl_answer_machine_with_netsip_answer(
    listen_factory: list[Listen], tmp_path: Path
) -> None:
    """examples/3pcc.py calls Perl's answer_machine.pl first, without SDP (its offer comes
    in the 2xx, our answer in the ACK), then netsip answer with that offer; audio flows
    between the two directly; answer_machine.pl hangs up (-T 2) and its BYE is relayed."""
    _require_simple()
    welcome, audio = _pcmu(25, 3), _pcmu(25, 13)
    perl, perl_port, savedir = _answer_machine(tmp_path, welcome, "-T", "2")
    try:
        (tmp_path / "play.pcmu").write_bytes(audio)
        srv, port = _answer(
            tmp_path, "--play", str(tmp_path / "play.pcmu"), "--record", str(tmp_path / "rec")
        )
        listen_factory.append(srv)
        res = _run(
            [sys.executable, str(EXAMPLES / "3pcc.py"), f"127.0.0.1:{free_port()}",
             f"sip:perl@127.0.0.1:{perl_port}", f"sip:answer@127.0.0.1:{port}"],
            env=python_env(),
        )  # fmt: skip
    finally:
        stop_process(perl, WAIT)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "connected" in res.stdout.splitlines()
    assert f"BYE from sip:perl@127.0.0.1:{perl_port} relayed to" in res.stdout
    out = _answer_output(srv)
    assert srv.returncode == 0, out
    assert "call 1: BYE from the caller" in out, out
    # each side recorded the other's file first, byte for byte
    (perl_got,) = _recordings(savedir)
    assert perl_got[: len(audio)] == audio
    assert (tmp_path / "rec").read_bytes()[: len(welcome)] == welcome
