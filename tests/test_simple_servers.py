"""Simple's server methods: create_registrar, create_stateless_proxy, create_chain.

Net::SIP's examples/test_registrar_and_proxy.pl in Python: a registrar and a
stateless proxy in one chain on one Simple, two user agents registering and
calling each other through it, with and without digest.
"""

from __future__ import annotations

from typing import Any

import pytest

from netsip import EventLoop
from netsip.authorize import Authorize
from netsip.chain import ReceiveChain
from netsip.proxy import StatelessProxy
from netsip.registrar import Registrar
from netsip.simple import Call, Simple
from netsip.stateful_proxy import StatefulProxy
from netsip.testing import drive

pytestmark = pytest.mark.both_loops

USERS = {"alice": "wonderland", "bob": "builder"}


def _hostport(ua: Simple) -> str:
    return ua.default_leg().contact.partition(":")[2]  # sip:HOST:PORT


def _phone(loop: EventLoop, user: str, server: Simple, **kw: Any) -> Simple:
    return Simple(
        from_=f"sip:{user}@example.com",
        leg="udp:127.0.0.1:0",
        loop=loop,
        outgoing_proxy=_hostport(server),
        registrar=_hostport(server),
        **kw,
    )


def _call_through(loop: EventLoop, alice: Simple, bob: Simple) -> None:
    """Bob answers with echo; Alice calls him by his AOR and hangs up."""
    answered: list[Call] = []

    def created(call: Call, *_rest: object) -> bool:
        answered.append(call)
        return True

    bob.listen(init_media=bob.rtp("media_recv_echo"), cb_create=created)
    final: list[str] = []
    call = alice.invite("sip:bob@example.com", cb_final=lambda status, *_: final.append(status))
    drive(loop, lambda: bool(final), what="the final response")
    assert final == ["OK"] and len(answered) == 1
    call.bye()
    drive(loop, lambda: call.closed and answered[0].closed, what="the BYE")


def test_registrar_and_proxy_in_a_chain(loop: EventLoop) -> None:
    """test_registrar_and_proxy.pl: create_chain([create_registrar(), create_stateless_proxy()])."""
    server = Simple(leg="udp:127.0.0.1:0", loop=loop)
    registrar = server.create_registrar()
    proxy = server.create_stateless_proxy()
    assert isinstance(registrar, Registrar) and isinstance(proxy, StatelessProxy)
    chain = server.create_chain([registrar, proxy])
    assert isinstance(chain, ReceiveChain)
    alice, bob = _phone(loop, "alice", server), _phone(loop, "bob", server)
    try:
        assert bob.register() is not None, bob.error()
        assert registrar.query("sip:bob@example.com")
        _call_through(loop, alice, bob)
        # nobody registered as carol: the proxy cannot resolve example.com
        info: list[object] = []
        alice.invite(
            "sip:carol@example.com", cb_final=lambda status, call, i: info.append(i.get("code"))
        )
        drive(loop, lambda: bool(info), what="carol's final response")
        assert info[0] in (404, 480, 503)
    finally:
        for ua in (alice, bob, server):
            ua.cleanup()


def test_registrar_with_digest(loop: EventLoop) -> None:
    """auth_* keys put an Authorize before the registrar, for REGISTER only."""
    server = Simple(leg="udp:127.0.0.1:0", loop=loop)
    chain = server.create_registrar(auth_user2pass=USERS, auth_realm="example.com")
    assert isinstance(chain, ReceiveChain)
    good = _phone(loop, "alice", server, auth=("alice", "wonderland"))
    bad = _phone(loop, "bob", server, auth=("bob", "wrong"))
    try:
        assert good.register() is not None, good.error()
        assert bad.register() is None
        assert "401" in (bad.error() or "")
    finally:
        for ua in (good, bad, server):
            ua.cleanup()


def test_proxy_with_digest_challenges_with_407(loop: EventLoop) -> None:
    """create_stateless_proxy(auth_*): 407 (i_am_proxy by default), the caller answers it."""
    server = Simple(leg="udp:127.0.0.1:0", loop=loop)
    registrar = Registrar(dispatcher=server.dispatcher)
    auth = server.create_auth(user2pass=USERS, i_am_proxy=True, realm="example.com")
    assert isinstance(auth, Authorize)
    proxy = StatelessProxy(dispatcher=server.dispatcher, lookup=registrar.query)
    server.create_chain([ReceiveChain([registrar], methods=["REGISTER"]), auth, proxy])
    alice = _phone(loop, "alice", server, auth=("alice", "wonderland"))
    bob = _phone(loop, "bob", server)
    stranger = _phone(loop, "eve", server)
    try:
        assert bob.register() is not None, bob.error()
        _call_through(loop, alice, bob)
        info: list[object] = []
        stranger.invite(
            "sip:bob@example.com", cb_final=lambda status, call, i: info.append(i.get("code"))
        )
        drive(loop, lambda: bool(info), what="the stranger's final response")
        assert info == [407]
    finally:
        for ua in (alice, bob, stranger, server):
            ua.cleanup()


def test_create_stateless_proxy_auth_is_407(loop: EventLoop) -> None:
    """The auth of create_stateless_proxy is a proxy's: 407 with Proxy-Authenticate."""
    server = Simple(leg="udp:127.0.0.1:0", loop=loop)
    chain = server.create_stateless_proxy(auth_user2pass=USERS)
    assert isinstance(chain, ReceiveChain)
    caller = _phone(loop, "eve", server)
    try:
        info: list[Any] = []
        caller.invite(
            "sip:bob@127.0.0.1:9", cb_final=lambda status, call, i: info.append(i.get("packet"))
        )
        drive(loop, lambda: bool(info), what="the challenge")
        assert info[0].code() == 407 and info[0].get_headers("proxy-authenticate")
    finally:
        caller.cleanup()
        server.cleanup()


def test_no_auth_keys_means_no_authorizer(loop: EventLoop) -> None:
    server = Simple(leg="udp:127.0.0.1:0", loop=loop)
    try:
        assert isinstance(server.create_stateless_proxy(), StatelessProxy)
        assert isinstance(server.create_registrar(), Registrar)
        assert server.listen() is server.endpoint
    finally:
        server.cleanup()


def test_create_stateful_proxy_with_the_registrars_lookup(loop: EventLoop) -> None:
    """create_stateful_proxy: the transaction-stateful proxy behind the registrar."""
    server = Simple(leg="udp:127.0.0.1:0", loop=loop)
    registrar = Registrar(dispatcher=server.dispatcher)
    proxy = server.create_stateful_proxy(lookup=registrar.lookup)
    assert isinstance(proxy, StatefulProxy)
    server.create_chain([ReceiveChain([registrar], methods=["REGISTER"]), proxy])
    alice, bob = _phone(loop, "alice", server), _phone(loop, "bob", server)
    try:
        assert bob.register() is not None, bob.error()
        _call_through(loop, alice, bob)
    finally:
        for ua in (alice, bob, server):
            ua.cleanup()
        proxy.close()
