"""netsip on asyncio: AsyncioEventLoop (netsip.aio) and the awaitable UserAgent (netsip.aioua).

Every test runs its coroutine on a new asyncio loop (and on uvloop where it
says so, skipped when uvloop is not installed), bounded by ``asyncio.timeout``.
Real loopback sockets throughout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from netsip.aio import AsyncioEventLoop, AsyncioTimer, new_asyncio_loop
from netsip.aioua import AsyncCall, RequestFailedError, UserAgent
from netsip.eventloop import EV_READ, EV_WRITE, EventLoop
from netsip.simple import Call, Simple
from netsip.testing import open_fds, udp_socket
from netsip.util import Var

T = TypeVar("T")

KINDS = ["asyncio", "uvloop"]
BOUND = 20.0  # seconds: every coroutine of a test ends within this


def run(kind: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new asyncio loop of ``kind``, bounded, and close the loop."""
    if kind == "uvloop" and importlib.util.find_spec("uvloop") is None:
        coro.close()  # (never awaited otherwise: a warning in a later test)
        pytest.skip("uvloop is not installed (pip install 'netsip[uvloop]')")
    aloop = new_asyncio_loop(kind)

    async def bounded() -> T:
        async with asyncio.timeout(BOUND):
            return await coro

    try:
        return aloop.run_until_complete(bounded())
    finally:
        aloop.run_until_complete(aloop.shutdown_asyncgens())
        aloop.close()


async def until(cond: Callable[[], object], seconds: float = 5.0) -> None:
    """Yield to the loop until ``cond()`` is true (bounded)."""
    async with asyncio.timeout(seconds):
        while not cond():
            await asyncio.sleep(0.005)


def uri_of(agent: Simple, name: str) -> str:
    scheme, _, rest = agent.default_leg().contact.partition(":")
    return f"{scheme}:{name}@{rest}"


def collect_errors(aloop: asyncio.AbstractEventLoop) -> list[BaseException | None]:
    errors: list[BaseException | None] = []
    aloop.set_exception_handler(lambda _l, ctx: errors.append(ctx.get("exception")))
    return errors


# --------------------------------------------------------------- the loop


@pytest.mark.parametrize("kind", KINDS)
def test_fd_callbacks_are_level_triggered(kind: str) -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        a, b = socket.socketpair()
        calls: list[bytes] = []

        def readable(sock: socket.socket) -> None:
            # the first time the data is left unread: it is reported again
            calls.append(sock.recv(10) if calls else b"")

        with a, b:
            lp.add_fd(a, EV_READ, readable, "pair")
            b.send(b"hello")
            await lp.run(5, lambda: len(calls) >= 2)
            assert calls == [b"", b"hello"]
            assert lp.fd_count() == 1
            writable: list[socket.socket] = []
            lp.add_fd(a, EV_WRITE, writable.append)
            await lp.run(5, lambda: writable)
            assert writable[0] is a
            lp.del_fd(a, EV_WRITE)
            assert lp.fd_count() == 1
            lp.del_fd(a)
            assert lp.fd_count() == 0
            b.send(b"unheard")
            await lp.run(0.05)
            assert calls == [b"", b"hello"]
        lp.close()

    run(kind, main())


@pytest.mark.parametrize("kind", KINDS)
def test_add_fd_again_replaces_the_callback(kind: str) -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        a, b = socket.socketpair()
        first: list[bytes] = []
        second: list[bytes] = []
        with a, b:
            lp.add_fd(a, EV_READ, lambda s: first.append(s.recv(10)))
            lp.add_fd(a, EV_READ, lambda s: second.append(s.recv(10)))
            b.send(b"x")
            await lp.run(5, lambda: second)
            assert (first, second) == ([], [b"x"])
            lp.del_fd(a)
        lp.close()

    run(kind, main())


@pytest.mark.parametrize("kind", KINDS)
def test_timers_fire_in_order_repeat_and_cancel(kind: str) -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        fired: list[str] = []
        for name in "abc":
            lp.add_timer(0, lambda _t, n=name: fired.append(n))
        absolute = lp.add_timer(time.time() + 0.02, lambda _t: fired.append("abs"))
        assert absolute.when > 1e9
        ticks: list[AsyncioTimer] = []
        rep = lp.add_timer(0.01, ticks.append, repeat=0.01, name="tick")
        assert rep.repeat == 0.01
        gone = lp.add_timer(0.01, lambda _t: fired.append("cancelled"))
        gone.cancel()
        gone.cancel()  # idempotent
        assert lp.timer_count() == 5  # a, b, c, absolute and rep
        await lp.run(5, lambda: len(ticks) >= 3 and "abs" in fired)
        assert fired[:3] == ["a", "b", "c"]
        assert "cancelled" not in fired
        assert all(t is rep for t in ticks)
        rep.cancel()
        n = len(ticks)
        await lp.run(0.05)
        assert len(ticks) == n
        assert lp.timer_count() == 0
        lp.close()

    run(kind, main())


