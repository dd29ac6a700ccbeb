"""Notification sinks: the message, its Slack and webhook renderings, and one delivery.

The caller (the outbox and its delivery loop) builds a `Notification` from what it knows,
picks the sinks with `sink.accepts(event, severity)`, and calls `send` once per attempt;
`DeliveryResult` says whether to retry and when.
"""

from agent.notifications.delivery import DeliveryResult, NotificationSinkConfig, send
from agent.notifications.messages import (
    ApprovalRequest,
    Notification,
    build_approval,
    build_links,
)
from agent.notifications.slack import slack_payload
from agent.notifications.webhook import sign, verify, webhook_body

__all__ = [
    "ApprovalRequest",
    "DeliveryResult",
    "Notification",
    "NotificationSinkConfig",
    "build_approval",
    "build_links",
    "send",
    "sign",
    "slack_payload",
    "verify",
    "webhook_body",
]
