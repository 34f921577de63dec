"""RFC 4475 torture messages: netsip's verdict on each (see docs/rfc4475.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from netsip.packet import Packet, PacketError, Request, Response
from tests.support import check_parsed, require_perl_netsip

DATA = Path(__file__).parent / "data" / "rfc4475"

# file -> None (must parse) or a substring of the PacketError message.
# The reasons are in docs/rfc4475.md.
VERDICTS: dict[str, str | None] = {
    # 3.1.1 valid messages
    "wsinv": None,
    "intmeth": None,
    "esc01": None,
    "escnull": None,
    "esc02": None,
    "lwsdisp": None,
    "longreq": None,
    "dblreq": None,
    "semiuri": None,
    "transports": None,
    "mpart01": None,
    "unreason": None,
    "noreason": None,
    # 3.1.2 invalid messages
    "badinv01": "invalid via",
    "clerr": "content-length 9999 is larger than the body",
    "ncl": "invalid content-length, should be number",
    "scalar02": "cseq number out of range",
    "scalarlg": "cseq number out of range",
    "quotbal": "unbalanced quote or '<' in to header",
    "ltgtruri": "bad request URI '<sip:user@example.com>'",
    "lwsruri": "whitespace in request URI",
    "lwsstart": "elements must be separated by one SP",
    "trws": "leading or trailing whitespace",
    "escruri": "headers not allowed in Request-URI",
    "baddate": None,  # accepted: the Date header is not used (RFC 4475 3.1.2.12)
    "regbadct": "invalid address in contact header",
    "badaspec": "invalid address in to header",
    "baddn": "invalid address in from header",
    "badvers": "unsupported SIP version",
    "mismatch01": "method in cseq does not match method of request",
    "mismatch02": "method in cseq does not match method of request",
    "bigcode": "invalid status code",
    # 3.2 transaction layer, 3.3 application layer, 3.4 backward compatibility
    "badbranch": None,
    "insuf": None,
    "unkscm": None,
    "novelsc": None,
    "unksm2": None,
    "bext01": None,
    "invut": None,
    "regaut01": None,
    "multi01": "conflicting definition of cseq",
    "mcl01": "conflicting definition of content-length",
    "bcast": None,
    "zeromf": None,
    "cparam01": None,
    "cparam02": None,
    "regescrt": None,
    "sdp01": None,
    "inv2543": None,
}

# what Net::SIP 0.835 does (tests/data/rfc4475/README.md): True = parses
PERL_ACCEPTS = {name: True for name in VERDICTS} | {
    name: False
    for name in (
        "intmeth",
        "esc02",
        "noreason",
        "ncl",
        "badvers",
        "mismatch01",
        "mismatch02",
        "multi01",
        "mcl01",
    )
}


def load(name: str) -> bytes:
    return (DATA / f"{name}.dat").read_bytes()


def test_every_file_has_a_verdict() -> None:
    assert sorted(p.stem for p in DATA.glob("*.dat")) == sorted(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_verdict(name: str) -> None:
    data = load(name)
    expected = VERDICTS[name]
    if expected is None:
        p = Packet.new_from_string(data)
        check_parsed(p)
    else:
        with pytest.raises(PacketError) as info:
            Packet.new_from_string(data)
        assert expected in str(info.value)


def test_wsinv_details() -> None:
    p = Packet.new_from_string(load("wsinv"))
    assert isinstance(p, Request)
    assert p.uri() == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert p.get_header("to") == "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"
    assert p.get_header("from") == (
        '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ; tag = 98asjd8'
    )
    assert p.get_header("max-forwards") == "0068"
    assert p.cseq() == "0009 INVITE"
    assert p.tid() == "wsinv.ndaksdj@192.0.2.1 9"
    assert p.get_headers("via") == [
        "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw",
        "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8",
        "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
    ]
    assert p.get_header("subject") == ""
    assert p.get_header("newfangledheader") == "newfangled value continued newfangled value"
    assert p.get_header("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert p.get_header("route") == (
        "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    )
    assert p.get_header("contact") == (
        '"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam = newvalue ;'
        " secondparam ; q = 0.33"
    )
    assert len(p.body()) == 150


def test_intmeth_and_esc02_details() -> None:
    p = Packet.new_from_string(load("intmeth"))
    assert p.method() == "!interesting-Method0123456789_*+`.%indeed'~"
    assert "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" in (p.get_header("to") or "")
    assert p.get_header("extensionheader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    p = Packet.new_from_string(load("esc02"))
    assert p.method() == "RE%47IST%45R"
    assert p.get_headers("contact") == [
        "<sip:alias1@host1.example.com>",
        "<sip:alias3@host3.example.com>",
    ]
    assert p.get_header("c%6Fntact") == "<sip:alias2@host2.example.com>"


def test_dblreq_parses_the_first_message() -> None:
    data = load("dblreq")
    p = Packet.new_from_string(data)
    assert p.method() == "REGISTER" and p.body() == b""
    assert p.callid() == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert data.startswith(p.as_bytes()) and b"INVITE" not in p.as_bytes()


def test_response_details() -> None:
    p = Packet.new_from_string(load("noreason"))
    assert isinstance(p, Response) and (p.code(), p.msg()) == (100, "")
    p = Packet.new_from_string(load("unreason"))
    assert isinstance(p, Response) and p.code() == 200
    assert p.msg().startswith("= 2**3 * 5**2 но сто девяносто девять")


def test_long_and_list_messages() -> None:
    p = Packet.new_from_string(load("longreq"))
    assert len(p.get_headers("via")) == 34
    assert p.get_headers("via")[-1].endswith("branchvalue")
    p = Packet.new_from_string(load("semiuri"))
    assert p.get_headers("accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]
    p = Packet.new_from_string(load("transports"))
    assert [v.split()[0] for v in p.get_headers("via")] == [
        "SIP/2.0/UDP",
        "SIP/2.0/SCTP",
        "SIP/2.0/TLS",
        "SIP/2.0/UNKNOWN",
        "SIP/2.0/TCP",
    ]
    p = Packet.new_from_string(load("mpart01"))
    assert len(p.body()) == 553 and p.body().endswith(b"--7a9cbec02ceef655--\r\n")


@pytest.mark.interop
def test_perl_verdicts_are_as_documented() -> None:
    perl = require_perl_netsip()
    script = (
        "use Net::SIP; local $/; for my $f (@ARGV) { open my $fh, '<', $f or die; "
        "my $d = <$fh>; my $p = eval { Net::SIP::Packet->new_from_string($d) }; "
        'print(($p ? 1 : 0), "\\n") }'
    )
    names = sorted(VERDICTS)
    res = subprocess.run(
        [perl, "-e", script, *(str(DATA / f"{n}.dat") for n in names)],
        capture_output=True,
        timeout=60,
        check=True,
        text=True,
    )
    accepted = dict(zip(names, (line == "1" for line in res.stdout.split()), strict=True))
    assert accepted == PERL_ACCEPTS