def test_timer_cancelled_from_its_callback_and_repeat_cleared() -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        count: list[int] = []

        def once_then_stop(timer: AsyncioTimer) -> None:
            count.append(1)
            if len(count) == 2:
                timer.repeat = None  # fires no more

        lp.add_timer(0, once_then_stop, repeat=0.01)
        await lp.run(5, lambda: len(count) >= 2)
        await lp.run(0.05)
        assert len(count) == 2
        assert lp.timer_count() == 0
        with pytest.raises(ValueError, match="repeat"):
            lp.add_timer(1, print, repeat=1e-9)
        with pytest.raises(ValueError, match="finite"):
            lp.add_timer(float("nan"), print)
        lp.close()

    run("asyncio", main())


def test_new_object_on_a_known_fd_number_keeps_the_other_direction() -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        a, b = socket.socketpair()
        read: list[bytes] = []
        wrote: list[object] = []
        with a, b:
            lp.add_fd(a.fileno(), EV_WRITE, wrote.append)
            lp.add_fd(a, EV_READ, lambda s: read.append(s.recv(10)))  # same number, an object
            b.send(b"x")
            await lp.run(5, lambda: read and wrote)
            assert read == [b"x"]
            assert wrote[-1] == a.fileno()
            assert lp.fd_count() == 1
            lp.del_fd(a)
            assert lp.fd_count() == 0
        lp.close()

    run("asyncio", main())


def test_bad_arguments_and_closed_fds() -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        with pytest.raises(ValueError, match="EV_READ"):
            lp.add_fd(0, 2, print)
        with pytest.raises(TypeError, match="not a file descriptor"):
            lp.add_fd(object(), EV_READ, print)  # type: ignore[arg-type]  # (the point)
        s = udp_socket()
        s.close()
        lp.add_fd(s, EV_READ, print)  # closed: logged and ignored
        assert lp.fd_count() == 0
        lp.del_fd(s)  # unknown: ignored
        with pytest.raises(TypeError, match="stop variable"):
            await lp.run(0, 42)  # type: ignore[arg-type]  # (the point)
        lp.close()

    run("asyncio", main())


@pytest.mark.parametrize("kind", KINDS)
def test_run_stop_variables_timeout_and_close(kind: str) -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        stop: Var[bool] = Var()
        lp.add_timer(0.01, stop)
        await lp.run(None, stop)  # a timer sets the Var
        assert stop.value
        await lp.run(None, stop)  # already true: returns at once

        flag: list[int] = []

        async def other_task() -> None:
            await asyncio.sleep(0.02)
            flag.append(1)  # not a netsip callback: run() polls the stop variables

        task = asyncio.create_task(other_task())
        await lp.run(None, lambda: flag)
        await task

        start = time.monotonic()
        await lp.run(0.05)
        assert time.monotonic() - start >= 0.04

        def raising() -> bool:
            raise KeyError("stopvar")

        lp.add_timer(0, print)
        with pytest.raises(KeyError, match="stopvar"):
            await lp.run(None, lambda: lp.timer_count() == 0 and raising())

        waiting = asyncio.create_task(lp.run())  # would wait forever ...
        await asyncio.sleep(0)
        lp.close()  # ... close ends it
        await waiting
        assert lp.closed
        with pytest.raises(RuntimeError, match="closed"):
            lp.add_timer(1, print)
        with pytest.raises(RuntimeError, match="closed"):
            await lp.run(0)
        lp.del_fd(0)  # ignored after close
        lp.close()  # idempotent

    run(kind, main())


def test_reset_drops_fds_and_timers() -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        a, b = socket.socketpair()
        fired: list[object] = []
        with a, b:
            lp.add_fd(a, EV_READ, fired.append)
            timer = lp.add_timer(0.01, fired.append, repeat=0.01)
            lp.reset()
            assert (lp.fd_count(), lp.timer_count()) == (0, 0)
            assert timer.cancelled
            b.send(b"x")
            await lp.run(0.05)
            assert fired == []
        lp.close()

    run("asyncio", main())


