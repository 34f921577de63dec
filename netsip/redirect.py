"""Port of Perl's ``Net::SIP::Redirect``: answer requests with the registered contacts.

``Redirect(dispatcher=disp, registrar=reg)`` answers a request for an
address of record with ``302 Moved Temporarily`` listing the contacts the
registrar knows (RFC 3261 8.3, 21.3.3), or ``404 Not Found``. REGISTER is
left to the registrar (the next link of a chain), responses are ignored, a
CANCEL gets 200 (the 302 or 404 was the final answer already) and an ACK
(of the 302/404) is swallowed and stops that response's retransmission.

``registrar`` is anything with ``query(aor) -> list[str]``
(:class:`Locator`): a :class:`~netsip.registrar.Registrar` or a table of
the application's.

Differences from Net::SIP:

- the AOR given to ``query`` is the Request-URI in the canonical form of
  :func:`netsip.registrar.canonical_aor` (Net::SIP builds
  ``proto:user@domain`` from ``sip_uri2parts``); a Request-URI that is no
  SIP URI gets 416 (RFC 3261 8.2.2.1) instead of a lookup;
- the 404's reason phrase is ``Not Found`` (Net::SIP: ``Not found``);
- ``receive`` returns the code sent (Net::SIP too) and ``-1`` for an ACK.
"""

from __future__ import annotations

from typing import Protocol

from netsip._log import get_logger
from netsip.dispatcher import Dispatcher
from netsip.leg import Leg
from netsip.packet import Packet, Request
from netsip.registrar import canonical_aor
from netsip.util import Addr, NetSIPError

__all__ = ["Locator", "Redirect"]

log = get_logger(__name__)


class Locator(Protocol):
    """Where :class:`Redirect` finds contacts (a registrar)."""

    def query(self, aor: str) -> list[str]:
        """The contacts registered for ``aor`` (empty if none)."""
        ...


class Redirect:
    """Redirect requests to the contacts a registrar has for their Request-URI.

    Args:
        dispatcher: sends the responses.
        registrar: answers ``query(aor)`` with contact URIs.
    """

    def __init__(self, dispatcher: Dispatcher, registrar: Locator) -> None:
        self.dispatcher = dispatcher
        self.registrar = registrar

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> int | None:
        """Answer a request with 302, 404 (or 200 to CANCEL).

        Returns:
            The code sent; -1 for an ACK (handled, nothing sent); None for
            REGISTER and responses (not handled).
        """
        if not isinstance(packet, Request):
            return None
        method = packet.method()
        if method == "ACK":
            self.dispatcher.cancel_delivery(packet.tid())
            return -1
        if method == "REGISTER":
            return None
        if method == "CANCEL":
            response = packet.create_response(200)
        else:
            aor = canonical_aor(packet.uri())
            contacts = self.registrar.query(aor) if aor is not None else []
            if aor is None:
                response = packet.create_response(416, "Unsupported URI Scheme")
            elif contacts:
                response = packet.create_response(
                    302, "Moved Temporarily", headers={"contact": [f"<{c}>" for c in contacts]}
                )
            else:
                response = packet.create_response(404, "Not Found")
            log.debug("%s %s from %s: %d", method, aor, from_, response.code())
        try:
            self.dispatcher.deliver(response, leg=leg, dst_addr=from_)
        except (NetSIPError, OSError, ValueError) as exc:
            log.info("cannot answer %s from %s: %s", method, from_, exc)
        return response.code()
