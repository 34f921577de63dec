"""HTTP digest authentication for SIP (RFC 3261 22, RFC 2617, RFC 7616, RFC 8760).

Ports the ``authorize`` method of Perl's ``Net::SIP::Request`` (the client:
answer the challenges of a 401/407) and the checks of ``Net::SIP::Authorize``
(the server: challenge, then verify the credentials of a request), as pure
functions: no sockets, no clock of its own (the server functions take
``now``), no module-level mutable state. :meth:`netsip.packet.Request.authorize`
calls :func:`authorize`; a message is typed here by the small protocols
:class:`DigestRequest` and :class:`DigestResponse`, which packet's classes
satisfy, so this module sits below :mod:`netsip.packet`.

How it works:

- The algorithms are one table, :data:`ALGORITHMS`: name -> hash function,
  strength, ``-sess`` flag. Everything else (HA1, the response, userhash)
  is written once in terms of an :class:`Algorithm`.
- Challenges and credentials are parsed by one strict scanner of the
  RFC 3261 25.1 grammar (``auth-param = token EQUAL (token /
  quoted-string)``), bounded in length; what does not parse is skipped with
  a log line, never raised.
- Client (:func:`authorize`): the usable Digest challenges of both
  ``WWW-Authenticate`` (answered in ``Authorization``) and
  ``Proxy-Authenticate`` (``Proxy-Authorization``) are grouped by realm; per
  realm the strongest algorithm wins (the first offered among equals). The
  credentials come from ``auth``; the answer replaces the request's
  credentials for that realm. qop ``auth`` is preferred to ``auth-int``
  (cheaper, and survives a body rewritten on the way); without qop the
  answer is RFC 2069's. ``nc`` is counted per nonce in a
  :class:`NonceCounter` (the caller keeps one per context), the cnonce is
  random (``secrets``).
- Rejection (RFC 7616 3.3, ``stale``): a new challenge for a realm the
  request already answered means the credentials were refused unless it says
  ``stale=true``. With the nonce already answered :func:`authorize`
  returns False at once (with ``stale=true`` too: a stale nonce is replaced
  by a new one). With a new nonce and no ``stale`` (servers such as
  Net::SIP's ``Authorize`` make a new nonce for every challenge) it asks
  ``auth`` again and returns False if the credentials it gets produce the
  request's old response: the same credentials, refused again. With
  ``stale=true`` and a new nonce it answers again (``auth`` is asked again:
  nothing here keeps passwords). So a retry loop ends after one refusal.
- Server (:func:`make_nonce`, :func:`make_challenge`, :func:`verify`):
  stateless nonces, ``<time in hex>.<random>.<HMAC-SHA-256(secret,
  "time.random:realm[:opaque]")>``, so any process holding ``secret``
  verifies any other's nonce, and nothing is stored; the random part makes
  each challenge's nonce unique (a server tracking ``nc`` per nonce, as
  :mod:`netsip.authorize` does, needs that). :func:`verify` checks, in
  order: credentials for the realm exist (else ``missing``), are well
  formed, the nonce's HMAC, the ``uri`` against the Request-URI (RFC 7616
  3.4.6), the response hash (constant time), and only then the nonce's
  age: an expired nonce with a correct response is ``stale`` (RFC 7616
  3.3: stale means the credentials are right but the nonce is old),
  anything wrong is ``wrong``.

Differences from Net::SIP:

- Net::SIP answers MD5 with qop ``auth`` (or none) only; here MD5,
  SHA-256, SHA-512-256, each also ``-sess``, qop ``auth`` and ``auth-int``,
  ``userhash`` (RFC 7616 3.4.4), and of several challenges for one realm
  the strongest supported one (Net::SIP answers each challenge it
  supports, so it can send two answers for one realm). RFC 8760 2.4 has a
  UAC use the topmost supported challenge "unless a local policy dictates
  otherwise"; the policy here is the strongest.
- ``nc`` counts per nonce (Net::SIP always sends ``00000001``, which a
  server tracking nc rejects on the second request with the same nonce);
  the cnonce comes from ``secrets`` (Net::SIP: ``rand``).
- Net::SIP never answers a realm the request already carries credentials
  for; here ``stale=true`` is honoured (a new answer with the new nonce)
  and the old credentials of the realm are replaced, so a request carries
  exactly one answer per realm.
- Values are quoted with escapes (Net::SIP pastes them between quotes: a
  ``"`` in a realm broke the header); ``algorithm`` is always sent
  (Net::SIP only echoes it), and a username outside ASCII is sent as UTF-8
  inside the quotes (allowed by RFC 3261 25.1's quoted-string).
- The CSeq bump of Net::SIP is kept: after a successful :func:`authorize`
  the request's CSeq number is above the response's (RFC 3261 22.2), so
  the retry is a new request.
- :func:`verify` replaces ``Net::SIP::Authorize``'s check: the nonce is
  checked (Net::SIP accepts any nonce, even one it never issued, so a
  captured answer can be replayed forever), ``uri`` must name the
  Request-URI, and ACK is checked as INVITE and CANCEL as CANCEL or INVITE,
  as Net::SIP does (RFC 3261 22.1: an ACK carries its INVITE's credentials).
  Net::SIP hashes ``nc`` as ``1`` instead of the ``00000001`` sent, so it
  refuses every qop answer; here the ``nc`` received is hashed. Being
  stateless, :func:`verify` cannot detect a replayed ``nc`` within
  ``max_age``, nor check that the qop used is one the challenge offered.
- ``userhash`` credentials are not verified (``lookup`` takes a user name,
  and a hashed one cannot be looked up): :func:`verify` says ``wrong``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Protocol, TypeAlias
from urllib.parse import unquote

from netsip._log import get_logger
from netsip._sipuri import sip_uri_eq

__all__ = [
    "ALGORITHMS",
    "HA1",
    "Algorithm",
    "Auth",
    "Challenge",
    "DigestRequest",
    "DigestResponse",
    "NonceCounter",
    "Status",
    "Verdict",
    "answer",
    "authorize",
    "credentials_realm",
    "make_challenge",
    "make_nonce",
    "parse_challenges",
    "verify",
]

log = get_logger(__name__)

# --------------------------------------------------------------------------
# the messages, as far as digest needs them
# --------------------------------------------------------------------------


class DigestRequest(Protocol):
    """What digest needs of a request (:class:`netsip.packet.Request` has it)."""

    def method(self) -> str:
        """The request method."""
        ...

    def uri(self) -> str:
        """The Request-URI."""
        ...

    def body(self) -> bytes:
        """The body (``auth-int`` hashes it)."""
        ...

    def get_headers(self, name: str) -> list[str]:
        """The values of header ``name``, in order."""
        ...

    def set_header(self, name: str, value: list[str]) -> None:
        """Replace every value of header ``name`` with ``value``."""
        ...


class DigestResponse(Protocol):
    """What digest needs of a 401/407 (:class:`netsip.packet.Response` has it)."""

    def get_headers(self, name: str) -> list[str]:
        """The values of header ``name`` (the challenges), in order."""
        ...


#: ``(user, password)``
Credentials: TypeAlias = tuple[str, str]
#: the credentials for :func:`authorize`: one pair for every realm, pairs by
#: realm, or a callable ``realm -> pair`` (None: none for that realm)
Auth: TypeAlias = Credentials | Mapping[str, Credentials] | Callable[[str], Credentials | None]

# --------------------------------------------------------------------------
# the algorithms (RFC 7616 3.2, 6.1; RFC 8760 2.1)
# --------------------------------------------------------------------------


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha512_256(data: bytes) -> str:
    # SHA-512/256 (FIPS 180-4): its own initial values, not a truncated SHA-512
    return hashlib.new("sha512_256", data).hexdigest()


@dataclass(frozen=True, slots=True)
class Algorithm:
    """One digest algorithm: ``name`` as written on the wire, the hash
    (bytes -> lower-case hex), a ``strength`` to rank it (higher is
    stronger), and whether it is a ``-sess`` variant (RFC 7616 3.4.2)."""

    name: str
    hash: Callable[[bytes], str]
    strength: int
    sess: bool

    @property
    def base(self) -> str:
        """The name without ``-sess``: the hash an :class:`HA1` is made with."""
        return self.name.removesuffix("-sess")


#: the supported algorithms by upper-case name (RFC 7616 6.1's registry)
ALGORITHMS: Final[Mapping[str, Algorithm]] = MappingProxyType(
    {
        a.name.upper(): a
        for a in (
            Algorithm("MD5", _md5, 1, False),
            Algorithm("MD5-sess", _md5, 1, True),
            Algorithm("SHA-256", _sha256, 2, False),
            Algorithm("SHA-256-sess", _sha256, 2, True),
            Algorithm("SHA-512-256", _sha512_256, 3, False),
            Algorithm("SHA-512-256-sess", _sha512_256, 3, True),
        )
    }
)

# RFC 7616 3.3: "If this is not present, it is assumed to be MD5"
_DEFAULT_ALGORITHM: Final = ALGORITHMS["MD5"]
# what the client picks when offered both (see the module docstring)
_QOP_PREFERENCE: Final = ("auth", "auth-int")


def _enc(text: str) -> bytes:
    # header text is decoded with surrogateescape (netsip.packet): this gives
    # the received octets back; RFC 7616 3.4.4 hashes UTF-8
    return text.encode("utf-8", "surrogateescape")


def _ha1(alg: Algorithm, user: str, realm: str, password: str, *, nonce: str, cnonce: str) -> str:
    """RFC 7616 3.4.2: A1 = user:realm:password, for -sess H(that):nonce:cnonce."""
    ha1 = alg.hash(_enc(f"{user}:{realm}:{password}"))
    return _sess(alg, ha1, nonce, cnonce)


def _sess(alg: Algorithm, ha1: str, nonce: str, cnonce: str) -> str:
    return alg.hash(_enc(f"{ha1}:{nonce}:{cnonce}")) if alg.sess else ha1


def _response(
    alg: Algorithm,
    ha1: str,
    *,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str | None,
    method: str,
    uri: str,
    body: bytes,
) -> str:
    """RFC 7616 3.4.1 (with qop) and RFC 2069 (without): the response hash."""
    h = alg.hash
    # RFC 7616 3.4.3: A2 = Method:request-uri[:H(entity-body)]
    a2 = f"{method}:{uri}:{h(body)}" if qop == "auth-int" else f"{method}:{uri}"
    ha2 = h(_enc(a2))
    data = f"{nonce}:{ha2}" if qop is None else f"{nonce}:{nc}:{cnonce}:{qop}:{ha2}"
    # KD(secret, data) = H(secret:data)
    return h(_enc(f"{ha1}:{data}"))


# --------------------------------------------------------------------------
# parsing: RFC 3261 25.1, RFC 7235 2.1
# --------------------------------------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)  (no CR/LF: packet unfolds)
_QUOTED: Final = r'"[^"\\]*(?:\\.[^"\\]*)*"'
# challenge = ("Digest" LWS digest-cln *(COMMA digest-cln)) / other-challenge
_SCHEME_RE: Final = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|(?=,)|\Z)")
# auth-param = auth-param-name EQUAL (token / quoted-string)
_PARAM_RE: Final = re.compile(rf"[ \t]*({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})[ \t]*")
_COMMAS_RE: Final = re.compile(r"[ \t]*(?:,[ \t]*)+")
_UNESCAPE_RE: Final = re.compile(r"\\(.)")
_ESCAPE_RE: Final = re.compile(r'(["\\])')
# control characters have no place in a value (and could not be sent back)
_CTL_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

#: longest header value parsed (a challenge is some hundred characters)
MAX_VALUE: Final = 8192
#: longest parameter value accepted
MAX_PARAM: Final = 2048
#: header values of one kind looked at per message
MAX_VALUES: Final = 32


class _MalformedError(ValueError):
    """A header value that does not parse; the text says why."""


def _scan(value: str) -> list[tuple[str, dict[str, str]]]:
    """Split a header value into its challenges (or credentials): ``(scheme,
    params)`` with lower-case parameter names and unquoted values.

    Raises:
        _MalformedError: not the RFC 3261 25.1 grammar, too long, a
            parameter twice, a control character.
    """
    if len(value) > MAX_VALUE:
        raise _MalformedError(f"{len(value)} characters")
    if _CTL_RE.search(value):  # (nowhere in the grammar: one search for all values)
        raise _MalformedError("a control character")
    result: list[tuple[str, dict[str, str]]] = []
    end = len(value)
    pos = 0
    m = _COMMAS_RE.match(value, pos)
    if m is not None:
        pos = m.end()
    while pos < end and value[pos:].strip(" \t"):
        sm = _SCHEME_RE.match(value, pos)
        if sm is None:
            raise _MalformedError(f"no scheme at column {pos}")
        pos = sm.end()
        params: dict[str, str] = {}
        while True:
            pm = _PARAM_RE.match(value, pos)
            if pm is None:
                break
            name, raw = pm.group(1).lower(), pm.group(2)
            if raw[:1] == '"':
                raw = raw[1:-1]
                if "\\" in raw:  # (quoted-pairs are rare: skip the regex)
                    raw = _UNESCAPE_RE.sub(r"\1", raw)
            if name in params:
                raise _MalformedError(f"{name} twice")
            if len(raw) > MAX_PARAM:
                raise _MalformedError(f"bad value of {name}")
            params[name] = raw
            pos = pm.end()
            cm = _COMMAS_RE.match(value, pos)
            if cm is None:
                if pos < end:
                    raise _MalformedError(f"no comma at column {pos}")
                break
            pos = cm.end()
        result.append((sm.group(1), params))
    if not result:
        raise _MalformedError("empty")
    return result


def _quote(value: str) -> str:
    return '"' + _ESCAPE_RE.sub(r"\\\1", value) + '"'


# --------------------------------------------------------------------------
# the client
# --------------------------------------------------------------------------

# the answer header for each challenge header (RFC 3261 22.2, 22.3)
_ANSWER_HEADER: Final[Mapping[str, str]] = MappingProxyType(
    {"www-authenticate": "authorization", "proxy-authenticate": "proxy-authorization"}
)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One usable Digest challenge (RFC 7616 3.3).

    Attributes:
        header: the header it came in, ``www-authenticate`` or
            ``proxy-authenticate``.
        realm, nonce, opaque: as received (unquoted).
        algorithm: the algorithm (MD5 when the challenge names none).
        qop: the qop options offered, lower case; empty for RFC 2069.
        stale: ``stale=true``: the nonce was stale, not the credentials.
        userhash: the server accepts a hashed username (RFC 7616 3.4.4).
    """

    header: str
    realm: str
    nonce: str
    algorithm: Algorithm
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False

    @property
    def answer_header(self) -> str:
        """``authorization`` or ``proxy-authorization``."""
        return _ANSWER_HEADER[self.header]