def test_loop_blocks_only_outside_a_running_asyncio_loop() -> None:
    # outside a coroutine: loop() runs its own asyncio loop (what the
    # parametrised test modules rely on)
    with AsyncioEventLoop() as lp:
        stop: Var[bool] = Var()
        lp.add_timer(0.01, stop)
        lp.loop(5, stop)
        assert stop.value
        assert isinstance(lp, EventLoop)

    # closed by a callback inside loop(): its own asyncio loop is closed after
    lp = AsyncioEventLoop()
    lp.add_timer(0, lambda _t: lp.close())
    lp.loop(5)
    assert lp.closed
    assert lp.aloop.is_closed()

    async def main() -> None:
        lp = AsyncioEventLoop()
        with pytest.raises(RuntimeError, match=r"await loop\.run"):
            lp.loop(1)
        with Simple(from_="sip:a@127.0.0.1", leg="udp:127.0.0.1:0", loop=lp) as ua:
            # Simple's blocking methods refuse before they send anything
            with pytest.raises(RuntimeError, match="cb_final"):
                ua.register(registrar="sip:127.0.0.1:9")
            with pytest.raises(RuntimeError, match="UserAgent"):
                ua.invite("sip:b@127.0.0.1:9")
            assert (ua.calls, len(ua.endpoint)) == ([], 0)
            call = Call(ua, "sip:b@127.0.0.1:9", {})
            with pytest.raises(RuntimeError, match="cannot block"):
                call.reinvite()
            assert call.context is None
        lp.close()

    run("asyncio", main())


@pytest.mark.parametrize("kind", KINDS)
def test_callback_exceptions_reach_the_handler_and_the_loop_goes_on(kind: str) -> None:
    async def main() -> None:
        errors = collect_errors(asyncio.get_running_loop())
        lp = AsyncioEventLoop()
        a, b = socket.socketpair()

        def bad_reader(sock: socket.socket) -> None:
            sock.recv(10)
            raise ValueError("fd callback")

        def bad_timer(_t: object) -> None:
            raise ZeroDivisionError("timer callback")

        with a, b:
            lp.add_fd(a, EV_READ, bad_reader)
            lp.add_timer(0, bad_timer)
            after: Var[bool] = Var()
            lp.add_timer(0.02, after)
            b.send(b"x")
            await lp.run(5, after)
            b.send(b"y")  # the fd is still watched after its callback raised
            await lp.run(5, lambda: len(errors) >= 3)
            lp.del_fd(a)
        assert sorted(type(e).__name__ for e in errors) == [
            "ValueError",
            "ValueError",
            "ZeroDivisionError",
        ]
        lp.close()

    run(kind, main())


@pytest.mark.parametrize("kind", KINDS)
def test_rfc3263_resolution_does_not_block_the_asyncio_loop(kind: str) -> None:
    pytest.importorskip("dns")
    from netsip.resolver import Resolver  # noqa: PLC0415  (needs dnspython)
    from tests.dnsserver import DNSServer  # noqa: PLC0415

    async def main() -> None:
        errors = collect_errors(asyncio.get_running_loop())
        lp = AsyncioEventLoop()
        zone: list[tuple[str, str, str]] = [
            ("_sip._udp.svc.test", "SRV", "0 0 5070 host.svc.test."),
            ("_sip._tcp.svc.test", "SRV", "0 0 5071 host.svc.test."),
            ("host.svc.test", "A", "127.0.0.5"),
        ]
        srv = DNSServer(lp, zone)
        srv.truncate.add("_sip._tcp.svc.test")  # that answer comes over TCP
        res = Resolver(lp, [srv.address])
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(ticker())
        got: list[object] = []
        res.resolve("svc.test", ("udp", "tcp"), got.append)
        await lp.run(5, lambda: got)
        other.cancel()
        result = got[0]
        assert isinstance(result, list)
        assert [(p, a.addr, a.port) for p, a in result] == [
            ("udp", "127.0.0.5", 5070),
            ("tcp", "127.0.0.5", 5071),
        ]
        assert ("tcp", "_sip._tcp.svc.test", "SRV") in srv.queries
        assert ticks > 0  # the other task ran while the queries were out
        res.close()
        srv.close()
        assert (lp.fd_count(), lp.timer_count()) == (0, 0)
        lp.close()
        assert errors == []

    run(kind, main())


