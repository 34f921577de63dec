"""Tests for netsip.digest: the RFC vectors, client and server against each
other (hypothesis), challenge selection, nonce counts, refusals, hostile
challenges, a round trip through the wire form, and Perl's Net::SIP::Authorize."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsip import digest
from netsip.digest import (
    ALGORITHMS,
    HA1,
    Challenge,
    NonceCounter,
    Status,
    answer,
    make_challenge,
    parse_challenges,
    verify,
)
from netsip.packet import Packet, Request, Response
from tests.support import imported_modules, require_perl_netsip

SECRET = b"k" * 32
NOW = 1_700_000_000.0
URI = "sip:bob@example.com"


def request(method: str = "INVITE", uri: str = URI, body: bytes = b"", cseq: int = 1) -> Request:
    headers: dict[str, str | int] = {
        "via": "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1",
        "from": "<sip:alice@example.com>;tag=1",
        "to": f"<{uri}>",
        "call-id": "call1",
        "cseq": f"{cseq} {method}",
        "max-forwards": 70,
    }
    return Request(method, uri, headers, body)


def challenged(req: Request, *values: str, code: int = 401) -> Response:
    header = "www-authenticate" if code == 401 else "proxy-authenticate"
    return req.create_response(code, headers={header: list(values)})


def params(value: str) -> dict[str, str]:
    """The parameters of one credentials value (the module's own scanner)."""
    [(scheme, p)] = digest._scan(value)
    assert scheme == "Digest"
    return p


def one_challenge(value: str, header: str = "www-authenticate") -> Challenge:
    [ch] = parse_challenges(header, [value])
    return ch


def passwords(table: dict[str, str]) -> Callable[[str, str], str | None]:
    return lambda user, realm: table.get(user)


def test_module_is_pure() -> None:
    # no I/O, no clock: the server functions take ``now``
    assert digest.__file__ is not None
    imported = imported_modules(digest.__file__)
    assert not imported & {"socket", "selectors", "ssl", "time", "asyncio", "random"}
    with pytest.raises(TypeError):
        ALGORITHMS["X"] = ALGORITHMS["MD5"]  # type: ignore[index]  # it is read-only


# --------------------------------------------------------------- vectors


def test_rfc2617_3_5() -> None:
    ch = one_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = answer(
        ch,
        method="GET",
        uri="/dir/index.html",
        body=b"",
        user="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
    )
    p = params(value)
    assert p["response"] == "6629fae49393a05397450978507c4ef1"
    assert (p["qop"], p["nc"], p["cnonce"]) == ("auth", "00000001", "0a4f113b")
    assert p["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert p["username"] == "Mufasa"
    assert p["uri"] == "/dir/index.html"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_3_9_1(algorithm: str, expected: str) -> None:
    ch = one_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", '
        f"algorithm={algorithm}, "
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    p = params(
        answer(
            ch,
            method="GET",
            uri="/dir/index.html",
            body=b"",
            user="Mufasa",
            password="Circle of Life",
            cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
    )
    assert p["response"] == expected
    assert p["algorithm"] == algorithm


def test_rfc7616_3_9_2_userhash() -> None:
    # the inputs of RFC 7616 3.9.2; its printed username and response cannot
    # be reproduced (RFC errata 4897), so the hashes are written out here
    ch = one_challenge(
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
        'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", '
        "charset=UTF-8, userhash=true"
    )
    user, realm, cnonce = (
        "J\u00e4s\u00f8n Doe",
        "api@example.org",
        "NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
    )
    p = params(
        answer(
            ch,
            method="GET",
            uri="/doe.json",
            body=b"",
            user=user,
            password="Secret, or not?",
            cnonce=cnonce,
        )
    )

    def h(text: str) -> str:
        return hashlib.new("sha512_256", text.encode()).hexdigest()

    assert "J\u00e4s\u00f8n".encode() == bytes.fromhex("4AC3A473C3B86E")
    assert p["username"] == h(f"{user}:{realm}")
    assert p["userhash"] == "true"
    ha1 = h(f"{user}:{realm}:Secret, or not?")
    ha2 = h("GET:/doe.json")
    assert p["response"] == h(f"{ha1}:{ch.nonce}:00000001:{cnonce}:auth:{ha2}")


def test_rfc2069_without_qop() -> None:
    # RFC 2617 3.2.2.1: KD(H(A1), nonce:H(A2)); no nc, cnonce, qop sent
    ch = one_challenge('Digest realm="r", nonce="n"')
    p = params(answer(ch, method="REGISTER", uri="sip:r", body=b"", user="u", password="p"))
    md5 = ALGORITHMS["MD5"].hash
    want = md5(f"{md5(b'u:r:p')}:n:{md5(b'REGISTER:sip:r')}".encode())
    assert p["response"] == want
    assert not {"qop", "nc", "cnonce"} & p.keys()


# ------------------------------------------------- client against server

QOPS = {"auth": ("auth",), "auth-int": ("auth-int",), "none": ()}
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16)


@pytest.mark.parametrize("qop", list(QOPS))
@pytest.mark.parametrize("algorithm", [a.name for a in ALGORITHMS.values()])
@given(
    user=TEXT,
    password=st.text(max_size=16),
    realm=TEXT,
    body=st.binary(max_size=64),
    method=st.sampled_from(["INVITE", "REGISTER", "MESSAGE"]),
    opaque=st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
)
def test_client_answer_verifies(
    *,
    algorithm: str,
    qop: str,
    user: str,
    password: str,
    realm: str,
    body: bytes,
    method: str,
    opaque: str | None,
) -> None:
    req = request(method, body=body)
    if algorithm.endswith("-sess") and qop == "none":
        # RFC 2617 3.2.2: -sess hashes the cnonce, which only comes with a qop
        with pytest.raises(ValueError, match="qop"):
            make_challenge(realm, secret=SECRET, algorithm=algorithm, qop=(), now=NOW)
        return
    chal = make_challenge(
        realm, secret=SECRET, algorithm=algorithm, qop=QOPS[qop], opaque=opaque, now=NOW
    )
    assert req.authorize(challenged(req, chal), (user, password))
    p = params(req.get_headers("authorization")[0])
    assert p.get("qop") == (None if qop == "none" else qop)
    assert p["algorithm"] == algorithm

    def check(pw: str, now: float, request: Request = req) -> Status:
        v = verify(request, realm=realm, secret=SECRET, lookup=passwords({user: pw}), now=now)
        return v.status

    assert check(password, NOW + 10) is Status.OK
    assert verify(
        req, realm=realm, secret=SECRET, lookup=passwords({user: password}), now=NOW
    ) == digest.Verdict(Status.OK, user, algorithm)
    assert check(password + "x", NOW) is Status.WRONG
    assert check(password, NOW + 301) is Status.STALE
    assert check(password + "x", NOW + 301) is Status.WRONG
    # the nonce with another time stamp (the MAC no longer fits)
    tampered = request(method, body=body)
    nonce = params(chal)["nonce"]
    forged = chal.replace(nonce, "1" + nonce)
    tampered.authorize(challenged(tampered, forged), (user, password))
    assert check(password, NOW, tampered) is Status.WRONG


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256-sess", "SHA-512-256"])
def test_verify_with_ha1(algorithm: str) -> None:
    req = request()
    req.authorize(
        challenged(req, make_challenge("r", secret=SECRET, algorithm=algorithm, now=NOW)),
        ("alice", "pw"),
    )
    h = ALGORITHMS[algorithm.upper()].hash(b"alice:r:pw")
    base = algorithm.removesuffix("-sess")

    def check(stored: HA1) -> Status:
        return verify(req, realm="r", secret=SECRET, lookup=lambda u, r: stored, now=NOW).status

    assert check(HA1(h, base)) is Status.OK
    assert check(HA1(h.upper(), base)) is Status.OK
    other = "SHA-256" if base == "MD5" else "MD5"
    assert check(HA1(h, other)) is Status.WRONG


def test_verify_missing_unknown_user_other_realm_and_secret() -> None:
    req = request()
    lookup = passwords({"alice": "pw"})
    assert verify(req, realm="r", secret=SECRET, lookup=lookup, now=NOW).status is Status.MISSING
    req.authorize(challenged(req, make_challenge("r", secret=SECRET, now=NOW)), ("bob", "pw"))
    assert verify(req, realm="r", secret=SECRET, lookup=lookup, now=NOW) == digest.Verdict(
        Status.WRONG, "bob", "MD5"
    )
    assert verify(req, realm="x", secret=SECRET, lookup=lookup, now=NOW).status is Status.MISSING
    # the Authorization header is not what a proxy reads
    assert (
        verify(req, realm="r", secret=SECRET, lookup=lookup, now=NOW, proxy=True).status
        is Status.MISSING
    )
    req2 = request()
    req2.authorize(challenged(req2, make_challenge("r", secret=SECRET, now=NOW)), ("alice", "pw"))
    assert verify(req2, realm="r", secret=b"other", lookup=lookup, now=NOW).status is Status.WRONG
    # a nonce from far in the future: not one this server made in its time
    req3 = request()
    req3.authorize(
        challenged(req3, make_challenge("r", secret=SECRET, now=NOW + 10_000)), ("alice", "pw")
    )
    assert verify(req3, realm="r", secret=SECRET, lookup=lookup, now=NOW).status is Status.WRONG


def test_verify_uri_must_be_the_request_uri() -> None:
    req = request()
    req.authorize(challenged(req, make_challenge("r", secret=SECRET, now=NOW)), ("a", "pw"))
    lookup = passwords({"a": "pw"})
    # the same SIP URI written differently is the same resource
    req.set_uri("sip:bob@EXAMPLE.com:5060")
    assert verify(req, realm="r", secret=SECRET, lookup=lookup, now=NOW).ok
    req.set_uri("sip:carol@example.com")
    assert verify(req, realm="r", secret=SECRET, lookup=lookup, now=NOW).status is Status.WRONG


def test_verify_ack_and_cancel_with_the_invite_credentials() -> None:
    req = request("INVITE")
    req.authorize(challenged(req, make_challenge("r", secret=SECRET, now=NOW)), ("a", "pw"))
    lookup = passwords({"a": "pw"})
    fail = req.create_response(486)
    for other in (req.create_ack(fail), req.create_cancel()):
        assert verify(other, realm="r", secret=SECRET, lookup=lookup, now=NOW).ok
    bye = request("BYE")
    bye.set_header("authorization", req.get_headers("authorization"))
    assert verify(bye, realm="r", secret=SECRET, lookup=lookup, now=NOW).status is Status.WRONG


def test_verify_opaque_is_covered_by_the_nonce() -> None:
    req = request()
    chal = make_challenge("r", secret=SECRET, opaque="abc", now=NOW)
    req.authorize(challenged(req, chal.replace('opaque="abc"', 'opaque="abd"')), ("a", "pw"))
    lookup = passwords({"a": "pw"})
    assert verify(req, realm="r", secret=SECRET, lookup=lookup, now=NOW).status is Status.WRONG


def test_verify_username_star() -> None:
    # RFC 7616 3.4.4: username* carries a name as an RFC 8187 ext-value
    req = request()
    req.authorize(challenged(req, make_challenge("r", secret=SECRET, now=NOW)), ("J\u00e4s", "p"))
    value = req.get_headers("authorization")[0]
    assert 'username="J\u00e4s"' in value
    req.set_header(
        "authorization", value.replace('username="J\u00e4s"', "username*=UTF-8''J%C3%A4s")
    )
    v = verify(req, realm="r", secret=SECRET, lookup=passwords({"J\u00e4s": "p"}), now=NOW)
    assert v == digest.Verdict(Status.OK, "J\u00e4s", "MD5")


def test_make_challenge_rejects_misuse() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        make_challenge("r", secret=SECRET, algorithm="SHA-1", now=NOW)
    with pytest.raises(ValueError, match="qop"):
        make_challenge("r", secret=SECRET, qop=("auth-conf",), now=NOW)
    with pytest.raises(ValueError, match="control"):
        make_challenge("r\r\nX: y", secret=SECRET, now=NOW)
    chal = make_challenge('a "quoted" \\ realm', secret=SECRET, stale=True, qop=(), now=NOW)
    ch = one_challenge(chal)
    assert (ch.realm, ch.stale, ch.qop) == ('a "quoted" \\ realm', True, ())


# --------------------------------------------------------------- client


def test_strongest_of_several_per_realm() -> None:
    req = request()
    resp = challenged(
        req,
        'Digest realm="a", nonce="n1", algorithm=MD5, qop="auth"',
        'Digest realm="a", nonce="n2", algorithm=SHA-256, qop="auth"',
        'Digest realm="a", nonce="n3", algorithm=SHA-999, qop="auth"',
        'Digest realm="b", nonce="n4", algorithm=MD5-sess, qop="auth"',
        'Digest realm="b", nonce="n5", algorithm=MD5, qop="auth"',
        'Basic realm="a"',
    )
    assert req.authorize(resp, ("u", "p"))
    got = {p["realm"]: p for p in map(params, req.get_headers("authorization"))}
    assert set(got) == {"a", "b"}
    assert (got["a"]["algorithm"], got["a"]["nonce"]) == ("SHA-256", "n2")
    # equally strong: the first offered
    assert (got["b"]["algorithm"], got["b"]["nonce"]) == ("MD5-sess", "n4")


def test_several_challenges_in_one_header_value() -> None:
    # RFC 7235 4.1 allows a list; RFC 3261 writes one per header
    chs = parse_challenges(
        "WWW-Authenticate",
        [
            'Basic realm="x", Digest realm="a", nonce="1", algorithm=SHA-256, , '
            'Digest realm="a", nonce="2"'
        ],
    )
    assert [(c.realm, c.nonce, c.algorithm.name) for c in chs] == [
        ("a", "1", "SHA-256"),
        ("a", "2", "MD5"),
    ]


@pytest.mark.parametrize(("code", "header"), [(401, "authorization"), (407, "proxy-authorization")])
def test_www_and_proxy(code: int, header: str) -> None:
    req = request()
    resp = challenged(req, make_challenge("r", secret=SECRET, now=NOW), code=code)
    assert req.authorize(resp, ("u", "p"))
    other = "proxy-authorization" if header == "authorization" else "authorization"
    assert len(req.get_headers(header)) == 1
    assert req.get_headers(other) == []
    v = verify(
        req,
        realm="r",
        secret=SECRET,
        lookup=passwords({"u": "p"}),
        now=NOW,
        proxy=code == 407,
    )
    assert v.ok


def test_both_kinds_in_one_response() -> None:
    # a forking proxy merges the challenges of 401s and 407s (RFC 3261 16.7)
    req = request()
    resp = req.create_response(
        407,
        headers={
            "www-authenticate": 'Digest realm="uas", nonce="1"',
            "proxy-authenticate": 'Digest realm="proxy", nonce="2"',
        },
    )
    assert req.authorize(resp, {"uas": ("u1", "p1"), "proxy": ("u2", "p2")})
    assert params(req.get_headers("authorization")[0])["username"] == "u1"
    assert params(req.get_headers("proxy-authorization")[0])["username"] == "u2"


def test_mapping_and_callable_auth() -> None:
    chal_a = 'Digest realm="a", nonce="1"'
    chal_b = 'Digest realm="b", nonce="2"'
    req = request()
    assert req.authorize(challenged(req, chal_a, chal_b), {"b": ("ub", "pb")})
    assert [params(v)["username"] for v in req.get_headers("authorization")] == ["ub"]
    req = request()
    assert not req.authorize(challenged(req, chal_a), {"b": ("ub", "pb")})
    assert req.get_headers("authorization") == []
    asked: list[str] = []

    def cb(realm: str) -> tuple[str, str] | None:
        asked.append(realm)
        return ("u" + realm, "p") if realm == "a" else None

    req = request()
    assert req.authorize(challenged(req, chal_a, chal_b), cb)
    assert asked == ["a", "b"]
    assert [params(v)["username"] for v in req.get_headers("authorization")] == ["ua"]
    req = request()
    with pytest.raises(TypeError):
        req.authorize(challenged(req, chal_a), lambda realm: ("only one",))  # type: ignore[arg-type,return-value]  # misuse on purpose


def test_nonce_counter() -> None:
    counter = NonceCounter(size=2)
    assert [counter.next("a"), counter.next("a"), counter.next("b")] == [1, 2, 1]
    assert counter.next("a") == 3  # (a is now the most recent)
    counter.next("c")  # b is dropped
    assert len(counter) == 2
    assert counter.next("b") == 1
    with pytest.raises(ValueError):
        NonceCounter(0)


def test_nc_counts_per_nonce_across_requests() -> None:
    counter = NonceCounter()
    chal1 = 'Digest realm="r", nonce="one", qop="auth"'
    chal2 = 'Digest realm="r", nonce="two", qop="auth"'
    seen = []
    for chal in (chal1, chal1, chal1, chal2, chal1):
        req = request()
        assert req.authorize(challenged(req, chal), ("u", "p"), nonces=counter)
        seen.append(params(req.get_headers("authorization")[0])["nc"])
    assert seen == ["00000001", "00000002", "00000003", "00000001", "00000004"]
    req = request()  # no counter: always 1
    req.authorize(challenged(req, chal1), ("u", "p"))
    assert params(req.get_headers("authorization")[0])["nc"] == "00000001"


def test_cseq_is_raised_on_success_only() -> None:
    req = request(cseq=5)
    resp = challenged(req, 'Digest realm="r", nonce="1"')
    assert req.authorize(resp, ("u", "p"))
    assert req.cseq() == "6 INVITE"
    req2 = request(cseq=9)
    assert not req2.authorize(challenged(req2, 'Basic realm="r"'), ("u", "p"))
    assert req2.cseq() == "9 INVITE"


def test_same_nonce_again_is_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    req = request()
    counter = NonceCounter()
    chal = 'Digest realm="r", nonce="n1", qop="auth"'
    assert req.authorize(challenged(req, chal), ("u", "p"), nonces=counter)
    before = req.as_bytes()
    other = 'Digest realm="s", nonce="n2", qop="auth"'
    with caplog.at_level(logging.INFO, logger="netsip.digest"):
        resp = challenged(req, other, chal)
        assert not req.authorize(resp, lambda realm: ("u", "p"), nonces=counter)
    assert "refused" in caplog.text
    # nothing changed: not the request, not the counts
    assert req.as_bytes() == before
    assert counter.next("n2") == 1


def test_new_nonce_without_stale_same_credentials_is_a_refusal() -> None:
    # Net::SIP's Authorize makes a new nonce for every challenge, never stale
    req = request()
    assert req.authorize(challenged(req, 'Digest realm="r", nonce="n1"'), ("u", "p"))
    assert not req.authorize(challenged(req, 'Digest realm="r", nonce="n2"'), ("u", "p"))
    # other credentials (the application asked its user again) are answered
    assert req.authorize(challenged(req, 'Digest realm="r", nonce="n3"'), ("u", "p2"))
    [value] = req.get_headers("authorization")
    assert params(value)["nonce"] == "n3"


def test_stale_is_answered_with_the_new_nonce() -> None:
    req = request()
    counter = NonceCounter()
    chal = make_challenge("r", secret=SECRET, now=NOW)
    assert req.authorize(challenged(req, chal), ("u", "p"), nonces=counter)
    assert verify(req, realm="r", secret=SECRET, lookup=passwords({"u": "p"}), now=NOW + 400) == (
        digest.Verdict(Status.STALE, "u", "MD5")
    )
    fresh = make_challenge("r", secret=SECRET, stale=True, now=NOW + 400)
    assert req.authorize(challenged(req, fresh), ("u", "p"), nonces=counter)
    [value] = req.get_headers("authorization")  # replaced, not added
    assert params(value)["nonce"] == params(fresh)["nonce"]
    assert verify(req, realm="r", secret=SECRET, lookup=passwords({"u": "p"}), now=NOW + 400).ok
    # stale with the nonce already answered makes no sense: refused
    assert not req.authorize(challenged(req, fresh), ("u", "p"))


def test_other_realms_credentials_stay() -> None:
    req = request()
    req.add_header("proxy-authorization", 'Digest username="x", realm="other", nonce="o"')
    resp = challenged(req, 'Digest realm="r", nonce="1"', code=407)
    assert req.authorize(resp, ("u", "p"))
    realms = [params(v)["realm"] for v in req.get_headers("proxy-authorization")]
    assert realms == ["other", "r"]


def test_username_that_cannot_be_sent() -> None:
    req = request()
    assert not req.authorize(challenged(req, 'Digest realm="r", nonce="1"'), ("a\r\nb", "p"))
    assert req.get_headers("authorization") == []


MALFORMED = [
    pytest.param('Digest nonce="1"', id="no-realm"),
    pytest.param('Digest realm="r"', id="no-nonce"),
    pytest.param('Digest realm="r, nonce="1"', id="unbalanced-quote"),
    pytest.param('Digest realm="r", nonce="1', id="unterminated"),
    pytest.param("Digest", id="scheme-only"),
    pytest.param("", id="empty"),
    pytest.param("=== ,,, \\", id="garbage"),
    pytest.param('Digest realm="r" nonce="1"', id="no-comma"),
    pytest.param('Digest realm="r", realm="s", nonce="1"', id="realm-twice"),
    pytest.param('Digest realm="r", nonce="1", algorithm=ROT13', id="unknown-algorithm"),
    pytest.param('Digest realm="r", nonce="1", qop="auth-conf"', id="unknown-qop"),
    pytest.param('Digest realm="r", nonce="1", algorithm=MD5-sess', id="sess-without-qop"),
    pytest.param('Digest realm="r", nonce="' + "x" * 100_000 + '"', id="huge"),
    pytest.param('Digest realm="r", nonce="' + "x" * 3000 + '"', id="huge-nonce"),
    pytest.param('Digest realm="a\x00b", nonce="1"', id="control-char"),
    pytest.param('Basic realm="r"', id="basic"),
    pytest.param("Basic dXNlcjpwYXNz", id="basic-token68"),
    pytest.param('Digest realm=, nonce="1"', id="empty-value"),
    pytest.param('Digest realm="r", nonce=\u00e4', id="non-token"),
]


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_challenges_are_skipped(value: str, caplog: pytest.LogCaptureFixture) -> None:
    req = request()
    resp = Response(401, "Unauthorized", [("cseq", "1 INVITE")])
    resp._hdrs.append(("www-authenticate", value, -1))  # raw: no cleaning of the value
    with caplog.at_level(logging.INFO, logger="netsip.digest"):
        assert not req.authorize(resp, ("u", "p"))
    assert "digest: skipping" in caplog.text
    assert req.get_headers("authorization") == []
    # next to a good challenge the bad one does not matter
    req = request()
    good = make_challenge("r2", secret=SECRET, now=NOW)
    resp = Response(401, "Unauthorized", [("cseq", "1 INVITE"), ("www-authenticate", good)])
    resp._hdrs.append(("www-authenticate", value, -1))
    assert req.authorize(resp, ("u", "p"))
    assert [params(v)["realm"] for v in req.get_headers("authorization")] == ["r2"]


def test_no_challenge_at_all(caplog: pytest.LogCaptureFixture) -> None:
    req = request()
    with caplog.at_level(logging.INFO, logger="netsip.digest"):
        assert not req.authorize(req.create_response(401), ("u", "p"))
    assert "no usable challenge" in caplog.text


@given(st.text(max_size=200))
def test_any_challenge_text_never_raises(value: str) -> None:
    chs = parse_challenges("www-authenticate", [value, 'Digest realm="' + value])
    assert all(isinstance(c, Challenge) for c in chs)


@given(st.text(max_size=200))
def test_any_credentials_text_never_raises(value: str) -> None:
    req = request()
    req._hdrs.append(("authorization", value, -1))
    v = verify(req, realm="r", secret=SECRET, lookup=passwords({}), now=NOW)
    assert v.status in (Status.MISSING, Status.WRONG)


# --------------------------------------------------------- on the wire


def test_round_trip_through_the_wire_form() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"
    req = request("INVITE", body=body)
    chal = make_challenge(
        'sip "realm"', secret=SECRET, algorithm="SHA-256", qop=("auth-int",), now=NOW
    )
    resp = Packet.new_from_string(challenged(req, chal, code=407).as_bytes())
    assert isinstance(resp, Response)
    assert req.authorize(resp, ("alice", 'pa"ss'), nonces=NonceCounter())
    got = Packet.new_from_string(req.as_bytes())
    assert isinstance(got, Request)
    lookup = passwords({"alice": 'pa"ss'})
    v = verify(got, realm='sip "realm"', secret=SECRET, lookup=lookup, now=NOW, proxy=True)
    assert v == digest.Verdict(Status.OK, "alice", "SHA-256")
    # auth-int covers the body
    got.set_body(body + b"a=sendonly\r\n")
    v = verify(got, realm='sip "realm"', secret=SECRET, lookup=lookup, now=NOW, proxy=True)
    assert v.status is Status.WRONG


# ------------------------------------------------- Perl's Net::SIP::Authorize

PERL_AUTHORIZE = r"""
use strict; use warnings;
use Net::SIP;
package FakeDispatcher;
sub new { bless { sent => [] }, shift }
sub deliver { my ($self, $pkt) = @_; push @{$self->{sent}}, $pkt }
sub cancel_delivery {}
package main;
local $/; my $data = <STDIN>;
my $disp = FakeDispatcher->new;
my $auth = Net::SIP::Authorize->new(
    realm => 'perl-realm', user2pass => { alice => 'secret' }, dispatcher => $disp);
my $pkt = Net::SIP::Packet->new_from_string($data);
my $rv = $auth->receive($pkt, undef, '127.0.0.1:5060');
if (!$rv) { print "AUTHORIZED\n" } else { print $disp->{sent}[0]->as_string }
"""


def run_perl_authorize(perl: str, data: bytes) -> bytes:
    res = subprocess.run(
        [perl, "-e", PERL_AUTHORIZE], input=data, capture_output=True, timeout=60, check=True
    )
    return res.stdout


@pytest.mark.interop
@pytest.mark.parametrize(("password", "accepted"), [("secret", True), ("wrong", False)])
def test_perl_authorize_accepts_our_answer(password: str, accepted: bool) -> None:
    perl = require_perl_netsip()
    req = request("REGISTER", uri="sip:example.com")
    resp = Packet.new_from_string(run_perl_authorize(perl, req.as_bytes()))
    assert isinstance(resp, Response)
    assert resp.code() == 401
    assert req.authorize(resp, ("alice", password))
    out = run_perl_authorize(perl, req.as_bytes())
    assert (out == b"AUTHORIZED\n") is accepted
    if not accepted:
        # a new nonce, no stale: the same credentials are not sent again
        again = Packet.new_from_string(out)
        assert isinstance(again, Response)
        assert not req.authorize(again, ("alice", password))
