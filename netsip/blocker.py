"""Port of Perl's ``Net::SIP::Blocker``: refuse requests by method.

``Blocker(block={"SUBSCRIBE": 405, "MESSAGE": "403 No messages"},
dispatcher=disp)`` answers every request of a blocked method with the
given code (and optional reason phrase) and reports it handled, so a
:class:`~netsip.chain.ReceiveChain` stops there. An ACK is swallowed when
INVITE is blocked (it acknowledges the error response the Blocker sent;
its retransmission is cancelled). Responses and other methods pass.

Differences from Net::SIP:

- a code may be given as an ``int`` as well as ``"DDD [text]"``; a bad
  code raises ``ValueError`` (Net::SIP croaks);
- a 405 gets the ``Allow`` header RFC 3261 8.2.1 requires when ``allow``
  (the methods the server does accept) is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from netsip._log import get_logger
from netsip.dispatcher import Dispatcher
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.util import Addr, NetSIPError

__all__ = ["Blocker"]

log = get_logger(__name__)

_CODE_RE = re.compile(r"([1-6][0-9][0-9])(?:\s+(.+))?", re.ASCII | re.DOTALL)


class Blocker:
    """Answer requests of blocked methods with an error.

    Args:
        block: method -> code: an ``int`` (300-699) or ``"DDD [reason]"``.
        dispatcher: sends the responses.
        allow: the methods the server accepts, sent as ``Allow`` with a 405.

    Raises:
        ValueError: an empty ``block`` or a code that is not ``DDD [text]``.
    """

    def __init__(
        self,
        block: Mapping[str, int | str],
        dispatcher: Dispatcher,
        *,
        allow: Iterable[str] | None = None,
    ) -> None:
        if not block:
            raise ValueError("no mapping between method and code")
        self.block: dict[str, tuple[int, str | None]] = {}
        for method, code in block.items():
            m = _CODE_RE.fullmatch(str(code).strip())
            if m is None or int(m.group(1)) < 300:
                raise ValueError(f"block code for {method} must be DDD [text], not {code!r}")
            self.block[method.upper()] = (int(m.group(1)), m.group(2))
        self.dispatcher = dispatcher
        self.allow = ", ".join(allow) if allow is not None else None

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> int | None:
        """Answer a blocked request; returns its code, None if not blocked."""
        if not isinstance(packet, Request):
            return None
        method = packet.method()
        if method == "ACK":
            invite = self.block.get("INVITE")
            if invite is None:
                return None
            # the ACK of our error response to INVITE: stop retransmitting it
            self.dispatcher.cancel_delivery(packet.tid())
            return invite[0]
        blocked = self.block.get(method)
        if blocked is None:
            return None
        code, msg = blocked
        log.debug("block %s from %s with %d", method, from_, code)
        headers = {"allow": self.allow} if code == 405 and self.allow else None
        try:
            response = packet.create_response(code, msg, headers=headers)
            self.dispatcher.deliver(response, leg=leg, dst_addr=from_)
        except (NetSIPError, OSError, ValueError) as exc:
            log.info("cannot answer blocked %s from %s: %s", method, from_, exc)
        return code