# ------------------------------------------------------- Simple on asyncio


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_simple_call_between_two_agents_on_asyncio(kind: str, proto: str) -> None:
    async def main() -> None:
        errors = collect_errors(asyncio.get_running_loop())
        lp = AsyncioEventLoop()
        alice = Simple(from_="sip:alice@127.0.0.1", leg=f"{proto}:127.0.0.1:0", loop=lp)
        bob = Simple(from_="sip:bob@127.0.0.1", leg=f"{proto}:127.0.0.1:0", loop=lp)
        with alice, bob:
            bob_calls: list[Call] = []
            bob_bye: list[object] = []
            bob.listen(cb_established=lambda _s, c: bob_calls.append(c), recv_bye=bob_bye.append)
            final: list[str] = []
            call = alice.invite(uri_of(bob, "bob"), cb_final=lambda s, _c, _i: final.append(s))
            await lp.run(10, lambda: final and bob_calls)
            assert final == ["OK"]
            done: Var[bool] = Var()
            call.bye(cb_final=lambda _p: done.__setattr__("value", True))
            await lp.run(10, lambda: done and bob_bye)
            assert bob_bye
            await until(lambda: len(alice.endpoint) == 0 and len(bob.endpoint) == 0)
        lp.close()
        assert errors == []

    run(kind, main())


# ------------------------------------------------------- the awaitable UA


def agent(name: str, proto: str = "udp", **args: Any) -> UserAgent:
    return UserAgent(from_=f"sip:{name}@127.0.0.1", leg=f"{proto}:127.0.0.1:0", **args)


@pytest.mark.parametrize("kind", KINDS)
def test_user_agent_call_dtmf_and_bye(kind: str) -> None:
    async def main() -> None:
        errors = collect_errors(asyncio.get_running_loop())
        async with agent("alice") as alice, agent("bob") as bob:
            digits: list[str] = []
            closed: list[AsyncCall] = []

            async def answer() -> None:
                async for incoming in bob.incoming():
                    async for digit in incoming.dtmf_digits():
                        digits.append(digit)
                    closed.append(incoming)
                    return

            bob.listen()
            answering = asyncio.create_task(answer())
            # (DTMF goes out with a sending media session: silence around the digits)
            silence = iter([b"\xff" * 160] * 400)
            call = await alice.invite(
                uri_of(bob.simple, "bob"),
                init_media=alice.simple.rtp(
                    "media_send_recv", lambda _seq, _ch: next(silence, None)
                ),
            )
            assert not call.closed
            await call.dtmf("12#", methods="rfc2833")
            await until(lambda: len(digits) >= 3)
            await call.bye()
            assert call.closed
            await answering  # the callee's digit iterator ended with the call
            assert digits == ["1", "2", "#"]
            assert closed[0].closed
            await call.wait_closed()
            await until(lambda: len(alice.simple.endpoint) == len(bob.simple.endpoint) == 0)
        assert errors == []

    run(kind, main())


def test_user_agent_options_message_and_failures() -> None:
    async def main() -> None:
        async with agent("alice") as alice, agent("bob") as bob:
            messages: list[bytes] = []
            bob.listen()
            bob.simple.listen(cb_message=lambda _ua, req: messages.append(req.body()))
            to = uri_of(bob.simple, "bob")
            response = await alice.request("OPTIONS", to)
            assert response.code() == 200
            response = await alice.request(
                "MESSAGE", to, b"hello", headers={"content-type": "text/plain"}
            )
            assert response.code() == 200
            assert messages == [b"hello"]
            with pytest.raises(RequestFailedError) as failed:
                await alice.request("SUBSCRIBE", to)
            assert failed.value.code == 405
            assert len(alice.simple.endpoint) == 0

    run("asyncio", main())


def test_user_agent_register_and_unregister() -> None:
    async def main() -> None:
        lp = AsyncioEventLoop()
        with Simple(leg="udp:127.0.0.1:0", loop=lp) as server:
            server.create_registrar()
            registrar = server.default_leg().contact
            async with agent("alice", loop=lp) as alice:
                expires = await alice.register(registrar, expires=60)
                assert 0 < expires <= 60
                assert len(alice.simple.endpoint) == 1  # the registration, refreshing
                await alice.unregister()
                await until(lambda: len(alice.simple.endpoint) == 0)
            async with agent("alice", loop=lp) as alice, agent("bob", loop=lp) as bob:
                bob.listen()  # not a registrar: 405
                with pytest.raises(RequestFailedError) as failed:
                    await alice.register(bob.simple.default_leg().contact, expires=60)
                assert failed.value.code == 405
                assert len(alice.simple.endpoint) == 0
        lp.close()

    run("asyncio", main())


