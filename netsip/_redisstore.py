"""A registrar store on Redis, shared by several netsip processes.

Net::SIP keeps registrations in the registrar's own hash: one process, lost
on restart. :class:`RedisStore` implements
:class:`~netsip.registrar.RegistrationStore` on a Redis server, so that
several netsip processes (``netsip proxy --workers N``, or processes on
several machines behind a load balancer) serve the same registrations: what
one process stores, the next ``get`` of any other returns.

Layout: one Redis hash per address of record, ``netsip:reg:<aor>``. A field
is the identity of one binding (:func:`~netsip.registrar.binding_key` of its
contact, or its RFC 5626 instance and reg-id), its value the binding as a
JSON object (``e`` is the expiry). Nothing else is kept: no index, no
sorted set of expiries.

Expiry without a scan: every write sets the hash's TTL (``PEXPIRE``) to the
latest expiry of its bindings, so Redis drops an AOR whose bindings all
expired; :meth:`RedisStore.get` filters the bindings that expired before
that, and every write drops them from the hash. :meth:`RedisStore.expire`
has nothing to do (0) and :meth:`RedisStore.next_expiry` is None, so the
registrar arms no timer. The TTL is set relative to ``now`` (``PEXPIRE
latest-now``, not ``PEXPIREAT latest``): a binding's expiry is on the
registrar's loop clock, and a relative TTL stays right when that clock is
not Redis' (another machine with some skew, a test's fake clock). The
processes sharing a store must share a clock for the expiries they compare
(:meth:`get` filters with the caller's ``now``): the wall clock, the
default of :class:`~netsip.eventloop.EventLoop`, kept by NTP.

Atomic updates: the registrar reads an AOR (:meth:`get`), decides, and
writes the new bindings (:meth:`put`). Another process may have changed the
AOR in between, so :meth:`put` does not overwrite the hash: it sends what
changed since the ``get`` just before it (bindings added, changed, removed),
each with the value it had then, to a Lua script that applies all of them
only if none of those bindings changed meanwhile (one round trip, atomic in
Redis; one key per call, so Redis Cluster could shard the AORs). So two
processes that refresh different contacts of one AOR at the same time both
keep theirs; two that change the same binding at the same time: the second
fails (``OSError``, the registrar answers 500 and the client retries). A
:meth:`put` without a ``get`` of that AOR just before it replaces the whole
AOR. (A merge may leave an AOR with more than the registrar's
``max_contacts`` bindings, by at most those added at the same time.)

Failures: the client is redis-py's blocking one, on the event loop's
thread, so every Redis call has a short bound. Each network step (connect,
the reply to a command) waits at most ``timeout`` seconds (default 0.25);
a REGISTER makes two calls (``HGETALL``, then ``EVALSHA``, plus ``EVAL``
once if Redis lost the script); redis-py does not retry. The bound on the
loop's stall per REGISTER is therefore a few timeouts: about 4 x ``timeout``
(1 s at the default: a new connection and its handshake, ``HGETALL``,
``EVALSHA``) for a Redis that answers each step just in time; a Redis that
hangs costs one ``timeout``, then the back-off below applies. When Redis is
down a call fails at once (connection refused) and the next one connects
again, so the store recovers by itself when Redis comes back. When Redis
does not answer in time, the loop stalled for ``timeout``: for the next
``backoff`` seconds (default 1, on the caller's clock) :meth:`get` and
:meth:`put` fail at once instead of stalling the loop for every request,
then try Redis again. Every error is raised as :class:`RedisStoreError`,
an ``OSError``: the registrar answers a REGISTER with 500, its lookups
find nothing, and everything else keeps being served. Redis going away and
coming back is logged once each.

Performance plan: a REGISTER costs two round trips to Redis (one when
nothing changes); a lookup by the proxy costs one (``HGETALL`` of one small
hash). No call is proportional to the number of AORs but :meth:`aors`
(``SCAN``, for the summary of ``netsip proxy``).

redis-py is an optional dependency (``pip install netsip[redis]``),
imported when a store is made.

Flows are not in Redis: the flow of a binding (RFC 5626, :mod:`netsip.flows`:
the connection a client that accepts none, such as a browser over
WebSocket, registered on) is a socket of one process, kept in that
process's registrar (``Registrar.flows``). A binding that needs a flow is
reached only by the process holding its connection; the others skip it in
their lookups (and do not drop it), so a call for it that lands on another
process finds nobody there (480). With ``netsip proxy --workers N`` the
kernel spreads connections over the workers: run WebSocket clients
against one process, or accept that.

Differences from Net::SIP: Net::SIP has no shared store (its registrar
keeps a hash in the process).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from netsip._log import get_logger
from netsip.registrar import Binding, binding_key

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStore", "RedisStoreError"]

log = get_logger(__name__)

#: seconds a network step (connect, a reply) may take
DEFAULT_TIMEOUT: Final = 0.25
#: seconds the store fails at once after Redis did not answer in time
DEFAULT_BACKOFF: Final = 1.0
#: the prefix of the per-AOR hashes
DEFAULT_PREFIX: Final = "netsip:reg:"

# KEYS[1]: the hash of one AOR. ARGV[1]: now (the caller's clock, seconds);
# ARGV[2]: "merge" (check every expected value first) or "replace" (start
# from an empty hash); then triples: field, expected value ("" = absent),
# new value ("" = remove). Then drop expired bindings (and undecodable
# ones), and set the TTL to the latest expiry, or delete the hash.
# Returns the number of bindings left; an error reply "CONFLICT <field>"
# if a binding changed since the caller read it.
_PUT_SCRIPT: Final = """
local key, now = KEYS[1], tonumber(ARGV[1])
if ARGV[2] == "replace" then
  redis.call("DEL", key)