def _challenge(header: str, scheme: str, params: Mapping[str, str]) -> Challenge | str:
    """The challenge of one parsed value, or why it is not usable."""
    if scheme.lower() != "digest":
        return f"scheme {scheme}"
    realm, nonce = params.get("realm"), params.get("nonce")
    if realm is None or nonce is None:
        return "no realm or nonce"
    name = params.get("algorithm")
    alg = _DEFAULT_ALGORITHM if name is None else ALGORITHMS.get(name.upper())
    if alg is None:
        return f"algorithm {name}"
    qop: tuple[str, ...] = ()
    if "qop" in params:
        # qop-options = "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
        qop = tuple(q.strip(" \t").lower() for q in params["qop"].split(","))
        if not any(q in _QOP_PREFERENCE for q in qop):
            return f"qop {params['qop']}"
    if alg.sess and not qop:
        # RFC 2617 3.2.2: no cnonce without qop, and -sess needs one
        return f"{alg.name} without qop"
    return Challenge(
        header=header,
        realm=realm,
        nonce=nonce,
        algorithm=alg,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        userhash=params.get("userhash", "").lower() == "true",
    )


def parse_challenges(header: str, values: Iterable[str]) -> list[Challenge]:
    """The usable Digest challenges among ``values`` of ``header``.

    Other schemes, unknown algorithms, challenges without realm or nonce and
    values that do not parse are skipped with a log line.

    Args:
        header: ``www-authenticate`` or ``proxy-authenticate`` (any case).
        values: the header's values.
    """
    header = header.lower()
    if header not in _ANSWER_HEADER:
        raise ValueError(f"not a challenge header: {header}")
    result: list[Challenge] = []
    for n, value in enumerate(values):
        if n >= MAX_VALUES:
            log.info("digest: more than %d %s values, the rest ignored", MAX_VALUES, header)
            break
        try:
            parsed = _scan(value)
        except _MalformedError as exc:
            log.info("digest: skipping a malformed %s (%s)", header, exc)
            continue
        for scheme, params in parsed:
            ch = _challenge(header, scheme, params)
            if isinstance(ch, str):
                log.info("digest: skipping a %s challenge: %s", header, ch)
            else:
                result.append(ch)
    return result


