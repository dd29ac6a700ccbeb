"""One back-off policy for every client UICI retries (the Kubernetes and OCI executors, the
LLM client): the server's Retry-After when it gives one, else exponential from a base, and
never more than a configured cap."""

from __future__ import annotations


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None when absent or an HTTP date (then the
    configured back-off applies)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def retry_delay(
    retry_after: float | None, attempt: int, backoff_seconds: float, cap_seconds: float
) -> float:
    """How long to wait before attempt `attempt + 1` (attempts count from 1)."""
    delay = retry_after if retry_after is not None else backoff_seconds * 2 ** (attempt - 1)
    return float(min(delay, cap_seconds))