else
  for i = 3, #ARGV, 3 do
    if (redis.call("HGET", key, ARGV[i]) or "") ~= ARGV[i + 1] then
      return redis.error_reply("CONFLICT " .. ARGV[i])
    end
  end
end
for i = 3, #ARGV, 3 do
  if ARGV[i + 2] == "" then
    redis.call("HDEL", key, ARGV[i])
  else
    redis.call("HSET", key, ARGV[i], ARGV[i + 2])
  end
end
local latest, left = nil, 0
local all = redis.call("HGETALL", key)
for i = 1, #all, 2 do
  local ok, b = pcall(cjson.decode, all[i + 1])
  local e = ok and type(b) == "table" and tonumber(b.e) or nil
  if e == nil or e <= now then
    redis.call("HDEL", key, all[i])
  else
    left = left + 1
    if latest == nil or e > latest then latest = e end
  end
end
if latest == nil then
  redis.call("DEL", key)
else
  redis.call("PEXPIRE", key, math.ceil((latest - now) * 1000))
end
return left
"""


class RedisStoreError(OSError):
    """Redis failed, did not answer in time, or a binding changed meanwhile."""


def _field(b: Binding) -> str:
    """The identity of a binding in its AOR's hash (as the registrar matches them)."""
    if b.reg_id is not None:
        return f"flow {b.instance} {b.reg_id}"  # RFC 5626 6: instance and reg-id
    return binding_key(b.contact)  # RFC 3261 19.1.4


def encode_binding(b: Binding) -> str:
    """A binding as the JSON object stored in Redis (defaults left out)."""
    obj: dict[str, object] = {"c": b.contact, "e": b.expires, "i": b.callid, "n": b.cseq}
    if b.q is not None:
        obj["q"] = b.q
    if b.params:
        obj["p"] = b.params
    if b.path:
        obj["r"] = list(b.path)
    if b.instance is not None:
        obj["s"] = b.instance
    if b.reg_id is not None:
        obj["g"] = b.reg_id
    return json.dumps(obj, separators=(",", ":"))


def decode_binding(text: str) -> Binding:
    """The binding stored as ``text`` by :func:`encode_binding`.

    Raises:
        ValueError: not such an object (another program wrote the key).
    """
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    contact, expires, callid, cseq = obj.get("c"), obj.get("e"), obj.get("i"), obj.get("n")
    q, params, path = obj.get("q"), obj.get("p", ""), obj.get("r", [])
    instance, reg_id = obj.get("s"), obj.get("g")
    if not (
        isinstance(contact, str)
        and isinstance(expires, int | float)
        and isinstance(callid, str)
        and isinstance(cseq, int)
        and (q is None or isinstance(q, int | float))
        and isinstance(params, str)
        and isinstance(path, list)
        and all(isinstance(p, str) for p in path)
        and (instance is None or isinstance(instance, str))
        and (reg_id is None or isinstance(reg_id, int))
    ):
        raise ValueError("missing or mistyped members")
    return Binding(
        contact=contact,
        expires=float(expires),
        callid=callid,
        cseq=cseq,
        q=None if q is None else float(q),
        params=params,
        path=tuple(path),
        instance=instance,
        reg_id=reg_id,
    )


