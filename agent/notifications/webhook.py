"""The generic webhook: the notification as JSON, signed with HMAC-SHA256.

Each delivery is a `POST` of the `Notification`'s JSON (`Content-Type: application/json`)
with these headers:

- `X-UICI-Event`: the event (`incident.diagnosed`, `approval.needed`, ...).
- `X-UICI-Delivery`: the delivery's id. A retried delivery keeps its id: a receiver that
  has already processed an id answers 2xx again and does nothing (idempotency).
- `X-UICI-Timestamp`: the Unix time of this attempt, in whole seconds.
- `X-UICI-Signature`: `v1=` and the lowercase hex HMAC-SHA256, keyed with the sink's
  `secret`, of the timestamp, a dot, and the raw body: `f"{timestamp}.{body}"`.

Verifying a delivery, step by step (what `verify` does):

1. Read the raw request body as bytes, before any JSON parsing: re-serialised JSON does
   not have the same bytes, and the signature covers the bytes.
2. Read `X-UICI-Timestamp`. Reject the request unless it is an integer within 300 seconds
   (or your tolerance) of your clock, in either direction: this bounds replays.
3. Compute `HMAC-SHA256(key=secret, message=timestamp + "." + body)` with the timestamp
   exactly as sent, and hex-encode it (lowercase).
4. Read `X-UICI-Signature`. It holds one or more comma-separated `v1=<hex>` values (more
   than one while a secret is being rotated); ignore other schemes. Accept the request if
   any `v1` value equals your digest, comparing in constant time
   (`hmac.compare_digest`), never with `==`.
5. Only then parse the JSON. Use `X-UICI-Delivery` to drop a delivery already processed,
   and answer 2xx quickly. Answer 4xx only for a request you will never accept (a bad
   signature: 401): UICI retries 408, 425, 429 (honouring Retry-After) and 5xx answers,
   timeouts and connection errors, and gives up on other 4xx at once.

In Python::

    from agent.notifications.webhook import verify

    ok = verify(secret, raw_body, headers.get("X-UICI-Timestamp"),
                headers.get("X-UICI-Signature"), now=time.time())
"""

from __future__ import annotations

import hashlib
import hmac

from agent.notifications.messages import Notification

EVENT_HEADER = "X-UICI-Event"
DELIVERY_HEADER = "X-UICI-Delivery"
TIMESTAMP_HEADER = "X-UICI-Timestamp"
SIGNATURE_HEADER = "X-UICI-Signature"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _digest(secret: str | bytes, body: bytes, timestamp: str) -> str:
    message = timestamp.encode("ascii") + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    """The `X-UICI-Signature` value for `body` sent at `timestamp`: `v1=<hex>`."""
    return f"{SIGNATURE_SCHEME}={_digest(secret, body, str(int(timestamp)))}"


def verify(
    secret: str | bytes,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """Whether a received delivery is authentic and fresh (see the module's docstring)."""
    if not timestamp_header or not signature_header:
        return False
    stamp = timestamp_header.strip()
    if not stamp.isascii() or not stamp.isdigit():
        return False
    if abs(now - int(stamp)) > tolerance_seconds:
        return False
    expected = _digest(secret, body, stamp)
    matched = False
    for part in signature_header.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == SIGNATURE_SCHEME and value:
            # no early exit: every candidate is compared, each in constant time
            matched |= hmac.compare_digest(value.strip().encode(), expected.encode())
    return matched


def webhook_body(n: Notification) -> bytes:
    """The exact bytes that are signed and sent."""
    return n.model_dump_json().encode()


def webhook_headers(
    secret: str | bytes, n: Notification, body: bytes, delivery_id: str, timestamp: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: n.event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: sign(secret, body, timestamp),
    }
