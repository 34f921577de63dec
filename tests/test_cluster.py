"""A netsip cluster behind Kamailio: two ``netsip proxy --store redis://`` nodes (live peers).

Kamailio (``examples/cluster/kamailio.cfg``: the ``dispatcher`` module,
round robin, OPTIONS probes every 2 s, failover on a timeout) sits in
front of two ``netsip proxy -v --store redis://...`` processes that share
one ``redis-server``. netsip user agents register and call through
Kamailio only: a callee registered through one node is found by the other
(the shared store). Then one node is killed (SIGKILL, as a crash): the
calls go on through the other, those made once Kamailio's probe has seen
the node down need no failover at all, and every registration is still
there (in Redis, and each callee can still be called).

Which node served a request is read from the nodes' ``-v`` lines; where
Kamailio sent it, and when it noticed the dead node, from its log
(``-A LOG_ROUTING``, ``event_route[dispatcher:dst-down]``). Everything runs
on free loopback ports and is stopped afterwards. Skipped without
``kamailio`` or ``redis-server``/redis-py unless ``NETSIP_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from netsip._redisstore import RedisStore
from netsip.eventloop import EventLoop
from netsip.simple import Call, Simple
from netsip.testing import drive
from netsip.util import Addr
from tests.support import (
    ROOT,
    Kamailio,
    Listen,
    RedisServer,
    free_udp_tcp_port,
    netsip_command,
    require_kamailio,
)
from tests.test_cli_proxy import answer_calls, call, phone, summary

pytestmark = pytest.mark.interop

CONFIG = ROOT / "examples" / "cluster" / "kamailio.cfg"
CALLEES = 4  # users registered through Kamailio (round robin: 2 per node)
ROUNDS = 2  # calls to every callee before and after the crash
#: bounded real-time waits: a probe every 2 s plus a 1.5 s timeout to notice
#: a dead node, on a loaded 2-CPU machine
DETECT = 15.0


class ClusterKamailio(Kamailio):
    """Kamailio with ``examples/cluster/kamailio.cfg`` in front of ``nodes``.

    The dispatcher list (set 1: every node) is written to ``tmp``; the
    config is used as a user would use it: ``-l`` for the sockets, ``-A``
    for the list, ``-L`` for the module directory.
    """

    def __init__(self, tmp: Path, nodes: Sequence[Addr]) -> None:
        binary, mpath = require_kamailio()
        self.port = free_udp_tcp_port()
        dslist = tmp / "dispatcher.list"
        dslist.write_text("".join(f"1 sip:{a.addr}:{a.port}\n" for a in nodes))
        rundir = tmp / "kamailio-run"
        rundir.mkdir()
        self.log = tmp / "kamailio.log"
        args = [binary, "-f", str(CONFIG), "-L", mpath, "-DD", "-E", "-m", "32", "-M", "8"]
        args += ["-Y", str(rundir), "-A", f'DSLIST="{dslist}"', "-A", "LOG_ROUTING"]
        args += ["-l", f"udp:127.0.0.1:{self.port}", "-l", f"tcp:127.0.0.1:{self.port}"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    @property
    def addr(self) -> Addr:
        return Addr.parse(f"127.0.0.1:{self.port}")

    def lines(self, pattern: str) -> list[str]:
        """The lines of its log that match ``pattern``."""
        return re.findall(pattern, self.log.read_text(errors="replace"), re.M)

    def state(self, node: Addr) -> str | None:
        """What its probes said last about ``node``: "up", "down" or None (nothing yet)."""
        said = self.lines(rf"netsip node (up|down): sip:127\.0\.0\.1:{node.port}$")
        return said[-1] if said else None

    def routes(self, method: str) -> list[tuple[str, int]]:
        """(To URI, node port) of every ``method`` relayed to a node, in order."""
        rx = rf"netsip route: {method} (\S+) -> sip:127\.0\.0\.1:(\d+)$"
        return [(m[0], int(m[1])) for m in re.findall(rx, self.log.read_text(), re.M)]


class Node:
    """One ``netsip proxy -v --store URL --domain example.com`` on a free UDP port.

    With ``--domain`` a user nobody registered gets 480 (not a search in DNS).
    """

    def __init__(self, tmp: Path, store: str, port: int = 0, *args: str) -> None:
        listen = f"udp:127.0.0.1:{port}"
        command = [*netsip_command(), "proxy", "-v", "-l", listen, "--store", store]
        command += ["--domain", "example.com", *args]
        self.args = args
        self.proc = Listen([], tmp, command=command)
        self.addr = self.proc.addresses(1)["udp"]

    def served(self, method: str) -> int:
        """How many ``method`` requests it has received (its ``-v`` lines)."""
        text = self.proc.stdout_path.read_text()
        return len(re.findall(rf"^{method} \S+ from ", text, re.M))

    def kill(self) -> None:
        """SIGKILL (a crash) and wait until it is gone."""
        self.proc.proc.kill()
        self.proc.proc.wait(timeout=DETECT)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture(params=["stateless", "stateful"])
def nodes(
    tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest
) -> Iterator[list[Node]]:
    """Two nodes, stateless or ``--stateful``."""
    args = ["--stateful"] if request.param == "stateful" else []
    started: list[Node] = []
    try:
        started += [Node(tmp_path, redis_server.url, 0, *args) for _ in range(2)]
        yield started
    finally:
        for node in started:
            node.proc.close()


@pytest.fixture
def kamailio(tmp_path: Path, nodes: list[Node]) -> Iterator[ClusterKamailio]:
    k = ClusterKamailio(tmp_path, [n.addr for n in nodes])
    yield k
    k.close()


def call_and_hang_up(loop: EventLoop, caller: Simple, to: str) -> None:
    """A call through the cluster that must be answered; then BYE."""
    status, code, c = call(loop, caller, to)
    assert status == "OK", (to, status, code, caller.error())
    hang_up(loop, c)


def hang_up(loop: EventLoop, c: Call) -> None:
    c.bye()
    drive(loop, lambda: c.closed, seconds=10, what="the BYE")


def register_all(loop: EventLoop, at: Addr, answered: list[Call]) -> tuple[list[Simple], Simple]:
    """The callees (registered through ``at``, answering) and a caller."""
    callees = [phone(loop, f"sip:u{i}@example.com", at) for i in range(CALLEES)]
    for ua in callees:
        assert ua.register() is not None, ua.error()
        answer_calls(ua, answered)
    return callees, phone(loop, "sip:alice@example.com", at)


def registered(url: str) -> set[str]:
    store = RedisStore(url)
    try:
        return set(store.aors())
    finally:
        store.close()


def test_cluster_behind_kamailio_survives_a_dead_node(
    loop: EventLoop,
    redis_server: RedisServer,
    nodes: list[Node],
    kamailio: ClusterKamailio,
) -> None:
    """Register and call through Kamailio over 2 nodes; kill one: calls go on, nothing lost."""
    # Kamailio probes both nodes with OPTIONS (and they answer: they stay active)
    drive(
        loop,
        lambda: all(n.served("OPTIONS") >= 1 for n in nodes),
        seconds=DETECT,
        what="Kamailio's first OPTIONS probe of each node",
    )
    aors = [f"sip:u{i}@example.com" for i in range(CALLEES)]
    answered: list[Call] = []
    dead, alive = nodes
    callees, alice = register_all(loop, kamailio.addr, answered)
    try:
        # round robin: each node got registrations, and calls to users
        # registered through the other node (found in Redis: the callees are
        # called in a rotated order so that calls cross over)
        for _ in range(ROUNDS):
            for aor in aors[1:] + aors[:1]:
                call_and_hang_up(loop, alice, aor)
        assert len(answered) == ROUNDS * CALLEES
        registered_at = dict(kamailio.routes("REGISTER"))
        assert sorted(registered_at) == aors
        crossed = [to for to, node in kamailio.routes("INVITE") if node != registered_at[to]]
        assert len(crossed) >= CALLEES, kamailio.routes("INVITE")
        for n in nodes:
            assert n.served("REGISTER") >= 1 and n.served("INVITE") >= 1, n.proc.stdout_path
        assert sum(n.served("INVITE") for n in nodes) == ROUNDS * CALLEES
        assert registered(redis_server.url) == set(aors)

        # a call set up through the node that is going to die (its route
        # set names it), still up at the crash
        before = len(answered)
        held = None
        for aor in aors:
            status, code, c = call(loop, alice, aor)
            assert status == "OK", (aor, status, code)
            if kamailio.routes("INVITE")[-1][1] == dead.addr.port:
                held, held_callee = c, answered[-1]
                break
            hang_up(loop, c)
        assert held is not None
        answered[before:] = []

        dead.kill()
        # calls right after the crash: any sent to the dead node times out
        # at Kamailio and goes to the other one (failure_route)
        for aor in aors:
            call_and_hang_up(loop, alice, aor)
        drive(loop, lambda: kamailio.state(dead.addr) == "down", seconds=DETECT, what="the probe")
        failovers = len(kamailio.lines(r"netsip node failed: "))
        invites = alive.served("INVITE")
        # calls once the probe has seen the node down: straight to the live
        # one; every callee is still registered, whichever node took its REGISTER
        for _ in range(ROUNDS):
            for aor in aors:
                call_and_hang_up(loop, alice, aor)
        assert len(answered) == (2 * ROUNDS + 1) * CALLEES
        assert alive.served("INVITE") == invites + ROUNDS * CALLEES
        assert len(kamailio.lines(r"netsip node failed: ")) == failovers
        assert registered(redis_server.url) == set(aors)
        # the cost: the call held through the dead node cannot be ended
        # through it (Kamailio times out), the callee never hears the BYE
        bye: list[object] = []
        held.bye(cb_final=bye.append)
        drive(loop, lambda: bool(bye), seconds=DETECT, what="the BYE through the dead node")
        assert held.closed and not held_callee.closed
    finally:
        for ua in [*callees, alice]:
            ua.cleanup()
    out = alive.proc.stop()
    assert alive.proc.returncode == 0, out
    methods, _responses, users = summary(out)
    assert users == CALLEES and methods["INVITE"] == alive.served("INVITE")


def test_node_restarted_is_back_in_rotation(
    loop: EventLoop,
    tmp_path: Path,
    redis_server: RedisServer,
    nodes: list[Node],
    kamailio: ClusterKamailio,
) -> None:
    """A node killed and started again on its port: the probe puts it back, it gets calls."""
    dead = nodes[0]
    port = dead.addr.port
    dead.kill()
    drive(loop, lambda: kamailio.state(dead.addr) == "down", seconds=DETECT, what="the probe")
    answered: list[Call] = []
    callees, alice = register_all(loop, kamailio.addr, answered)
    try:
        # the node is out: the other one takes every registration
        assert nodes[1].served("REGISTER") == CALLEES
        back = Node(tmp_path, redis_server.url, port, *dead.args)
        nodes.append(back)  # (stopped by the fixture)
        drive(loop, lambda: kamailio.state(back.addr) == "up", seconds=DETECT, what="the probe")
        for i in range(CALLEES):
            call_and_hang_up(loop, alice, f"sip:u{i}@example.com")
        # round robin again: half the calls through the new process, which
        # finds the users registered through the other one in Redis
        assert back.served("INVITE") == nodes[1].served("INVITE") == CALLEES // 2
        assert len(answered) == CALLEES
    finally:
        for ua in [*callees, alice]:
            ua.cleanup()


def test_example_config_checks(tmp_path: Path) -> None:
    """The config of docs/cluster.md passes ``kamailio -c``; its list is in the tests' format.

    (``kamailio -c`` does not read the list: the live tests above do, in the
    format they write.)
    """
    binary, mpath = require_kamailio()
    dslist = CONFIG.with_name("dispatcher.list")
    args = [binary, "-c", "-f", str(CONFIG), "-L", mpath, "-A", f'DSLIST="{dslist}"']
    args += ["-l", f"udp:127.0.0.1:{free_udp_tcp_port()}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "config file ok" in done.stderr.lower(), done.stderr
    lines = [x for x in dslist.read_text().splitlines() if x and not x.startswith("#")]
    assert lines and all(re.fullmatch(r"1 sip:127\.0\.0\.1:\d+", x) for x in lines), lines