class RedisStore:
    """Bindings in Redis, one hash per AOR with a TTL (a :class:`RegistrationStore`).

    Args:
        url: where Redis is: ``redis://[[user]:password@]host[:port][/db]``
            (``rediss://`` for TLS, ``unix:///path?db=N``), as redis-py reads it.
        timeout: seconds each network step (connect, one reply) may take.
        backoff: seconds :meth:`get` and :meth:`put` fail at once after a
            timeout, instead of waiting again.
        prefix: the prefix of the keys.
        client: a redis-py client to use instead of one made from ``url``
            (its timeouts and retries are the caller's business).

    Raises:
        ImportError: redis-py is not installed (``pip install netsip[redis]``).
        ValueError: ``url`` is not a Redis URL, or ``timeout`` is not positive.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: float = DEFAULT_BACKOFF,
        prefix: str = DEFAULT_PREFIX,
        client: redis.Redis | None = None,
    ) -> None:
        if not timeout > 0 or backoff < 0:
            raise ValueError(f"need timeout > 0 and backoff >= 0, not {timeout}, {backoff}")
        self.url = url
        self.prefix = prefix
        self.backoff = backoff
        try:
            import redis  # noqa: PLC0415  (optional: netsip[redis])
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415
        except ImportError as exc:
            raise ImportError(
                "the Redis store needs redis-py: pip install 'netsip[redis]'"
            ) from exc
        self._answered: type[Exception] = redis.ResponseError
        self._noscript: type[Exception] = redis.exceptions.NoScriptError
        self._failed: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._timeout: type[Exception] = redis.TimeoutError
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),  # (its default retries would multiply the stall)
                health_check_interval=0,
            )
        self._client: redis.Redis = client
        #: (redis-py leaves it unannotated: its replies depend on the command)
        self._execute: Callable[..., object] = client.execute_command
        self._sha: str | None = None
        #: what the last get read: (aor, {field: (binding, or None if expired
        #: or undecodable; the text in Redis)}), for the put that follows it
        self._seen: tuple[str, dict[str, tuple[Binding | None, str]]] | None = None
        #: until when (caller's clock) calls fail at once after a timeout
        self._down_until: float | None = None
        #: whether the last call failed (to log going down and coming back once)
        self._failing = False

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    def key(self, aor: str) -> str:
        """The Redis key of ``aor``'s hash."""
        return self.prefix + aor

    # ---------------------------------------------------------------- the protocol

    def get(self, aor: str, now: float) -> list[Binding]:
        """The bindings of ``aor`` not expired at ``now`` (:meth:`RegistrationStore.get`)."""
        self._seen = None
        raw = self._call(now, "HGETALL", self.key(aor))
        if not isinstance(raw, dict):
            raise RedisStoreError(f"HGETALL {self.key(aor)}: unexpected reply {raw!r:.80}")
        seen: dict[str, tuple[Binding | None, str]] = {}
        live: list[Binding] = []
        for f, v in raw.items():
            field, text = _text(f), _text(v)
            try:
                b: Binding | None = decode_binding(text)
            except ValueError as exc:
                log.warning("%s field %r: not a binding (%s): ignored", self.key(aor), field, exc)
                b = None
            if b is not None and b.expires > now:
                live.append(b)
            else:
                b = None  # (expired: the next write drops it)
            seen[field] = (b, text)
        self._seen = (aor, seen)
        return live

    def put(self, aor: str, bindings: Sequence[Binding], now: float) -> None:
        """Replace the bindings of ``aor`` atomically, a Lua script (:meth:`RegistrationStore.put`).

        After a :meth:`get` of the same AOR only what changed is written, and a
        binding another process changed meanwhile raises :class:`RedisStoreError`.
        """
        seen = self._seen[1] if self._seen is not None and self._seen[0] == aor else None
        self._seen = None
        new = {_field(b): b for b in bindings}
        args: list[str] = []
        if seen is None:
            mode = "replace"
            for field, b in new.items():
                args += [field, "", encode_binding(b)]
        else:
            mode = "merge"
            for field, b in new.items():
                old, text = seen.get(field, (None, ""))
                if old is None or old != b:
                    args += [field, text, encode_binding(b)]
            for field, (old, text) in seen.items():
                if old is not None and field not in new:
                    args += [field, text, ""]
            if not args:
                return  # nothing changed: no round trip
        try:
            self._script(now, self.key(aor), repr(now), mode, *args)
        except RedisStoreError as exc:
            if not str(exc).startswith("CONFLICT "):
                raise
            raise RedisStoreError(
                f"{aor}: binding {str(exc)[9:]} changed meanwhile (another process): not stored"
            ) from exc

    def delete(self, aor: str) -> None:
        """Forget ``aor`` and its bindings (``DEL`` of its hash)."""
        self._seen = None
        self._call(None, "DEL", self.key(aor))

    def expire(self, now: float) -> int:
        """Nothing to do: Redis expires the hashes (TTL) and :meth:`get` filters."""
        return 0

    def next_expiry(self) -> float | None:
        """None: nothing to schedule."""
        return None

    def aors(self) -> Iterator[str]:
        """The AORs in Redis (``SCAN``: slow with many; for summaries and dumps).

        Raises:
            RedisStoreError: Redis failed.
        """
        found: list[str] = []
        cursor: object = 0
        pattern = _glob_escape(self.prefix) + "*"
        n = len(self.prefix)
        while True:
            reply = self._call(None, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            if not (isinstance(reply, list | tuple) and len(reply) == 2):
                raise RedisStoreError(f"SCAN: unexpected reply {reply!r:.80}")
            cursor, keys = reply
            found.extend(_text(k)[n:] for k in keys)
            if int(_text(cursor)) == 0:
                return iter(found)

    # ---------------------------------------------------------------- management

    def ping(self) -> None:
        """Ask Redis whether it is there.

        Raises:
            RedisStoreError: it is not.
        """
        self._call(None, "PING")

    def close(self) -> None:
        """Close the connections to Redis (the next call opens one again)."""
        self._client.close()

    # ---------------------------------------------------------------- calling Redis

    def _script(self, now: float, key: str, *args: str) -> None:
        """Run the put script: EVALSHA, EVAL if Redis does not know it (a restart)."""
        if self._sha is not None:
            try:
                self._call(now, "EVALSHA", self._sha, 1, key, *args)
                return
            except RedisStoreError as exc:
                if not isinstance(exc.__cause__, self._noscript):
                    raise
        self._call(now, "EVAL", _PUT_SCRIPT, 1, key, *args)
        # EVAL caches the script in Redis: the SHA1 of its text is its name there
        self._sha = hashlib.sha1(_PUT_SCRIPT.encode(), usedforsecurity=False).hexdigest()

    def _call(self, now: float | None, *command: object) -> object:
        """One Redis command; its errors as :class:`RedisStoreError` (an ``OSError``)."""
        if now is not None and self._down_until is not None:
            if now < self._down_until:
                raise RedisStoreError(
                    f"Redis at {self.url} did not answer in time; not asked again "
                    f"for {self._down_until - now:.1f} s"
                )
            self._down_until = None
        try:
            reply = self._execute(*command)
        except self._answered as exc:
            # an answer from Redis (a conflict, NOSCRIPT, a wrong type): it is up
            self._recovered()
            raise RedisStoreError(str(exc)) from exc
        except self._failed as exc:
            if isinstance(exc, self._timeout) and now is not None and self.backoff:
                self._down_until = now + self.backoff
            if not self._failing:
                log.warning("Redis at %s failed: %s", self.url, exc)
            self._failing = True
            raise RedisStoreError(f"Redis at {self.url}: {exc}") from exc
        self._recovered()
        return reply

    def _recovered(self) -> None:
        if self._failing:
            log.warning("Redis at %s answers again", self.url)
        self._failing = False


def _text(value: object) -> str:
    """A reply element as text (redis-py returns bytes unless told to decode)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _glob_escape(text: str) -> str:
    """``text`` literally in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
