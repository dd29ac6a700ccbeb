"""API keys (stored as SHA-256 hashes, with scopes) and token-bucket rate limits."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from dataclasses import dataclass

from infrastructure.configuration.models import ApiKey, RateLimit, RateLimits

KEY_PREFIX = "uici_"


def new_key() -> str:
    """A fresh random API key (192 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]

    @property
    def is_webhook(self) -> bool:
        return "webhook" in self.scopes


def presented_secret(authorization: str | None) -> str | None:
    """The secret of an `Authorization: Bearer <key>` or `Basic base64(user:key)` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


class KeyRing:
    """Looks a presented key up by comparing its hash with every configured hash in constant
    time (no early exit, so the timing says nothing about which key or how much matched)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(k.sha256, k) for k in keys if k.sha256]

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, authorization: str | None) -> Principal | None:
        secret = presented_secret(authorization)
        if secret is None or len(secret) > 512:
            return None
        digest = key_hash(secret)
        found: ApiKey | None = None
        for configured, key in self._keys:
            if hmac.compare_digest(configured, digest):
                found = key
        return None if found is None else Principal(found.name, frozenset(found.scopes))


class TokenBuckets:
    """One bucket per name; `take` answers 0 when allowed, else the seconds to wait."""

    def __init__(self, limit: RateLimit, max_buckets: int = 100_000) -> None:
        self.rate = limit.requests_per_second
        self.burst = float(limit.burst)
        self.max_buckets = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._store(name, tokens - 1, now)
                return 0.0
            self._store(name, tokens, now)
            return (1 - tokens) / self.rate

    def _store(self, name: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= self.max_buckets and name not in self._buckets:
            # Full buckets carry no information: forget them first (bounded memory under a flood).
            self._buckets = {
                n: (t, a)
                for n, (t, a) in self._buckets.items()
                if t + (now - a) * self.rate < self.burst
            }
        self._buckets[name] = (tokens, now)


class RateLimiter:
    def __init__(self, limits: RateLimits) -> None:
        self.per_key = TokenBuckets(limits.per_key)
        self.per_address = TokenBuckets(limits.per_address)
        self.webhook = TokenBuckets(limits.webhook)

    def check(self, principal: Principal | None, address: str) -> tuple[str, int] | None:
        """None when allowed; else (bucket kind, whole seconds to wait).

        A request with a valid key is charged to its key's bucket only; the address bucket
        limits requests without one (missing or bad keys). So a flood of bad keys from behind
        the same ingress address cannot lock an operator out of approvals."""
        if principal is not None and principal.is_webhook:
            # Alertmanager is one address sending bursts: its credential has its own bucket.
            wait = self.webhook.take(principal.name)
            return ("webhook", _seconds(wait)) if wait else None
        if principal is not None:
            wait = self.per_key.take(principal.name)
            return ("key", _seconds(wait)) if wait else None
        wait = self.per_address.take(address)
        return ("address", _seconds(wait)) if wait else None


def client_address(peer: str, forwarded_for: str | None, trusted: list[str]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    address in X-Forwarded-For that is not itself a trusted proxy (the header's left part is
    whatever the client wrote, so it is read from the right)."""
    networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def is_trusted(address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in networks)

    if not forwarded_for or not is_trusted(peer):
        return peer
    chain = [part.strip() for part in forwarded_for.split(",")][-20:]
    client = peer
    for hop in reversed(chain):
        ip = _ip(hop)
        if ip is None:
            break  # garbage: stop at the last address a trusted hop vouched for
        client = str(ip)
        if not is_trusted(client):
            break
    return client


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as proxies write it: bare, `[v6]:port`, `v4:port`, or v4-mapped v6."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
