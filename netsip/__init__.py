"""netsip: Perl's Net::SIP ported to Python, and grown beyond it.

The layers, bottom to top: :mod:`netsip.util` (callbacks, addresses, SIP
header and URI helpers), :mod:`netsip.eventloop` (``EventLoop``),
:mod:`netsip.packet` (``Packet``, ``Request``, ``Response``),
:mod:`netsip.framing` (TCP stream framing), :mod:`netsip.socketpool`
(``SocketPool``), :mod:`netsip.leg` (``Leg``), :mod:`netsip.dispatcher`
(``Dispatcher``), :mod:`netsip.transaction` (``TransactionClient``),
:mod:`netsip.endpoint` (``Endpoint``), and the user agent: :mod:`netsip.sdp`,
:mod:`netsip.dtmf`, :mod:`netsip.rtp` and :mod:`netsip.simple` (``Simple``,
``Call``); the servers: :mod:`netsip.registrar`, :mod:`netsip.authorize`,
:mod:`netsip.proxy` (``StatelessProxy``), :mod:`netsip.stateful_proxy`
(``StatefulProxy``), :mod:`netsip.redirect`,
:mod:`netsip.chain` (``ReceiveChain``), :mod:`netsip.blocker` and
:mod:`netsip.dropper`; :mod:`netsip.flows` (``FlowTable``: clients
reached over their own connection, RFC 5626 and RFC 7118 for WebSocket
phones). The transports are ``udp``, ``tcp``, ``tls``, ``ws`` and ``wss``
(the last two need the ``ws`` extra). The asyncio layer,
:mod:`netsip.aio` and :mod:`netsip.aioua`, is imported by name. The
names re-exported here are the public API. :mod:`netsip.testing` holds
helpers for testing applications built on netsip (import it by name).
"""

from __future__ import annotations

from netsip._redisstore import RedisStore, RedisStoreError
from netsip.authorize import Authorize, users_from_file
from netsip.blocker import Blocker
from netsip.chain import ReceiveChain
from netsip.digest import HA1, NonceCounter, Verdict, make_challenge, verify
from netsip.dispatcher import Dispatcher, QueueEntry
from netsip.dropper import ByField, ByIPPort, Dropper
from netsip.dtmf import dtmf_extractor, dtmf_generator
from netsip.endpoint import Context, Endpoint
from netsip.eventloop import EV_READ, EV_WRITE, EventLoop, TimerEvent
from netsip.flows import FLOW_FAILED, Flow, FlowTable, FlowTokens
from netsip.framing import FramingError
from netsip.leg import Leg
from netsip.packet import Packet, PacketError, Request, Response
from netsip.proxy import StatelessProxy
from netsip.redirect import Redirect
from netsip.registrar import Binding, MemoryStore, Registrar, RegistrationStore
from netsip.rtp import media_recv_echo, media_send_recv
from netsip.sdp import SDP, SDPError
from netsip.simple import Call, Simple
from netsip.socketpool import SocketPool, get_settings, import_settings
from netsip.stateful_proxy import StatefulProxy
from netsip.transaction import ClientTransaction, TransactionClient
from netsip.util import Addr, NetSIPError, Var, invoke_callback

__version__ = "0.1.0"

__all__ = [
    "EV_READ",
    "EV_WRITE",
    "FLOW_FAILED",
    "HA1",
    "SDP",
    "Addr",
    "Authorize",
    "Binding",
    "Blocker",
    "ByField",
    "ByIPPort",
    "Call",
    "ClientTransaction",
    "Context",
    "Dispatcher",
    "Dropper",
    "Endpoint",
    "EventLoop",
    "Flow",
    "FlowTable",
    "FlowTokens",
    "FramingError",
    "Leg",
    "MemoryStore",
    "NetSIPError",
    "NonceCounter",
    "Packet",
    "PacketError",
    "QueueEntry",
    "ReceiveChain",
    "Redirect",
    "RedisStore",
    "RedisStoreError",
    "Registrar",
    "RegistrationStore",
    "Request",
    "Response",
    "SDPError",
    "Simple",
    "SocketPool",
    "StatefulProxy",
    "StatelessProxy",
    "TimerEvent",
    "TransactionClient",
    "Var",
    "Verdict",
    "__version__",
    "dtmf_extractor",
    "dtmf_generator",
    "get_settings",
    "import_settings",
    "invoke_callback",
    "make_challenge",
    "media_recv_echo",
    "media_send_recv",
    "users_from_file",
    "verify",
]