def _strongest(challenges: Iterable[Challenge]) -> dict[tuple[str, str], Challenge]:
    """Per (header, realm) the strongest challenge; the first among equals."""
    best: dict[tuple[str, str], Challenge] = {}
    for ch in challenges:
        key = (ch.header, ch.realm)
        old = best.get(key)
        if old is None or ch.algorithm.strength > old.algorithm.strength:
            best[key] = ch
    return best


class NonceCounter:
    """``nc`` per nonce (RFC 7616 3.4): the count of requests a client sent
    with a nonce, for the last ``size`` nonces (least recently used dropped).

    An endpoint keeps one per context, so that requests reusing a nonce
    count on; a new nonce starts at 1.
    """

    __slots__ = ("_counts", "size")

    def __init__(self, size: int = 16) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.size = size
        self._counts: OrderedDict[str, int] = OrderedDict()

    def next(self, nonce: str) -> int:
        """Count one more use of ``nonce`` and return the count (1 for a new one)."""
        counts = self._counts
        n = counts.pop(nonce, 0) + 1
        counts[nonce] = n
        if len(counts) > self.size:
            counts.popitem(last=False)
        return n

    def __len__(self) -> int:
        return len(self._counts)


def _choose_qop(offered: Sequence[str]) -> str | None:
    if not offered:
        return None  # RFC 2069 compatibility (RFC 2617 3.2.2.1)
    for q in _QOP_PREFERENCE:
        if q in offered:
            return q
    return None  # (filtered out by _challenge)


