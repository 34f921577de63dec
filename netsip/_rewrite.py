"""Contact rewriting for :class:`netsip.proxy.StatelessProxy` (``Net::SIP::StatelessProxy``).

A proxy between two networks rewrites the Contact of what it forwards so
that the peer's next request in the dialog comes back through the proxy: the
Contact becomes ``sip:b<TOKEN>@<proxy leg>``, where ``TOKEN`` carries the
original Contact, encrypted and authenticated, with the legs it came in and
went out on. A request for that URI is rewritten back (the proxy calls the
same function with the token).

How it works: :class:`DefaultRewriteContact` is Perl's
``_default_rewrite_contact``: ``pack("nn", leg_in, leg_out) + contact``,
encrypted with the ``rewrite_crypt`` function, base32 (RFC 4648 alphabet
``A-Z2-7``, no padding) with a ``b`` in front so that it never looks like a
telephone number. :class:`ContactCrypt` is the default ``rewrite_crypt``.

Differences from Net::SIP:

- the default cipher is HMAC-SHA256 in counter mode with a random 8-byte
  nonce and an 8-byte HMAC-SHA256 tag over nonce, ciphertext and the
  dispatcher's leg layout (encrypt-then-MAC, keys from a random per-process
  secret or one you give, so several processes can share it); Perl uses RC4
  with a 4-byte MD5 checksum and calls it "in no way cryptographic safe";
- the token holds the whole Contact URI with its scheme (Perl drops the
  ``sip:``/``sips:`` and takes it from the request URI on the way back).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from netsip._log import get_logger
from netsip.leg import Leg
from netsip.util import Var, sip_uri_eq

if TYPE_CHECKING:
    from netsip.dispatcher import Dispatcher

__all__ = ["ContactCrypt", "CryptFn", "DefaultRewriteContact", "decode_base32", "encode_base32"]

log = get_logger("netsip.proxy")

#: ``rewrite_crypt(data, dir, add2mac)``: encrypt (``dir`` > 0) or decrypt
#: (``dir`` < 0) ``data``; None when decryption fails (the MAC does not match).
CryptFn = Callable[[bytes, int, bytes], "bytes | None"]

_TOKEN_RX = re.compile(r"b([A-Z2-7]+)\Z")
_NONCE = 8
_TAG = 8


def encode_base32(data: bytes) -> str:
    """RFC 4648 base32 without padding (Perl's ``_encode_base32``)."""
    return base64.b32encode(data).decode("ascii").rstrip("=")


def decode_base32(text: str) -> bytes | None:
    """The reverse of :func:`encode_base32`; None if ``text`` is not base32."""
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8), casefold=True)
    except (binascii.Error, ValueError):
        return None


class ContactCrypt:
    """The default ``rewrite_crypt``: authenticated encryption of a rewritten Contact.

    Args:
        key: the secret (any length); default 32 random bytes for this
            process. Proxies that must understand each other's Contacts
            share a key.
    """

    __slots__ = ("_enc", "_mac")

    def __init__(self, key: bytes | None = None) -> None:
        secret = key if key is not None else secrets.token_bytes(32)
        self._enc = hmac.new(secret, b"netsip contact enc", hashlib.sha256).digest()
        self._mac = hmac.new(secret, b"netsip contact mac", hashlib.sha256).digest()

    def _stream(self, nonce: bytes, size: int) -> bytes:
        out = bytearray()
        counter = 0
        while len(out) < size:
            block = nonce + struct.pack("!I", counter)
            out += hmac.new(self._enc, block, hashlib.sha256).digest()
            counter += 1
        return bytes(out[:size])

    def _tag(self, nonce: bytes, ct: bytes, add2mac: bytes) -> bytes:
        return hmac.new(self._mac, nonce + ct + add2mac, hashlib.sha256).digest()[:_TAG]

    def __call__(self, data: bytes, dir: int, add2mac: bytes = b"") -> bytes | None:
        """Encrypt (``dir`` > 0) or decrypt (``dir`` < 0) ``data``."""
        if dir > 0:
            nonce = secrets.token_bytes(_NONCE)
            ct = bytes(a ^ b for a, b in zip(data, self._stream(nonce, len(data)), strict=True))
            return nonce + ct + self._tag(nonce, ct, add2mac)
        if len(data) < _NONCE + _TAG:
            return None
        nonce, ct, tag = data[:_NONCE], data[_NONCE:-_TAG], data[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(nonce, ct, add2mac)):
            return None
        return bytes(a ^ b for a, b in zip(ct, self._stream(nonce, len(ct)), strict=True))


class DefaultRewriteContact:
    """Perl's ``_default_rewrite_contact``: the proxy's ``rewrite_contact`` unless one is given.

    Called as ``(contact, leg_in, leg_out, force)``:

    * with a Contact URI (``force`` true, or the URI has a user part): returns
      the token (``b`` + base32) that stands for it;
    * with a token: returns the original Contact URI, or None if the token
      is not one of ours, or the legs do not fit (it went out on another leg
      than the one the request comes in on). If ``leg_out`` is a
      :class:`~netsip.util.Var`, it is set to the leg the Contact originally
      came in on (where the request must go); if it is a Leg, that leg must
      be the one.

    Args:
        crypt: the ``rewrite_crypt`` function.
        dispatcher: for the leg numbers.
    """

    def __init__(self, crypt: CryptFn, dispatcher: Dispatcher) -> None:
        self.crypt = crypt
        self.dispatcher = dispatcher

    def _legdict(self) -> bytes:
        # the MAC covers the leg layout: a token does not survive a changed one
        return "|".join(leg.key() for leg in self.dispatcher.legs).encode()

    def __call__(
        self, contact: str, leg_in: Leg, leg_out: Leg | Var[Leg] | None = None, force: bool = False
    ) -> str | None:
        disp = self.dispatcher
        i_in, i_out = disp.legs2i(leg_in, leg_out if isinstance(leg_out, Leg) else leg_in)
        legdict = self._legdict()
        if force or "@" in contact:
            data = struct.pack("!HH", i_in & 0xFFFF, i_out & 0xFFFF) + contact.encode()
            enc = self.crypt(data, 1, legdict)
            if enc is None:
                return None
            return "b" + encode_base32(enc)
        m = _TOKEN_RX.match(contact)
        if m is None:
            return None
        raw = decode_base32(m.group(1))
        old = self.crypt(raw, -1, legdict) if raw is not None else None
        if old is None or len(old) < 4:
            log.debug("no rewriting of %s: not our token", contact)
            return None
        old_in, old_out = struct.unpack("!HH", old[:4])
        try:
            original = old[4:].decode()
        except UnicodeDecodeError:
            return None
        legs = disp.legs
        if old_in >= len(legs) or old_out >= len(legs):
            log.debug("no rewriting of %s: its legs are gone", contact)
            return None
        if i_in != old_out and not _same_leg(leg_in, legs[old_out]):
            log.debug(
                "no rewriting of %s: went out through %s, came in through %s",
                contact,
                legs[old_out].contact,
                leg_in.contact,
            )
            return None
        if isinstance(leg_out, Var):
            leg_out.value = legs[old_in]
        elif isinstance(leg_out, Leg) and i_out != old_in and not _same_leg(leg_out, legs[old_in]):
            log.debug(
                "no rewriting of %s: came in through %s, would go out through %s",
                contact,
                legs[old_in].contact,
                leg_out.contact,
            )
            return None
        return original


def _same_leg(a: Leg, b: Leg) -> bool:
    return a is b or a.contact == b.contact or sip_uri_eq(a.contact, b.contact)
