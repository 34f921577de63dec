"""An awaitable user agent: :class:`UserAgent` on :class:`~netsip.simple.Simple`.

Net::SIP has no such thing; this wraps the callback API of ``Simple`` in
coroutines, on an :class:`~netsip.aio.AsyncioEventLoop` (the running asyncio
loop)::

    async with UserAgent(from_="sip:alice@127.0.0.1", leg="127.0.0.1:5070") as ua:
        expires = await ua.register("sip:127.0.0.1:5060")
        response = await ua.request("OPTIONS", "sip:bob@127.0.0.1:5080")
        call = await ua.invite("sip:bob@127.0.0.1:5080")   # raises RequestFailedError on 4xx-6xx
        await call.dtmf("123#")
        await call.bye()

    async for call in ua.incoming():       # each call answered and established
        async for digit in call.dtmf_digits():   # ends when the call ends
            ...

Cancellation: cancelling a task that awaits :meth:`UserAgent.invite` (or an
``asyncio.timeout`` expiring) sends a CANCEL once the callee has answered
with a provisional response (RFC 3261 9.1); the call ends with the 487 that
follows. When nothing was heard from the callee yet, no CANCEL may be sent
(9.1): the call is forgotten locally at once, so no context, timer or fd
stays behind. A cancelled :meth:`UserAgent.request` or
:meth:`UserAgent.register` forgets its transaction the same way.

Differences from Net::SIP: all of it is new. Leaving ``async with`` cleans
up the calls locally (no BYE is sent: end calls with :meth:`AsyncCall.bye`
first), as :meth:`Simple.cleanup` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from netsip._base import NetSIPError
from netsip.aio import AsyncioEventLoop
from netsip.endpoint import Context, Endpoint
from netsip.packet import Packet, Response
from netsip.simple import Call, Simple

__all__ = ["AsyncCall", "RequestFailedError", "UserAgent"]

#: Simple.listen arguments the user agent sets itself
_RESERVED = frozenset({"cb_create", "cb_established", "cb_cleanup", "cb_dtmf"})


class RequestFailedError(NetSIPError):
    """A request failed: a final response >= 300 (``code``), or no response
    (``errno``: a timeout or a delivery error)."""

    def __init__(self, method: str, code: int = 0, errno: int = 0, packet: Packet | None = None):
        what = f"code {code}" if code else f"errno {errno}"
        super().__init__(f"{method} failed with {what}")
        self.method = method
        self.code = code
        self.errno = errno
        self.packet = packet

    @classmethod
    def of(cls, method: str, info: dict[str, Any]) -> RequestFailedError:
        """The error for a ``cb_final`` ``info`` dict (``code``, ``errno``, ``packet``)."""
        packet = info.get("packet")
        return cls(
            method,
            int(info.get("code") or 0),
            int(info.get("errno") or 0),
            packet if isinstance(packet, Packet) else None,
        )


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class AsyncCall:
    """One call of a :class:`UserAgent` (wraps a :class:`~netsip.simple.Call`)."""

    def __init__(self, ua: UserAgent) -> None:
        self.ua = ua
        self.call: Call | None = None
        self._digits: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed: asyncio.Future[None] = ua.loop.aloop.create_future()

    @property
    def closed(self) -> bool:
        """True once the call ended (BYE either way, a failure, or a cleanup)."""
        return self._closed.done()

    def _the_call(self) -> Call:
        if self.call is None:
            raise RuntimeError("the call has not started")
        return self.call

    async def bye(self) -> None:
        """End the call with BYE (a CANCEL before it is established) and wait for the outcome."""
        call = self._the_call()
        fut: asyncio.Future[None] = self.ua.loop.aloop.create_future()
        call.bye(cb_final=lambda *_: _settle(fut, None))
        if call.closed and not fut.done():
            return  # nothing to send: the call was over already
        await fut

    async def dtmf(self, digits: str, **args: Any) -> None:
        """Send DTMF ``digits`` (see :meth:`Call.dtmf`) and wait until they are sent."""
        fut: asyncio.Future[None] = self.ua.loop.aloop.create_future()
        self._the_call().dtmf(digits, **args, cb_final=lambda *_: _settle(fut, None))
        await fut

    async def request(self, method: str, body: bytes | str | None = None, **args: Any) -> Response:
        """Send a request in the call (INFO, MESSAGE, ...) and return its final response.

        Raises:
            RequestFailedError: a final response >= 300, or no response.
        """
        fut: asyncio.Future[tuple[str, dict[str, Any]]] = self.ua.loop.aloop.create_future()
        self._the_call().request(
            method, body, cb_final=lambda status, _c, info: _settle(fut, (status, info)), **args
        )
        status, info = await fut
        packet = info.get("packet")
        if status != "OK" or not isinstance(packet, Response):
            raise RequestFailedError(method, int(info.get("code") or 0), packet=packet)
        return packet

    async def dtmf_digits(self) -> AsyncIterator[str]:
        """The DTMF digits received, as they come; ends when the call ends."""
        while True:
            digit = await self._digits.get()
            if digit is None:
                self._digits.put_nowait(None)  # (for another iterator)
                return
            yield digit

    async def wait_closed(self) -> None:
        """Wait until the call has ended."""
        await asyncio.shield(self._closed)

    # the Call's callbacks
    def _on_dtmf(self, event: object, _duration: object) -> None:
        self._digits.put_nowait(str(event))

    def _on_cleanup(self, _call: object) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
            self._digits.put_nowait(None)

    def _abandon(self) -> None:
        """The task awaiting the INVITE was cancelled (RFC 3261 9.1)."""
        call = self.call
        if call is None or call.closed:
            return
        ctx = call.context
        heard = ctx is not None and any(
            t.method == "INVITE" and t.provisional for t in ctx.transactions
        )
        if heard:
            call.cancel()  # the 487 that follows ends the call
        else:
            call.cleanup()  # no CANCEL before a provisional response: forget the call

    def __repr__(self) -> str:
        return f"<AsyncCall {self.call!r}{' closed' if self.closed else ''}>"


class UserAgent:
    """An awaitable SIP user agent; use it as ``async with UserAgent(...) as ua``.

    Args:
        loop: the :class:`AsyncioEventLoop` to run on (default: a new one on
            the running asyncio loop, closed with the agent).
        **simple_args: the arguments of :class:`~netsip.simple.Simple`
            (``from_``, ``leg``, ``registrar``, ``auth``, ``outgoing_proxy``, ...).
    """

    def __init__(self, *, loop: AsyncioEventLoop | None = None, **simple_args: Any) -> None:
        self._loop_arg = loop
        self._simple_args = simple_args
        self._loop: AsyncioEventLoop | None = None
        self._simple: Simple | None = None
        self._incoming: asyncio.Queue[AsyncCall | None] | None = None
        self._calls: dict[int, AsyncCall] = {}

    @property
    def loop(self) -> AsyncioEventLoop:
        """The netsip loop (after ``async with`` or :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("the user agent is not started: use 'async with UserAgent(...)'")
        return self._loop

    @property
    def simple(self) -> Simple:
        """The :class:`Simple` underneath (for what this class does not wrap)."""
        if self._simple is None:
            raise RuntimeError("the user agent is not started: use 'async with UserAgent(...)'")
        return self._simple

    def start(self) -> UserAgent:
        """Create the loop and the agent (``async with`` does it); inside a coroutine."""
        if self._simple is None:
            self._loop = self._loop_arg or AsyncioEventLoop(asyncio.get_running_loop())
            self._simple = Simple(loop=self._loop, **self._simple_args)
        return self

    async def __aenter__(self) -> UserAgent:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Clean up the calls (no BYE), the agent, and the loop it created. Idempotent."""
        simple, self._simple = self._simple, None
        if simple is not None:
            simple.cleanup()
        if self._incoming is not None:
            self._incoming.put_nowait(None)
        if self._loop is not None and self._loop_arg is None:
            self._loop.close()

    # --------------------------------------------------------------- requests

    def _new_contexts(self, before: set[int]) -> list[Context]:
        return [c for c in self.simple.endpoint.contexts() if id(c) not in before]

    async def register(self, registrar: str | None = None, **args: Any) -> int:
        """Register (see :meth:`Simple.register`); returns the expires granted.

        The registration refreshes itself until :meth:`unregister` or the end
        of the agent.

        Raises:
            RequestFailedError: the registrar refused, or did not answer.
        """
        fut: asyncio.Future[tuple[str, dict[str, Any]]] = self.loop.aloop.create_future()
        endpoint = self.simple.endpoint
        before = {id(c) for c in endpoint.contexts()}
        if registrar is not None:
            args["registrar"] = registrar
        self.simple.register(cb_final=lambda status, info: _settle(fut, (status, info)), **args)
        made = self._new_contexts(before)
        try:
            status, info = await fut
        except asyncio.CancelledError:
            for ctx in made:
                endpoint.close_context(ctx)
            raise
        if status != "OK":
            for ctx in made:
                endpoint.close_context(ctx)
            raise RequestFailedError(
                "REGISTER",
                int(info.get("code") or 0),
                int(info.get("errno") or 0),
                info.get("packet"),
            )
        return int(info["expires"])

    async def unregister(self) -> None:
        """Remove every registration of this agent (``Expires: 0``) and wait for the answers."""
        endpoint = self.simple.endpoint
        waits: list[asyncio.Future[None]] = []
        for ctx in endpoint.contexts():
            fut: asyncio.Future[None] = self.loop.aloop.create_future()
            if endpoint.unregister(ctx, _final_only(fut)):
                waits.append(fut)
        if waits:
            await asyncio.gather(*waits)

    async def request(
        self, method: str, to: str, body: bytes | str | None = None, **args: Any
    ) -> Response:
        """Send a request outside a call (OPTIONS, MESSAGE, ...) and return its final response.

        Args:
            method: the method.
            to: the SIP URI (or address) to send it to.
            body: the body; ``headers`` and the other arguments of
                :meth:`Endpoint.new_request` go in ``args``.

        Raises:
            RequestFailedError: a final response >= 300, or no response (timeout).
        """
        simple = self.simple
        fut: asyncio.Future[tuple[int, int, Packet | None]] = self.loop.aloop.create_future()

        def done(
            _ep: Endpoint, _ctx: Context, err: int, code: int, packet: Any, _leg: Any, _f: Any
        ) -> None:
            if err or code >= 200:
                _settle(fut, (err, code, packet))

        ctx_args: dict[str, Any] = {"from_": simple.from_, "to": to}
        if simple.auth is not None:
            ctx_args["auth"] = simple.auth
        args.setdefault("leg", simple.leg_for(to))
        request = simple.endpoint.new_request(method, ctx_args, done, body, **args)
        try:
            err, code, packet = await fut
        except asyncio.CancelledError:
            callid = request.callid()
            if callid is not None:
                simple.endpoint.close_context(callid)
            raise
        if err or code >= 300 or not isinstance(packet, Response):
            raise RequestFailedError(method, code, err, packet)
        return packet

    # ------------------------------------------------------------------ calls

    def _track(self, acall: AsyncCall, call: Call) -> None:
        acall.call = call
        self._calls[id(call)] = acall

    def _on_cleanup(self, call: Call) -> None:
        acall = self._calls.pop(id(call), None)
        if acall is not None:
            acall._on_cleanup(call)

    async def invite(self, to: str, **args: Any) -> AsyncCall:
        """Call ``to`` and wait until the call is established.

        ``args`` are the call parameters (see :class:`~netsip.simple.Call`),
        without ``cb_final``, ``cb_dtmf`` and ``cb_cleanup`` (this class uses them).

        Raises:
            RequestFailedError: the call failed (a final response >= 300, or none).
            ValueError: bad arguments, or the INVITE could not be sent.
            asyncio.CancelledError: the task was cancelled (see the module docstring).
        """
        reserved = _RESERVED.intersection(args) | ({"cb_final"} & set(args))
        if reserved:
            raise ValueError(f"UserAgent.invite sets {sorted(reserved)} itself")
        acall = AsyncCall(self)
        fut: asyncio.Future[tuple[str, dict[str, Any]]] = self.loop.aloop.create_future()
        call = self.simple.invite(
            to,
            cb_final=lambda status, _c, info: _settle(fut, (status, info)),
            cb_dtmf=acall._on_dtmf,
            cb_cleanup=self._on_cleanup,
            **args,
        )
        self._track(acall, call)
        if call.context is None:  # the INVITE was not sent (logged by the call)
            error = call.error
            call.cleanup()
            raise ValueError(f"INVITE not sent: {error}")
        try:
            status, info = await fut
        except asyncio.CancelledError:
            acall._abandon()
            raise
        if status != "OK":
            call.cleanup()
            raise RequestFailedError(
                "INVITE",
                int(info.get("code") or 0),
                int(info.get("errno") or 0),
                info.get("packet"),
            )
        return acall

    def listen(self, **args: Any) -> None:
        """Accept incoming calls (see :meth:`Simple.listen`); :meth:`incoming` yields them.

        ``args`` are the call parameters of the incoming calls (``answer_after``,
        ``init_media``, ``filter``, ...), without the callbacks this class uses.
        """
        reserved = _RESERVED.intersection(args)
        if reserved:
            raise ValueError(f"UserAgent.listen sets {sorted(reserved)} itself")
        if self._incoming is None:
            self._incoming = asyncio.Queue()
        queue = self._incoming

        def created(call: Call, *_: object) -> bool:
            acall = AsyncCall(self)
            self._track(acall, call)
            call.param["cb_dtmf"] = acall._on_dtmf
            return True

        def established(_status: object, call: Call) -> None:
            acall = self._calls.get(id(call))
            if acall is not None:
                queue.put_nowait(acall)

        self.simple.listen(
            cb_create=created, cb_established=established, cb_cleanup=self._on_cleanup, **args
        )

    async def incoming(self) -> AsyncIterator[AsyncCall]:
        """The incoming calls, each once it is established; ends when the agent closes.

        Calls :meth:`listen` (with its defaults) unless it was called.
        """
        if self._incoming is None:
            self.listen()
        queue = self._incoming
        assert queue is not None
        while True:
            acall = await queue.get()
            if acall is None:
                queue.put_nowait(None)  # (for another iterator)
                return
            yield acall


def _final_only(fut: asyncio.Future[None]) -> Callable[..., None]:
    """An endpoint callback that settles ``fut`` on the final outcome."""

    def callback(*args: Any) -> None:
        err, code = args[2], args[3]
        if err or code >= 200:
            _settle(fut, None)

    return callback
