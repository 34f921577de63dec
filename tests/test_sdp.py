"""Tests for netsip.sdp: parsing (RFC 8866), offer/answer (RFC 3264), bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsip.sdp import (
    PCMA,
    PCMU,
    SDP,
    Codec,
    SDPError,
    answer,
    negotiate,
    offer,
    sdp_from_body,
)

BASIC = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "b=AS:64\r\n"
    "a=sendrecv\r\n"
    "m=audio 4000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:30\r\n"
    "a=rtcp:4005\r\n"
    "m=video 5000 RTP/AVP 31\r\n"
    "c=IN IP6 ::1\r\n"
    "a=recvonly\r\n"
)


def test_parse_session_and_media() -> None:
    sdp = SDP.new_from_string(BASIC)
    a, v = sdp.media
    assert (a.media, a.port, a.addr, a.fmt) == ("audio", 4000, "127.0.0.1", ["0", "8", "101"])
    assert a.rtpmap == {0: PCMU, 8: PCMA, 101: Codec("telephone-event", 8000)}
    assert a.ptime == 30
    assert a.attributes("fmtp") == ["101 0-15"]
    assert a.direction == "sendrecv"
    assert (v.addr, v.direction) == ("::1", "recvonly")
    assert sdp.name2int("telephone-event/8000", 0) == 101
    assert sdp.name2int("PCMA", 0) == 8
    assert sdp.name2int("PCMA", 1) is None
    gm = sdp.get_media()
    assert gm[0]["addr"] == "127.0.0.1" and gm[1]["port"] == 5000 and gm[1]["range"] == 1
    assert sdp.content_type() == "application/sdp"
    assert SDP.new_from_string(sdp.as_string()) == sdp
    assert SDP.new_from_string(bytes(sdp)).as_string() == sdp.as_string()


def test_tolerant_lf_and_trailing_space() -> None:
    sdp = SDP.new_from_string(BASIC.replace("\r\n", "  \n"))
    assert sdp.media[0].ptime == 30 and len(sdp.media) == 2


def test_hold_addresses() -> None:
    for addr, ip in (("0.0.0.0", "IP4"), ("::", "IP6")):
        s = BASIC.replace("c=IN IP4 127.0.0.1", f"c=IN {ip} {addr}")
        sdp = SDP.new_from_string(s)
        assert sdp.media[0].direction == "sendonly"
        ans = SDP.new_from_string(answer(sdp, addr="127.0.0.1", ports=[6000, 6002]).as_string())
        neg = negotiate(ans, sdp)[0]
        assert neg is not None and neg.remote is None and neg.recv and not neg.send


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nthis is garbage\r\n",
        "v=0\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\n",  # no c= anywhere
        "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 99999 RTP/AVP 0\r\n",
        "v=0\r\nc=IN XX 1.2.3.4\r\n",
        "o=- 1 1 IN IP4 1.2.3.4\r\n",
        "",
    ],
)
def test_bad_input(bad: str) -> None:
    with pytest.raises(SDPError):
        SDP.new_from_string(bad)


def test_huge_and_non_utf8() -> None:
    with pytest.raises(SDPError, match="large"):
        SDP.new_from_string("v=0\r\n" + "a=x\r\n" * 20000)
    many = "v=0\r\nc=IN IP4 1.2.3.4\r\n" + "m=audio 1 RTP/AVP 0\r\n" * 300
    with pytest.raises(SDPError, match="m= lines"):
        SDP.new_from_string(many)
    with pytest.raises(SDPError, match="UTF-8"):
        SDP.new_from_string(b"v=0\r\ns=\xff\xfe\r\n")


def test_offer_answer_intersection_and_order() -> None:
    off = offer(addr="127.0.0.1", media=[("audio", 4000), ("audio", 4002)])
    off = SDP.new_from_string(off.as_string())
    assert off.media[0].fmt == ["0", "8", "96"]
    ans = answer(off, addr="127.0.0.2", ports=[6000, 6002], codecs=[PCMA])
    ans = SDP.new_from_string(ans.as_string())
    assert [m.port for m in ans.media] == [6000, 6002]
    assert ans.media[0].fmt == ["8"]  # no telephone-event: we do not support it
    neg = negotiate(off, ans)
    assert neg[0] is not None and neg[0].payload_type == 8 and neg[0].remote == ("127.0.0.2", 6000)
    assert neg[0].remote_rtcp == ("127.0.0.2", 6001) and neg[0].dtmf_type is None
    ans2 = answer(off, addr="127.0.0.2", ports=[6000, 6002])
    n2 = negotiate(off, ans2)[1]
    assert n2 is not None and n2.payload_type == 0 and n2.dtmf_type == 96 and n2.send and n2.recv


def test_answer_rejects_unknown_codecs_and_port0() -> None:
    s = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n"
        "m=audio 4002 RTP/AVP 0\r\n"
        "m=audio 0 RTP/AVP 8\r\n"
    )
    off = SDP.new_from_string(s)
    ans = answer(off, addr="127.0.0.1", ports=[1, 2, 3])
    assert [m.port for m in ans.media] == [0, 2, 0]
    assert negotiate(ans, off)[0] is None and negotiate(ans, off)[2] is None
    only_unknown = "\r\n".join(s.split("\r\n")[:7]) + "\r\n"
    with pytest.raises(SDPError):
        answer(SDP.new_from_string(only_unknown), addr="127.0.0.1", ports=[1])
    all_zero = s.replace("4000", "0").replace("4002", "0")
    with pytest.raises(SDPError):
        answer(SDP.new_from_string(all_zero), addr="127.0.0.1", ports=[1, 2, 3])


@pytest.mark.parametrize(
    ("offered", "local", "expected"),
    [
        ("sendonly", None, "recvonly"),
        ("recvonly", None, "sendonly"),
        ("inactive", None, "inactive"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendrecv", "inactive", "inactive"),
        ("sendonly", "sendonly", "inactive"),
    ],
)
def test_hold_directions(offered: str, local: str | None, expected: str) -> None:
    off = offer(addr="127.0.0.1", media=[("audio", 4000)], direction=offered)
    ans = answer(off, addr="127.0.0.1", ports=[5000], direction=local)
    assert ans.media[0].direction == expected
    n = negotiate(off, ans)[0]
    assert n is not None
    assert n.send == (expected in ("sendrecv", "recvonly"))


def test_reoffer_increments_version() -> None:
    off = offer(addr="127.0.0.1", media=[("audio", 4000)])
    re_off = off.next_version()
    assert off.version() == 1 and re_off.version() == 2
    assert re_off.media[0].port == 4000


def test_replace_media_listen() -> None:
    sdp = SDP.new_from_string(BASIC)
    sdp.replace_media_listen([("127.0.0.9", 7000), ("::1", 7002)])
    again = SDP.new_from_string(sdp.as_string())
    assert [(m.addr, m.port) for m in again.media] == [("127.0.0.9", 7000), ("::1", 7002)]


def test_sdp_from_body() -> None:
    assert sdp_from_body("application/sdp", BASIC.encode()) is not None
    assert sdp_from_body("text/plain", b"hi") is None
    body = (
        b"--xyz\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--xyz\r\nContent-Type: application/sdp\r\n\r\n" + BASIC.encode() + b"\r\n--xyz--\r\n"
    )
    got = sdp_from_body('multipart/mixed; boundary="xyz"', body)
    assert got is not None and got.media[0].port == 4000
    assert (
        sdp_from_body(
            "multipart/alternative;boundary=xyz", body.replace(b"application/sdp", b"x/y")
        )
        is None
    )
    with pytest.raises(SDPError):
        sdp_from_body("multipart/mixed; boundary=xyz", body.replace(b"v=0", b"v=9"))


_tok = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)


@st.composite
def sdps(draw: st.DrawFn) -> SDP:
    media = [
        {
            "media": draw(st.sampled_from(["audio", "video"])),
            "port": draw(st.integers(0, 65535)),
            "range": draw(st.integers(1, 4)),
            "fmt": draw(st.lists(st.integers(0, 127).map(str), min_size=1, max_size=4)),
            "a": draw(st.lists(_tok, max_size=3)),
        }
        for _ in range(draw(st.integers(0, 4)))
    ]
    addr = draw(st.sampled_from(["127.0.0.1", "::1", "0.0.0.0"]))
    return SDP.new_from_parts({"addr": addr, "a": draw(st.lists(_tok, max_size=2))}, *media)


@given(sdps())
@settings(max_examples=100, deadline=None)
def test_roundtrip(sdp: SDP) -> None:
    assert SDP.new_from_string(sdp.as_string()) == sdp


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: "v=0\r\n" + t)))
@settings(max_examples=300, deadline=None)
def test_fuzz_only_sdperror(data: bytes | str) -> None:
    try:
        sdp = SDP.new_from_string(data)
    except SDPError:
        return
    sdp.get_media()
    with contextlib.suppress(SDPError):
        answer(sdp, addr="127.0.0.1", ports=list(range(1000, 1000 + len(sdp.media))))


def test_new_from_parts_media_lines() -> None:
    sdp = SDP.new_from_parts(
        {"addr": "127.0.0.1"},
        {"port": 4000, "fmt": [0], "b": "AS:64", "a": ["ptime:20"], "addr": "::1"},
    )
    again = SDP.new_from_string(sdp.as_string())
    assert again.media[0].lines == [("b", "AS:64"), ("a", "ptime:20")]
    assert again.media[0].addr == "::1" and again.get_media()[0]["fmt"] == ["0"]
