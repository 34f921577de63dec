"""Port of Perl's ``Net::SIP::ReceiveChain``: several receivers, one after the other.

A :class:`ReceiveChain` is set as the dispatcher's receiver (or put in
another chain) and hands each packet to its objects in order until one
*handles* it, that is returns a true value from ``receive`` (a response
code, ``True``, ``-1`` ...). A typical server::

    chain = ReceiveChain([Authorize(...), Registrar(...), StatelessProxy(...)])
    dispatcher.set_receiver(chain)

An optional filter decides whether the chain looks at a packet at all:
``filter`` is a callback (``invoke_callback`` shapes) invoked with
``(packet, leg, from_)``; without it, ``methods`` (a list of method names)
lets only those methods in (a response counts as the method of its CSeq).

Differences from Net::SIP:

- an object in the chain may also be a callback (a callable, ``(func,
  *args)``, an object with ``run``), invoked with ``(packet, leg, from_)``;
  Net::SIP requires objects with a ``receive`` method;
- :class:`Receiver` is the typed protocol the server classes implement.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from netsip.leg import Leg
from netsip.packet import Packet
from netsip.util import Addr, invoke_callback

__all__ = ["ReceiveChain", "Receiver"]


@runtime_checkable
class Receiver(Protocol):
    """What ``Dispatcher.set_receiver`` and a chain accept: an object with ``receive``.

    ``receive`` returns a true value if it handled the packet fully (the
    chain then stops), a false one (None) to let the next object try.
    """

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> object:
        """Handle ``packet`` received on ``leg`` from ``from_``; true if it was handled fully."""
        ...


class ReceiveChain:
    """Hand packets to ``objects`` in order until one handles them.

    Args:
        objects: receivers (objects with ``receive``) or callbacks.
        filter: a callback ``(packet, leg, from_)``; the chain handles only
            packets for which it returns true.
        methods: without ``filter``, the methods the chain handles.
    """

    def __init__(
        self,
        objects: Iterable[object],
        filter: object = None,
        methods: Iterable[str] | None = None,
    ) -> None:
        self.objects: list[object] = list(objects)
        self.filter: object = filter
        self.methods: frozenset[str] | None = None
        if filter is None and methods is not None:
            self.methods = frozenset(m.upper() for m in methods)

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> object:
        """Pass ``packet`` along the chain.

        Returns:
            What the first object that handled the packet returned (true),
            or None if the filter refused it or no object handled it.
        """
        if self.filter is not None:
            if not invoke_callback(self.filter, packet, leg, from_):
                return None
        elif self.methods is not None and packet.method() not in self.methods:
            return None
        for obj in self.objects:
            meth = getattr(obj, "receive", None)
            if callable(meth):
                handled = meth(packet, leg, from_)
            else:
                handled = invoke_callback(obj, packet, leg, from_)
            if handled:
                return handled
        return None
