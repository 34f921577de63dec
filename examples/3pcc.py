"""Third party call control: connect FROM with TO, RFC 3725 4.1 Flow I (Net::SIP's 3pcc.pl).

    python examples/3pcc.py 127.0.0.1:5090 sip:me@127.0.0.1:5070 sip:me@127.0.0.1:5080

The controller listens on LADDR and talks to both parties itself (RFC 3725 4.1):

1. INVITE FROM without SDP; FROM's 2xx carries its offer;
2. INVITE TO with that offer; TO's 2xx carries the answer;
3. ACK TO, and ACK FROM with TO's answer (RFC 3261 13.2.1: the answer to an offer
   in a 2xx goes in the ACK).

Each party sees the controller as the other party (From/To name the other one) and
as its remote target (Contact), so the media flows between FROM and TO directly
while their requests (the BYE that ends the call) come to the controller, which
relays them into the other call; their responses go back the same way. The program
ends after the response to a BYE: exit 0; 1 if a party did not answer with 2xx.
One line on stdout per step.

Differences from Net::SIP's 3pcc.pl:

- Perl keeps no state: FROM and TO travel in the Call-ID (with ``|`` and two ``@``,
  which RFC 3261 25.1 does not allow in a Call-ID; netsip's parser refuses them), and
  requests are relayed with the From/To tags of the call they came from. A party that
  checks the tags of in-dialog requests (RFC 3261 12.2.2; netsip does) answers such a
  BYE, and the ACK carrying the answer, with 481 or drops them. Here the two calls
  are two small records (Call-ID, our tag, the party's tag and Contact) and relayed
  requests and responses get the tags of the call they enter.
- Our INVITEs have a From tag and Max-Forwards (RFC 3261 8.1.1.3, 8.1.1.6); the ACKs
  of the 2xx go to the party's Contact (12.2.1.1) with a CSeq of the INVITE's
  number (13.2.2.4); a failed second INVITE ends the first call with ACK and BYE
  (Perl sends a CANCEL for a call that was answered already).
- Requests other than BYE and CANCEL get 501 (Perl drops them silently); a BYE
  while the other party is not connected (it refused) is answered 200 here, not
  relayed. -d is a flag (logging at DEBUG level).
- As in Perl, a relayed request's CSeq number is raised by 20 (our CSeq space in the
  other call) and the party's own number rides in a ``cseq`` parameter of its Via,
  where the response finds it again.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from dataclasses import dataclass

from netsip.dispatcher import Dispatcher
from netsip.eventloop import EventLoop
from netsip.leg import Leg
from netsip.packet import Packet, Request, Response
from netsip.util import Addr, Var, sip_hdrval2parts, sip_parts2hdrval

log = logging.getLogger("3pcc")

#: relayed requests' CSeq numbers are raised by this, above what we used ourselves
CSEQ_OFFSET = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("laddr", metavar="LADDR", help="local ip:port of the controller")
    p.add_argument("from_", metavar="FROM", help="the party called first (SIP URI)")
    p.add_argument("to", metavar="TO", help="the party called with FROM's offer (SIP URI)")
    p.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    return p.parse_args(argv)


def _tag_of(value: str | None) -> str | None:
    if not value:
        return None
    return sip_hdrval2parts("from", value)[1].get("tag")


def _with_tag(key: str, value: str, tag: str | None) -> str:
    data, params = sip_hdrval2parts(key, value)
    if tag is None:
        params.pop("tag", None)
    else:
        params["tag"] = tag
    return sip_parts2hdrval(key, data, params)


def _contact_uri(value: str | None) -> str | None:
    """The URI of a Contact value (``"x" <sip:a@h>;p=1`` -> ``sip:a@h``)."""
    if not value:
        return None
    data = sip_hdrval2parts("contact", value)[0]
    if "<" in data:
        data = data.partition("<")[2].partition(">")[0]
    return data or None


@dataclass(slots=True)
class Dialog:
    """One of the two calls: the controller and one party (``party``), where
    the controller poses as ``us`` (the other party's address)."""

    party: str
    us: str
    callid: str
    tag: str  # ours
    peer_tag: str | None = None  # the party's (To tag of its 2xx)
    target: str | None = None  # the party's Contact (RFC 3261 12.1.2)
    invite: Request | None = None
    answer: Response | None = None  # the party's 2xx

    def request(self, method: str, cseq: int, body: bytes = b"", ctype: str = "") -> Request:
        """A request of ours in this call (to the party's Contact once known)."""
        headers: dict[str, str] = {
            "from": f"<{self.us}>;tag={self.tag}",
            "to": f"<{self.party}>",
            "call-id": self.callid,
            "cseq": f"{cseq} {method}",
            "max-forwards": "70",
        }
        if self.answer is not None:
            headers["to"] = self.answer.get_header("to") or headers["to"]
        if ctype:
            headers["content-type"] = ctype
        return Request(method, self.target or self.party, headers, body)


class ThirdPartyCall:
    """Connects ``from_`` and ``to`` (RFC 3725 4.1); ``done`` is set at the end.

    Args:
        dispatcher: the dispatcher of ``leg`` (its receiver is set here).
        leg: the controller's leg; its URI is our Contact.
        from_: the party called first, without SDP.
        to: the party called with FROM's offer.
    """

    def __init__(self, dispatcher: Dispatcher, leg: Leg, from_: str, to: str) -> None:
        self.dispatcher = dispatcher
        self.leg = leg
        self.me = leg.contact
        base = f"{secrets.token_hex(8)}@{leg.src.host or leg.src.addr}"
        self.a = Dialog(from_, to, f"a{base}", secrets.token_hex(6))
        self.b = Dialog(to, from_, f"b{base}", secrets.token_hex(6))
        #: the outcome: "BYE" (the call ended), or why it failed
        self.done: Var[str] = Var()
        self.failed = False
        dispatcher.set_receiver(self.receive)

    # ------------------------------------------------------------- our requests

    def start(self) -> None:
        """Step 1: INVITE FROM without SDP."""
        self.a.invite = self._invite(self.a, b"", "")

    def _invite(self, d: Dialog, body: bytes, ctype: str) -> Request:
        invite = d.request("INVITE", 1, body, ctype)
        invite.set_header("contact", self.me)
        print(f"INVITE {d.party}" + (" with the offer" if body else " without SDP"), flush=True)
        self.dispatcher.deliver(
            invite, do_retransmits=True, callback=lambda err: self._delivery(d, err)
        )
        return invite

    def _delivery(self, d: Dialog, err: int) -> None:
        if err:
            self._fail(f"INVITE {d.party}: delivery failed (errno {err})")

    def _ack(self, d: Dialog, body: bytes = b"", ctype: str = "") -> None:
        ack = d.request("ACK", 1, body, ctype)
        ack.set_header("contact", self.me)
        self.dispatcher.deliver(ack, do_retransmits=False)

    def _fail(self, why: str) -> None:
        print(f"failed: {why}", flush=True)
        self.failed = True
        self.done.value = why

    # ------------------------------------------------------------------ receive

    def receive(self, packet: Packet, leg: Leg, from_: Addr) -> None:
        """Dispatcher receiver: our responses, and the parties' requests to relay."""
        callid = packet.callid()
        d = {self.a.callid: self.a, self.b.callid: self.b}.get(callid or "")
        if d is None:
            log.info("packet of an unknown call %s from %s dropped", callid, from_)
            return
        if isinstance(packet, Response):
            if not leg.check_via(packet):
                log.info("response from %s not for us (top Via): dropped", from_)
                return
            if len(packet.get_headers("via")) == 1:
                self._our_response(d, packet)
            else:
                self._relay_response(d, packet)
        elif isinstance(packet, Request):
            self._relay_request(d, packet, from_)

    def _our_response(self, d: Dialog, resp: Response) -> None:
        """Steps 2 and 3: the answers to our INVITEs."""
        method = (resp.cseq() or " ").split()[-1]
        code = resp.code()
        if code < 200:
            return  # (provisional: we wait for the final answer)
        self.dispatcher.cancel_delivery(resp.tid())  # (no more retransmissions)
        if method != "INVITE" or d.invite is None:
            return  # (the BYE after a failure)
        if code >= 300:
            self.dispatcher.deliver(d.invite.create_ack(resp), do_retransmits=False)
            if d is self.b and self.a.answer is not None:
                self._ack(self.a)  # (no answer to FROM's offer: it is ended at once)
                self.dispatcher.deliver(self.a.request("BYE", 2), do_retransmits=True)
            self._fail(f"{d.party} answered {code} {resp.msg()}")
            return
        retransmitted = d.answer is not None
        d.answer = resp
        d.peer_tag = _tag_of(resp.get_header("to"))
        d.target = _contact_uri(resp.get_header("contact")) or d.target
        body, ctype = resp.body(), resp.get_header("content-type") or ""
        if d is self.a:
            if not body:
                self._fail(f"no SDP offer in the 2xx of {d.party}")
            elif self.b.invite is None:
                print(f"{d.party} answered {code}: its offer goes to {self.b.party}", flush=True)
                self.b.invite = self._invite(self.b, body, ctype)
            elif self.b.answer is not None and retransmitted:
                self._ack(
                    self.a, self.b.answer.body(), self.b.answer.get_header("content-type") or ""
                )
            return
        # TO's 2xx: ACK it, and bring its answer to FROM in FROM's ACK
        self._ack(self.b)
        if not body:
            self._fail(f"no SDP answer in the 2xx of {d.party}")
            return
        self._ack(self.a, body, ctype)
        if not retransmitted:
            print(f"{d.party} answered {code}: its answer went to {self.a.party}", flush=True)
            print("connected", flush=True)

    # -------------------------------------------------------------------- relay

    def _other(self, d: Dialog) -> Dialog:
        return self.b if d is self.a else self.a

    def _relay_request(self, d: Dialog, req: Request, from_: Addr) -> None:
        """A party's request in its call goes into the other call."""
        method = req.method()
        if method not in ("BYE", "CANCEL"):
            log.info("%s from %s is not relayed: 501", method, from_)
            if method != "ACK":
                self.dispatcher.deliver(req.create_response(501), leg=self.leg, dst_addr=from_)
            return
        other = self._other(d)
        if other.answer is None:
            # the other party never answered (refused, or not yet): nothing to relay
            # to; the call of this party is ended anyway (RFC 3261 15.1.2)
            code = 200 if method == "BYE" else 481
            print(f"{method} from {d.party} answered {code} here", flush=True)
            self.dispatcher.deliver(req.create_response(code), leg=self.leg, dst_addr=from_)
            return
        num = req.cseq_number() or 0
        req.set_uri(other.target or other.party)
        req.set_header("cseq", f"{num + CSEQ_OFFSET} {method}")
        req.set_header("contact", self.me)
        if self.leg.forward_incoming(req) is not None:
            return  # (Max-Forwards reached 0)
        req.set_header("call-id", other.callid)
        # the tags of the other call: ours there in From, the party's in To
        req.set_header("from", _with_tag("from", req.get_header("from") or "", other.tag))
        req.set_header("to", _with_tag("to", req.get_header("to") or "", other.peer_tag))
        # the party's own CSeq number, for the response (as Perl does)
        vias = req.get_headers("via")
        if not vias:
            log.info("%s from %s without Via: dropped", method, from_)
            return
        data, params = sip_hdrval2parts("via", vias[0])
        params["cseq"] = str(num)
        req.set_header("via", [sip_parts2hdrval("via", data, params), *vias[1:]])
        if self.leg.forward_outgoing(req, self.leg) is not None:
            return
        print(f"{method} from {d.party} relayed to {other.party}", flush=True)
        self.dispatcher.deliver(req, do_retransmits=False)

    def _relay_response(self, d: Dialog, resp: Response) -> None:
        """The response to a relayed request goes back into the call it came from."""
        other = self._other(d)
        self.leg.forward_incoming(resp)  # (our Via off)
        resp.set_header("call-id", other.callid)
        # From is the requester's (the other party's tag), To is ours there
        resp.set_header("from", _with_tag("from", resp.get_header("from") or "", other.peer_tag))
        resp.set_header("to", _with_tag("to", resp.get_header("to") or "", other.tag))
        resp.set_header("contact", self.me)
        vias = resp.get_headers("via")
        num = sip_hdrval2parts("via", vias[0])[1].get("cseq") if vias else None
        method = (resp.cseq() or " ").split()[-1]
        if num is not None:
            resp.set_header("cseq", f"{num} {method}")
        self.dispatcher.deliver(resp, leg=self.leg)
        if method == "BYE" and resp.code() >= 200:
            print(f"{method} answered {resp.code()} by {d.party}: call ended", flush=True)
            self.done.value = method


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    loop = EventLoop()
    leg = Leg(addr=args.laddr)
    disp = Dispatcher([leg], loop, do_retransmits=False)
    try:
        call = ThirdPartyCall(disp, leg, args.from_, args.to)
        call.start()
        loop.loop(None, call.done)
        loop.loop(1.0)  # some time to forward what is still under way (as Perl does)
    finally:
        disp.close()
        leg.close()
        loop.close()
    return 1 if call.failed else 0


if __name__ == "__main__":
    sys.exit(main())
