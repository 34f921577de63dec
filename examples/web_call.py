"""A web app that places a SIP call when a URL is hit (aiohttp on netsip.aioua).

    python examples/web_call.py --from sip:web@127.0.0.1 --leg udp:127.0.0.1:5070
    curl 'http://127.0.0.1:8080/call?to=sip:bob@127.0.0.1:5080&seconds=3'

GET /call?to=URI[&seconds=N] calls URI, sends N seconds (default 2) of G.711
silence once the call is established, hangs up with BYE (unless the callee
hung up first) and answers with JSON::

    {"to": "sip:bob@...", "established": true, "seconds": 3.0, "ended_by": "us"}

A call that fails answers {"to": ..., "established": false, "error": ...}
with HTTP 400 (bad request), 502 (the callee refused: "code" is its SIP
status, or it could not be reached) or 504 (no answer within --ring-time).
The SIP user agent (:class:`netsip.aioua.UserAgent`) and the web server run
on the same asyncio loop: no thread. Needs aiohttp (``pip install
'netsip[web]'``). Net::SIP has no such example.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from netsip.aioua import RequestFailedError, UserAgent

#: 20 ms of G.711 PCMU silence (RFC 3551 4.5.14: 0xff encodes 0)
SILENCE = b"\xff" * 160
FRAMES_PER_SECOND = 50


@dataclass(slots=True)
class Settings:
    """What the app needs besides the user agent."""

    max_seconds: float = 30.0  # the longest call a request may ask for
    ring_time: float = 15.0  # how long to wait for the callee to answer


UA_KEY = web.AppKey("ua", UserAgent)
SETTINGS_KEY = web.AppKey("settings", Settings)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="from_", default="sip:web@127.0.0.1", help="our SIP URI")
    p.add_argument("-L", "--leg", default="udp:127.0.0.1:5070", help="SIP leg [proto:]ip[:port]")
    p.add_argument("-P", "--proxy", help="outgoing proxy host[:port]")
    p.add_argument("--http-host", default="127.0.0.1", help="address the web app listens on")
    p.add_argument("--http-port", type=int, default=8080, help="port the web app listens on")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest call allowed")
    p.add_argument("-T", "--ring-time", type=float, default=15.0, help="give up after S ringing")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    return p.parse_args(argv)


def error(to: str | None, status: int, message: str, **more: Any) -> web.Response:
    """The JSON answer of a call that did not take place."""
    body: dict[str, Any] = {"to": to, "established": False, "error": message, **more}
    return web.json_response(body, status=status)


def silence(_seq: int, _channel: int) -> bytes:
    """The RTP frame source: silence until the call ends (a source that ends
    first would make the call hang up by itself)."""
    return SILENCE


async def place_call(request: web.Request) -> web.Response:
    """GET /call?to=URI[&seconds=N]: call, send silence, hang up, report as JSON."""
    to = request.query.get("to")
    settings = request.app[SETTINGS_KEY]
    if not to:
        return error(to, 400, "the 'to' parameter (a SIP URI) is missing")
    try:
        seconds = float(request.query.get("seconds", "2"))
    except ValueError:
        return error(to, 400, "'seconds' is not a number")
    if not 0 <= seconds <= settings.max_seconds:
        return error(to, 400, f"'seconds' must be between 0 and {settings.max_seconds:g}")
    ua = request.app[UA_KEY]
    try:
        async with asyncio.timeout(settings.ring_time):  # a CANCEL if it was ringing
            call = await ua.invite(to, init_media=ua.simple.rtp("send_recv", silence))
    except RequestFailedError as exc:
        what = f"the callee answered {exc.code}" if exc.code else f"not reached (errno {exc.errno})"
        return error(to, 502, what, code=exc.code)
    except TimeoutError:
        return error(to, 504, f"no answer within {settings.ring_time:g} seconds")
    except ValueError as exc:  # a URI that cannot be called (logged by netsip)
        return error(to, 400, str(exc))
    start = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            await call.wait_closed()  # the callee may hang up first
    except TimeoutError:
        pass
    ended_by = "them" if call.closed else "us"
    if not call.closed:
        try:
            async with asyncio.timeout(settings.ring_time):
                await call.bye()
        except TimeoutError:
            pass  # the callee did not confirm: the call is over for us anyway
    return web.json_response(
        {
            "to": to,
            "established": True,
            "seconds": round(time.monotonic() - start, 3),
            "ended_by": ended_by,
        }
    )


def make_app(ua: UserAgent, settings: Settings | None = None) -> web.Application:
    """The web app; it starts ``ua`` (a :class:`UserAgent` not started yet) and closes it."""
    app = web.Application()
    app[UA_KEY] = ua
    app[SETTINGS_KEY] = settings or Settings()

    async def sip_agent(app: web.Application) -> AsyncIterator[None]:
        async with app[UA_KEY]:
            yield

    app.cleanup_ctx.append(sip_agent)
    app.router.add_get("/call", place_call)
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    ua = UserAgent(from_=args.from_, leg=args.leg, outgoing_proxy=args.proxy)
    app = make_app(ua, Settings(max_seconds=args.max_seconds, ring_time=args.ring_time))
    print(f"GET http://{args.http_host}:{args.http_port}/call?to=URI places a call", flush=True)
    web.run_app(app, host=args.http_host, port=args.http_port, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