def test_user_agent_invite_refused() -> None:
    async def main() -> None:
        async with agent("alice") as alice, agent("bob") as bob:
            bob.listen(filter=lambda *_: False)  # every call refused: 403
            with pytest.raises(RequestFailedError) as failed:
                await alice.invite(uri_of(bob.simple, "bob"))
            assert failed.value.code == 403
            await until(lambda: len(alice.simple.endpoint) == 0)
            assert alice.simple.calls == []

    run("asyncio", main())


@pytest.mark.parametrize("what", ["options", "invite"])
def test_asyncio_timeout_leaves_nothing_behind(what: str) -> None:
    async def main() -> None:
        with udp_socket() as silent:  # a peer that never answers
            port = silent.getsockname()[1]
            async with agent("alice") as alice:
                lp = alice.loop
                base = (lp.fd_count(), lp.timer_count(), open_fds())
                to = f"sip:nobody@127.0.0.1:{port}"
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        if what == "options":
                            await alice.request("OPTIONS", to)
                        else:
                            await alice.invite(to)
                assert len(alice.simple.endpoint) == 0
                assert alice.simple.calls == []
                assert (lp.fd_count(), lp.timer_count(), open_fds()) == base

    run("asyncio", main())


def test_cancelling_a_ringing_invite_sends_cancel() -> None:
    async def main() -> None:
        async with agent("alice") as alice, agent("bob") as bob:
            bob_calls: list[Call] = []
            bob.listen(answer_after=None, provisional=180)  # rings until accepted
            ringing: list[int] = []
            task = asyncio.create_task(
                alice.invite(
                    uri_of(bob.simple, "bob"),
                    cb_preliminary=lambda _c, code, _p: ringing.append(code),
                )
            )
            await until(lambda: 180 in ringing)
            bob_calls.extend(bob.simple.calls)
            assert len(bob_calls) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the CANCEL reaches bob (his call ends with 487), alice's call ends
            await until(lambda: bob_calls[0].closed and len(alice.simple.endpoint) == 0)
            await until(lambda: not alice.simple.calls and not bob.simple.calls)

    run("asyncio", main())


def test_busy_task_beside_netsip_all_options_answered() -> None:
    async def main() -> None:
        errors = collect_errors(asyncio.get_running_loop())
        async with agent("alice") as alice, agent("bob") as bob:
            bob.listen()
            to = uri_of(bob.simple, "bob")
            chunks = 0
            stop = False

            async def busy() -> None:
                nonlocal chunks
                while not stop:
                    sum(i * i for i in range(20_000))  # CPU work, then yield
                    chunks += 1
                    await asyncio.sleep(0)

            worker = asyncio.create_task(busy())
            try:
                codes = [(await alice.request("OPTIONS", to)).code() for _ in range(30)]
            finally:
                stop = True
                await worker
            assert codes == [200] * 30
            assert chunks > 0  # the busy task ran meanwhile
        assert errors == []

    run("asyncio", main())


def test_user_agent_leaves_no_fd_or_context() -> None:
    async def main() -> None:
        before = open_fds()
        async with agent("alice", "tcp") as alice, agent("bob", "tcp") as bob:
            bob.listen()

            async def answer() -> None:
                async for incoming in bob.incoming():
                    await incoming.wait_closed()
                    return

            answering = asyncio.create_task(answer())
            call = await alice.invite(uri_of(bob.simple, "bob"))
            await call.bye()
            await answering
        assert open_fds() == before
        alice.close()  # idempotent
        assert open_fds() == before

    run("asyncio", main())


def test_user_agent_not_started() -> None:
    ua = agent("alice")
    with pytest.raises(RuntimeError, match="async with"):
        ua.simple  # noqa: B018  (the property raises)
    with pytest.raises(ValueError, match="cb_final"):
        run("asyncio", _invite_with(ua, cb_final=print))


async def _invite_with(ua: UserAgent, **args: Any) -> None:
    async with ua:
        await ua.invite("sip:x@127.0.0.1:9", **args)