def _username(ch: Challenge, user: str) -> str:
    """The username parameter(s): hashed if the server asks for it (RFC 7616
    3.4.4), else quoted (UTF-8 is allowed in a SIP quoted-string)."""
    if ch.userhash:
        return f'username="{ch.algorithm.hash(_enc(f"{user}:{ch.realm}"))}", userhash=true'
    return f"username={_quote(user)}"


def answer(
    ch: Challenge,
    *,
    method: str,
    uri: str,
    body: bytes,
    user: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The credentials (the header value) answering ``ch``.

    Args:
        ch: the challenge.
        method: the request's method.
        uri: the request's Request-URI.
        body: the request's body (``auth-int`` hashes it).
        user: the user name of the credentials.
        password: the password.
        nc: the nonce count (:class:`NonceCounter`).
        cnonce: the client nonce; random if not given (tests give one to
            reproduce the RFC's examples).

    Raises:
        ValueError: ``user`` has a control character (it cannot be sent).
    """
    if _CTL_RE.search(user):
        raise ValueError("a control character in the user name")
    alg = ch.algorithm
    qop = _choose_qop(ch.qop)
    nc_text = f"{nc:08x}"
    if cnonce is None:
        cnonce = secrets.token_hex(8)
    ha1 = _ha1(alg, user, ch.realm, password, nonce=ch.nonce, cnonce=cnonce)
    resp = _response(
        alg,
        ha1,
        nonce=ch.nonce,
        nc=nc_text,
        cnonce=cnonce,
        qop=qop,
        method=method,
        uri=uri,
        body=body,
    )
    parts = [
        _username(ch, user),
        f"realm={_quote(ch.realm)}",
        f"nonce={_quote(ch.nonce)}",
        f"uri={_quote(uri)}",
        f'response="{resp}"',
        f"algorithm={alg.name}",
    ]
    if ch.opaque is not None:
        parts.append(f"opaque={_quote(ch.opaque)}")
    if qop is not None:
        parts += (f"qop={qop}", f"nc={nc_text}", f"cnonce={_quote(cnonce)}")
    return "Digest " + ", ".join(parts)


def _credentials(auth: Auth, realm: str) -> Credentials | None:
    if isinstance(auth, Mapping):
        upw = auth.get(realm)
    elif callable(auth):
        upw = auth(realm)
    else:
        upw = auth
    if upw is None:
        return None
    if (
        not isinstance(upw, (tuple, list))
        or len(upw) != 2
        or not all(isinstance(x, str) for x in upw)
    ):
        raise TypeError(f"credentials must be (user, password), not {upw!r}")
    return upw[0], upw[1]


@dataclass(frozen=True, slots=True)
class _Answered:
    """Credentials of a request (or another client's), parsed."""

    user: str | None  # None: userhash, or a username* that does not decode
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: Algorithm
    qop: str | None
    nc: str
    cnonce: str
    opaque: str | None


def _answered(scheme: str, params: Mapping[str, str]) -> _Answered | str:
    """The credentials of one parsed value, or why they are not usable."""
    if scheme.lower() != "digest":
        return f"scheme {scheme}"
    try:
        realm, nonce, uri, response = (params[k] for k in ("realm", "nonce", "uri", "response"))
    except KeyError as exc:
        return f"no {exc.args[0]}"
    name = params.get("algorithm")
    alg = _DEFAULT_ALGORITHM if name is None else ALGORITHMS.get(name.upper())
    if alg is None:
        return f"algorithm {name}"
    qop = params.get("qop")
    if qop is not None:
        qop = qop.lower()
        if qop not in _QOP_PREFERENCE:
            return f"qop {qop}"
        if "nc" not in params or "cnonce" not in params:
            return "qop without nc or cnonce"
    elif alg.sess:
        return f"{alg.name} without qop"
    user: str | None = params.get("username")
    if params.get("userhash", "").lower() == "true":
        user = None
    elif user is None:
        ext = params.get("username*")
        if ext is None:
            return "no username"
        user = _ext_value(ext)
    return _Answered(
        user=user,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response.lower(),
        algorithm=alg,
        qop=qop,
        nc=params.get("nc", ""),
        cnonce=params.get("cnonce", ""),
        opaque=params.get("opaque"),
    )


def _ext_value(ext: str) -> str | None:
    """RFC 8187 ext-value ``UTF-8''percent-encoded`` (RFC 7616 3.4.4's username*)."""
    charset, sep, rest = ext.partition("'")
    _, sep2, encoded = rest.partition("'")
    if not (sep and sep2) or charset.lower() != "utf-8":
        return None
    try:
        return unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None


def _parse_answers(values: Iterable[str], header: str) -> list[_Answered]:
    result: list[_Answered] = []
    for n, value in enumerate(values):
        if n >= MAX_VALUES:
            break
        try:
            parsed = _scan(value)
        except _MalformedError as exc:
            log.info("digest: skipping a malformed %s (%s)", header, exc)
            continue
        for scheme, params in parsed:
            a = _answered(scheme, params)
            if isinstance(a, str):
                log.info("digest: skipping %s credentials: %s", header, a)
            else:
                result.append(a)
    return result


def _refused(old: _Answered, upw: Credentials, method: str, body: bytes) -> bool:
    """Whether ``old`` (the request's answer for a realm) was made with
    ``upw``: then a challenge without stale means these credentials were
    refused (RFC 7616 3.3)."""
    if old.user is not None and old.user != upw[0]:
        return False
    ha1 = _ha1(old.algorithm, upw[0], old.realm, upw[1], nonce=old.nonce, cnonce=old.cnonce)
    want = _response(
        old.algorithm,
        ha1,
        nonce=old.nonce,
        nc=old.nc,
        cnonce=old.cnonce,
        qop=old.qop,
        method=method,
        uri=old.uri,
        body=body,
    )
    return hmac.compare_digest(want.encode(), _enc(old.response))


def authorize(
    request: DigestRequest,
    response: DigestResponse,
    auth: Auth,
    *,
    nonces: NonceCounter | None = None,
) -> bool:
    """Answer the digest challenges of ``response`` (a 401 or 407) in ``request``.

    Both ``WWW-Authenticate`` and ``Proxy-Authenticate`` are read whatever
    the code (a forking proxy merges them into one response, RFC 3261 16.7).
    Per realm the strongest usable challenge is answered in
    ``Authorization`` or ``Proxy-Authorization``, replacing the request's
    credentials for that realm; other realms' credentials stay. On success
    the CSeq number is raised above the response's, as Net::SIP does (the
    caller takes the new number from the request).

    Args:
        request: the request that was challenged (it may already carry an
            answer to an earlier challenge).
        response: the 401/407.
        auth: ``(user, password)``, a mapping realm -> ``(user, password)``
            or a callable ``realm -> (user, password) | None``.
        nonces: the nonce counts of this context; without it ``nc`` is 1.

    Returns:
        True if the request was given credentials; False, with the request
        unchanged, if no challenge was usable, no credentials were known for
        any realm, or the request's credentials for a realm were refused
        (a repeated challenge without ``stale=true``).

    Raises:
        TypeError: ``auth`` gave something that is not ``(user, password)``.
    """
    method, uri, body = request.method(), request.uri(), request.body()
    challenges = [
        ch
        for header in _ANSWER_HEADER
        for ch in parse_challenges(header, response.get_headers(header))
    ]
    if not challenges:
        log.info("digest: no usable challenge in the response")
        return False
    # decide for every realm first: a refusal leaves request and nonces as they are
    chosen: list[tuple[Challenge, Credentials]] = []
    old_values = {h: request.get_headers(h) for h in _ANSWER_HEADER.values()}
    for ch in _strongest(challenges).values():
        hdr = ch.answer_header
        old = [a for a in _parse_answers(old_values[hdr], hdr) if a.realm == ch.realm]
        # the nonce just answered, again: refused (stale or not: a stale
        # challenge comes with a new nonce, and answering it again would loop)
        if any(a.nonce == ch.nonce for a in old):
            log.info("digest: credentials for realm %r refused", ch.realm)
            return False
        upw = _credentials(auth, ch.realm)
        if upw is None:
            log.info("digest: no credentials for realm %r", ch.realm)
        elif _CTL_RE.search(upw[0]):
            log.info("digest: cannot answer realm %r: a control character in the user", ch.realm)
        elif not ch.stale and any(_refused(a, upw, method, body) for a in old):
            log.info("digest: credentials for realm %r refused", ch.realm)
            return False
        else:
            chosen.append((ch, upw))
    new: dict[str, list[tuple[str, str]]] = {}
    for ch, (user, password) in chosen:
        nc = nonces.next(ch.nonce) if nonces is not None else 1
        value = answer(ch, method=method, uri=uri, body=body, user=user, password=password, nc=nc)
        new.setdefault(ch.answer_header, []).append((ch.realm, value))
    if not new:
        return False
    for hdr, answers in new.items():
        realms = {realm for realm, _ in answers}
        kept = [v for v in old_values[hdr] if credentials_realm(v) not in realms]
        request.set_header(hdr, kept + [v for _, v in answers])
    _bump_cseq(request, response)
    return True


def credentials_realm(value: str) -> str | None:
    """The realm of one ``Authorization``/``Proxy-Authorization`` value
    (None if it has none, holds several credentials, or does not parse):
    a server removes the credentials of its own realm before passing a
    request on (RFC 3261 22.3)."""
    try:
        parsed = _scan(value)
    except _MalformedError:
        return None
    return parsed[0][1].get("realm") if len(parsed) == 1 else None


_CSEQ_RE: Final = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+(\S+)[ \t]*")


def _bump_cseq(request: DigestRequest, response: DigestResponse) -> None:
    """RFC 3261 22.2: the retry with credentials is a new request: CSeq +1."""
    req, resp = request.get_headers("cseq"), response.get_headers("cseq")
    if len(req) != 1 or len(resp) != 1:
        return
    m, r = _CSEQ_RE.fullmatch(req[0]), _CSEQ_RE.fullmatch(resp[0])
    if m is not None and r is not None and int(m.group(1)) <= int(r.group(1)):
        request.set_header("cseq", [f"{int(r.group(1)) + 1} {m.group(2)}"])


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HA1:
    """A stored ``H(user:realm:password)`` in place of the password.

    Attributes:
        hexdigest: the hash, hex.
        algorithm: the hash it was made with (``MD5``, ``SHA-256``,
            ``SHA-512-256``; a ``-sess`` name means the same hash).
    """

    hexdigest: str
    algorithm: str = "MD5"


#: the user's password or HA1; None: no such user
Lookup: TypeAlias = Callable[[str, str], str | HA1 | None]


class Status(StrEnum):
    """The outcome of :func:`verify`."""

    OK = "ok"
    #: the credentials are right but the nonce expired: challenge again with
    #: ``stale=True`` (the client retries without asking its user)
    STALE = "stale"
    #: credentials for the realm, but not right (or not readable)
    WRONG = "wrong"
    #: no credentials for the realm: challenge
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`verify` found.

    Attributes:
        status: see :class:`Status`.
        user: the user the credentials name (None if none could be read).
        algorithm: the algorithm the client used (None without credentials).
        nonce, nc, qop: what the credentials judged said (None without
            credentials, ``nc`` and ``qop`` also None for an RFC 2069
            answer): a server tracking ``nc`` (RFC 7616 3.4, replays within
            the nonce's age) needs them. Not compared: a verdict is its
            status, user and algorithm.
    """

    status: Status
    user: str | None = None
    algorithm: str | None = None
    nonce: str | None = field(default=None, compare=False)
    nc: str | None = field(default=None, compare=False)
    qop: str | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        """``status is Status.OK``."""
        return self.status is Status.OK


# RFC 3261 22.1: an ACK carries the credentials of its INVITE; a CANCEL
# those of its own or (as Net::SIP accepts) of the INVITE
_CHECKED_AS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"ACK": ("INVITE",), "CANCEL": ("CANCEL", "INVITE")}
)
# <time in hex>.<random>.<HMAC>: the random part makes every challenge's
# nonce its own (a server counting nc per nonce tells clients apart by it)
_NONCE_RE: Final = re.compile(r"(([0-9a-f]{1,16})\.[0-9a-f]{16})\.([0-9a-f]{64})")


def _secret(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _nonce_mac(secret: bytes, stamp: str, realm: str, opaque: str | None) -> str:
    data = f"{stamp}:{realm}" if opaque is None else f"{stamp}:{realm}:{opaque}"
    return hmac.digest(secret, _enc(data), "sha256").hex()  # (the one-shot C path)


def make_nonce(realm: str, *, secret: bytes | str, opaque: str | None = None, now: float) -> str:
    """A new nonce: ``<now in hex>.<16 random hex digits>.<HMAC-SHA-256(secret,
    "now.random:realm[:opaque]")>``. :func:`verify` checks it with ``secret``
    alone; the random part makes it unique, so that a server counting ``nc``
    per nonce (RFC 7616 3.4) does not mistake two clients for a replay.

    Args:
        realm: the realm it is for.
        secret: the server's key.
        opaque: the challenge's ``opaque`` (covered by the HMAC).
        now: the current time in seconds.
    """
    stamp = f"{int(now):x}.{secrets.token_hex(8)}"
    return f"{stamp}.{_nonce_mac(_secret(secret), stamp, realm, opaque)}"


def make_challenge(
    realm: str,
    *,
    secret: bytes | str,
    algorithm: str = "MD5",
    qop: Sequence[str] = ("auth",),
    stale: bool = False,
    opaque: str | None = None,
    now: float,
    nonce: str | None = None,
) -> str:
    """A Digest challenge: the value of a ``WWW-Authenticate`` (401) or
    ``Proxy-Authenticate`` (407) header.

    The nonce is a new one of :func:`make_nonce`, or ``nonce`` (made by
    :func:`make_nonce` with the same realm, secret and opaque: the
    challenges of one response for several algorithms can share one).

    Args:
        realm: the protection space, e.g. the domain (RFC 3261 22.1).
        secret: the server's key (the same in every process verifying).
        algorithm: a name of :data:`ALGORITHMS`.
        qop: the qop options, ``auth`` and/or ``auth-int``; empty for an
            RFC 2069 challenge (not with a ``-sess`` algorithm: its A1
            needs the cnonce that comes with a qop).
        stale: set when :func:`verify` said ``stale``.
        opaque: echoed by the client, covered by the nonce's HMAC.
        now: the current time in seconds (the event loop's ``looptime``).
        nonce: the nonce to send (default: a new one).

    Raises:
        ValueError: unknown algorithm or qop, ``-sess`` without qop, a
            control character in realm or opaque, a ``nonce`` not of
            :func:`make_nonce`.
    """
    alg = ALGORITHMS.get(algorithm.upper())
    if alg is None:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    for q in qop:
        if q not in _QOP_PREFERENCE:
            raise ValueError(f"unknown qop {q!r}")
    if alg.sess and not qop:
        raise ValueError(f"{alg.name} needs a qop (RFC 2617 3.2.2)")
    for what, text in (("realm", realm), ("opaque", opaque or "")):
        if _CTL_RE.search(text):
            raise ValueError(f"a control character in the {what}")
    if nonce is None:
        nonce = make_nonce(realm, secret=secret, opaque=opaque, now=now)
    elif not _NONCE_RE.fullmatch(nonce):
        raise ValueError(f"not a nonce of make_nonce: {nonce!r}")
    parts = [f"realm={_quote(realm)}", f'nonce="{nonce}"', f"algorithm={alg.name}"]
    if qop:
        parts.append(f'qop="{",".join(qop)}"')
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts)


def verify(
    request: DigestRequest,
    *,
    realm: str,
    secret: bytes | str,
    lookup: Lookup,
    now: float,
    max_age: float = 300,
    proxy: bool = False,
) -> Verdict:
    """Check the request's credentials for ``realm``.

    Args:
        request: the request.
        realm: the realm the credentials must be for (others are ignored).
        secret: the key :func:`make_challenge` used.
        lookup: ``(user, realm) -> password | HA1 | None`` (None: no such user).
        now: the current time in seconds.
        max_age: seconds a nonce is good for; an older one with a correct
            answer gives ``stale``.
        proxy: read ``Proxy-Authorization`` (a proxy's 407) instead of
            ``Authorization``.

    Returns:
        The :class:`Verdict`. With several credentials for the realm, the
        best of their verdicts.
    """
    header = "proxy-authorization" if proxy else "authorization"
    mine = [a for a in _parse_answers(request.get_headers(header), header) if a.realm == realm]
    if not mine:
        return Verdict(Status.MISSING)
    key = _secret(secret)
    verdicts = [
        _verify_one(a, request, secret=key, lookup=lookup, now=now, max_age=max_age) for a in mine
    ]
    rank = (Status.OK, Status.STALE, Status.WRONG)
    return min(verdicts, key=lambda v: rank.index(v.status))


def _verify_one(
    a: _Answered,
    request: DigestRequest,
    *,
    secret: bytes,
    lookup: Lookup,
    now: float,
    max_age: float,
) -> Verdict:
    alg = a.algorithm

    nc = a.nc if a.qop is not None else None

    def verdict(status: Status) -> Verdict:
        return Verdict(status, a.user, alg.name, nonce=a.nonce, nc=nc, qop=a.qop)

    def wrong(why: str, *args: object) -> Verdict:
        log.info("digest: credentials of %r refused: " + why, a.user, *args)
        return verdict(Status.WRONG)

    if a.user is None:
        return wrong("no username readable (userhash is not supported)")
    m = _NONCE_RE.fullmatch(a.nonce)
    if m is None:
        return wrong("not our nonce")
    stamp = m.group(2)
    if not hmac.compare_digest(
        _nonce_mac(secret, m.group(1), a.realm, a.opaque).encode(), m.group(3).encode()
    ):
        return wrong("not our nonce (or a different opaque)")
    age = now - int(stamp, 16)
    if age < -max_age:
        return wrong("a nonce from the future")
    # RFC 7616 3.4.6: the uri must name the resource of the Request-URI
    ruri = request.uri()
    if a.uri != ruri and not sip_uri_eq(a.uri, ruri):
        return wrong("uri %r is not the Request-URI %r", a.uri, ruri)
    secret_of_user = lookup(a.user, a.realm)
    if secret_of_user is None:
        return wrong("unknown user")
    if isinstance(secret_of_user, HA1):
        if secret_of_user.algorithm.upper().removesuffix("-SESS") != alg.base.upper():
            return wrong("an HA1 for %s, not %s", secret_of_user.algorithm, alg.name)
        ha1 = _sess(alg, secret_of_user.hexdigest.lower(), a.nonce, a.cnonce)
    else:
        ha1 = _ha1(alg, a.user, a.realm, secret_of_user, nonce=a.nonce, cnonce=a.cnonce)
    method = request.method()
    methods = _CHECKED_AS.get(method, (method,))
    body = request.body()
    given = _enc(a.response)
    for meth in methods:
        want = _response(
            alg,
            ha1,
            nonce=a.nonce,
            nc=a.nc,
            cnonce=a.cnonce,
            qop=a.qop,
            method=meth,
            uri=a.uri,
            body=body,
        )
        if hmac.compare_digest(want.encode(), given):
            break
    else:
        return wrong("wrong response")
    return verdict(Status.STALE if age > max_age else Status.OK)
