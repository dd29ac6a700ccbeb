"""Pydantic models of the five configuration files.

Every model is strict (`extra="forbid"`): an unknown key is a typo until proven otherwise.
There are no defaults for behaviour here on purpose: values live in the YAML files, so
a missing setting is an error that names the file and key, not a silent guess.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- shared vocabulary ------------------------------------------------------------------


class EnvironmentType(StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    OCI = "oci"


class RiskLevel(StrEnum):
    READ = "read"
    WRITE = "write"
    DESTRUCTIVE = "destructive"


PHASES = ("triage", "isolation", "root_cause", "resolution")
Phase = Literal["triage", "isolation", "root_cause", "resolution"]

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
OperationName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
# "30s", "5m", "2h", "1d"
Duration = Annotated[str, StringConstraints(pattern=r"^\d+[smhd]$")]


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


Regex = Annotated[str, Field(min_length=1)]


# --- platform.yml -----------------------------------------------------------------------


class PlatformInfo(StrictModel):
    name: NonEmpty
    default_environment: Name


class LLMProvider(StrEnum):
    NONE = "none"
    OPENAI = "openai"
    OPENAI_COMPATIBLE = "openai_compatible"
    ANTHROPIC = "anthropic"


class CircuitBreakerSettings(StrictModel):
    failure_threshold: int = Field(ge=1, le=100)
    reset_seconds: PositiveSeconds


class LLMPricing(StrictModel):
    prompt_per_million_tokens: float = Field(ge=0)
    completion_per_million_tokens: float = Field(ge=0)
    currency: NonEmpty


class LLMSettings(StrictModel):
    provider: LLMProvider
    model: str
    temperature: float = Field(ge=0, le=2)
    max_tokens: int = Field(gt=0, le=1_000_000)
    timeout_seconds: PositiveSeconds
    max_retries: int = Field(ge=0, le=10)
    retry_backoff_seconds: float = Field(ge=0, le=60)
    max_retry_after_seconds: float = Field(ge=0, le=600)
    response_format: Literal["json_schema", "json_object", "prompt"]
    circuit_breaker: CircuitBreakerSettings
    plan_cache_ttl_seconds: float = Field(ge=0, le=86_400)
    pricing: LLMPricing
    api_key: SecretStr | None = None
    base_url: str | None = None

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("base_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _provider_needs(self) -> LLMSettings:
        if self.provider is LLMProvider.NONE:
            return self
        if not self.model:
            raise ValueError(f"provider {self.provider.value!r} needs llm.model to be set")
        if self.provider is LLMProvider.OPENAI_COMPATIBLE and self.base_url is None:
            raise ValueError("provider 'openai_compatible' needs llm.base_url")
        if self.provider in (LLMProvider.OPENAI, LLMProvider.ANTHROPIC) and self.api_key is None:
            raise ValueError(
                f"provider {self.provider.value!r} needs llm.api_key "
                "(reference an environment variable, e.g. ${UICI_LLM_API_KEY})"
            )
        return self


class PrefectDeployments(StrictModel):
    diagnose_incident: NonEmpty
    health_sweep: NonEmpty
    run_operation: NonEmpty


class PrefectSettings(StrictModel):
    api_url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
    work_pool: NonEmpty
    deployments: PrefectDeployments
    # How often a paused flow checks for an approval (Prefect's default is 10 s).
    approval_poll_seconds: int = Field(ge=1, le=300)


class ServiceSettings(StrictModel):
    host: NonEmpty
    port: int = Field(ge=1, le=65535)


def url_problem(text_: str) -> str | None:
    """What makes a store URL unusable, in words that quote none of it (it holds the
    password), or None."""
    from sqlalchemy import exc, make_url  # imported only where a store URL is read

    try:
        url = make_url(text_)
        url.port  # noqa: B018 - a bad port fails here
    except (ValueError, exc.ArgumentError):
        url = None
    # More than one @ is an @ left unencoded in the user or the password: the parser would
    # take a piece of the password for the host or the database.
    if url is None or text_.split("://", 1)[-1].count("@") > 1:
        return (
            "is not a readable URL: write sqlite:///path/to/uici.db or"
            " postgresql://user:password@host:5432/database, percent-encoding any @, :, /, ?"
            " or % in the user or the password (%40, %3A, %2F, %3F, %25)"
        )
    if url.get_backend_name() == "sqlite" and "?" in text_:
        return (
            "names an SQLite file with a query (?...), which UICI does not take: write a ? in"
            " the file name as %3F"
        )
    return None


class StorageSettings(StrictModel):
    # Checked by the validator below, whose messages never quote the URL (it holds a password).
    url: str
    # How long a write transaction waits for another one (SQLite's write lock, PostgreSQL's
    # advisory lock) before it fails.
    lock_timeout_seconds: float = Field(gt=0, le=600)
    # PostgreSQL only: a connection attempt gives up after this; each process keeps a pool.
    connect_timeout_seconds: int = Field(ge=1, le=300)
    pool_size: int = Field(ge=1, le=100)
    max_overflow: int = Field(ge=0, le=100)
    # PostgreSQL only: a statement, or a transaction left idle, that runs longer fails (a
    # database that stopped answering gives a 503, not a request that hangs).
    statement_timeout_seconds: float = Field(gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("sqlite", "postgresql", "postgresql+psycopg", "postgres"):
            shown = f"{scheme}://" if re.fullmatch(r"[a-z][a-z0-9+]*", scheme) else "this URL"
            raise ValueError(
                f"{shown} is not a supported store: use sqlite:///path/to/uici.db (embedded)"
                " or postgresql://user:password@host:5432/database"
            )
        if re.search(r"\s", value):
            raise ValueError("a store URL has no spaces: percent-encode one as %20")
        if scheme == "sqlite" and not value.startswith("sqlite:///"):
            raise ValueError("a SQLite store is sqlite:///relative/path or sqlite:////abs/path")
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class LoggingSettings(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    format: Literal["text", "json"]


class ConfigurationSettings(StrictModel):
    cache_ttl_seconds: float = Field(ge=0, le=86_400)


ApiScope = Literal["read", "operate", "admin", "webhook"]
LabelName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]


def _ip_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or CIDR network ({exc})") from None
    return value


IPNetworkText = Annotated[str, AfterValidator(_ip_network)]


class ApiKey(StrictModel):
    """One credential. Only the SHA-256 of the key is configured; an empty hash disables it."""

    name: Name
    sha256: str | None
    scopes: list[ApiScope] = Field(min_length=1)

    @field_validator("sha256", mode="before")
    @classmethod
    def _empty_hash_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(
                "must be the 64 lowercase hex digits of the key's SHA-256 "
                "(`uici keys new NAME` prints a key and its hash)"
            )
        return value

    @model_validator(mode="after")
    def _webhook_is_separate(self) -> ApiKey:
        # Approvals need a credential other than the webhook's: a webhook key does nothing else.
        if "webhook" in self.scopes and len(self.scopes) > 1:
            raise ValueError("a key with the 'webhook' scope may have no other scope")
        return self


class RateLimit(StrictModel):
    requests_per_second: float = Field(gt=0, le=100_000)
    burst: int = Field(ge=1, le=1_000_000)


class RateLimits(StrictModel):
    per_key: RateLimit
    per_address: RateLimit
    webhook: RateLimit


class DispatchSettings(StrictModel):
    poll_seconds: float = Field(gt=0, le=300)
    batch_size: int = Field(ge=1, le=1000)
    retry_backoff_seconds: float = Field(gt=0, le=600)
    max_backoff_seconds: float = Field(gt=0, le=86_400)
    # A claimed batch is this dispatcher's for this long; then another one may take it.
    lease_seconds: float = Field(gt=0, le=3600)


class EventStreamSettings(StrictModel):
    poll_seconds: float = Field(gt=0, le=60)
    replay_limit: int = Field(ge=1, le=100_000)


class WebhookIntake(StrictModel):
    """The Alertmanager webhook: its own body limit, and how long one value may be."""

    max_body_bytes: int = Field(ge=1024, le=256 * 1024 * 1024)
    max_value_chars: int = Field(ge=64, le=1024 * 1024)


class DeepHealthSettings(StrictModel):
    """GET /health/deep: checked at most once per cache_seconds, whoever asks."""

    cache_seconds: float = Field(ge=0, le=3600)


class ApprovalSettings(StrictModel):
    # allowed: the Prefect UI's Resume form may approve (the approver is unauthenticated and
    # the report says so); disabled: only the API's authenticated approvals count.
    prefect_ui: Literal["allowed", "disabled"]


class ApiSettings(StrictModel):
    max_body_bytes: int = Field(ge=1024, le=64 * 1024 * 1024)
    webhook: WebhookIntake
    cors_origins: list[NonEmpty]
    # Peers (addresses or CIDR networks) whose X-Forwarded-For names the client's address.
    trusted_proxies: list[IPNetworkText]
    metrics_require_key: bool
    readiness_timeout_seconds: PositiveSeconds
    deep_health: DeepHealthSettings
    approvals: ApprovalSettings
    api_keys: list[ApiKey]
    rate_limits: RateLimits
    dispatch: DispatchSettings
    events: EventStreamSettings

    @model_validator(mode="after")
    def _unique_keys(self) -> ApiSettings:
        names = [k.name for k in self.api_keys]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"api_keys: duplicate key names {duplicates}")
        hashes = [k.sha256 for k in self.api_keys if k.sha256]
        if len(hashes) != len(set(hashes)):
            raise ValueError("api_keys: two keys have the same hash (one key, two identities)")
        return self


class AlertRule(StrictModel):
    """Alerts whose labels all fully match these regular expressions go to `environment`."""

    match: dict[LabelName, Regex] = Field(min_length=1)
    environment: Name

    @field_validator("match")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            _check_regex(pattern)
        return value


class AlertMapping(StrictModel):
    environment_labels: list[LabelName]
    rules: list[AlertRule]
    use_default_environment: bool
    target_labels: list[LabelName] = Field(min_length=1)
    namespace_label: LabelName | None = None
    dependencies_label: LabelName | None = None


# Notifications: who hears about an incident, and how (agent/notifications).

NotificationEvent = Literal[
    "incident.diagnosed",
    "approval.needed",
    "approval.expiring",
    "incident.resolved",
    "incident.failed",
    "incident.escalated",
]
NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = (
    "incident.diagnosed",
    "approval.needed",
    "approval.expiring",
    "incident.resolved",
    "incident.failed",
    "incident.escalated",
)
HttpUrlText = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#]+[^\s]*$")]
_HTTP_URL = re.compile(r"^https?://[^\s/?#@]+(?:@[^\s/?#]+)?(?:[/?#]\S*)?$")
# Apprise separates its URLs with spaces or commas; a comma may also sit inside one (mailto's
# `to=a@x,b@y`), so a URL ends only where the next `scheme://` begins.
_APPRISE_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+?(?=$|[\s,]+[a-z][a-z0-9+.-]*://)", re.I)
_WEBHOOK_SECRET_MIN_CHARS = 16


class NotificationDelivery(StrictModel):
    """How the delivery loop treats every sink: one bounded attempt, then backoff."""

    # How often the service looks for new events and due messages, and how many of each
    # it takes per round (per sink for messages).
    poll_seconds: float = Field(gt=0, le=300)
    batch_size: int = Field(ge=1, le=10_000)
    timeout_seconds: float = Field(gt=0, le=300)
    max_attempts: int = Field(ge=1, le=100)
    retry_backoff_seconds: float = Field(gt=0, le=3600)
    max_backoff_seconds: float = Field(gt=0, le=86_400)

    @model_validator(mode="after")
    def _cap_above_start(self) -> NotificationDelivery:
        if self.max_backoff_seconds < self.retry_backoff_seconds:
            raise ValueError("max_backoff_seconds must be at least retry_backoff_seconds")
        return self


class _NotificationSinkBase(StrictModel):
    """One destination. An empty url turns the sink off; the url is a secret (a Slack
    incoming-webhook URL is its own credential), so it is never shown or logged."""

    name: Name
    url: SecretStr | None
    events: list[NotificationEvent] = Field(min_length=1)
    # Alert severity label values this sink wants (case-insensitive); empty: every severity.
    severities: list[NonEmpty]

    @field_validator("url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        return None if value == "" else value

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def accepts(self, event: str, severity: str | None) -> bool:
        """Whether a notification of this event and alert severity goes to this sink. With a
        severity filter, a notification without a severity is not sent."""
        if not self.enabled or event not in self.events:
            return False
        if not self.severities:
            return True
        wanted = {s.lower() for s in self.severities}
        return severity is not None and severity.lower() in wanted


def _http_sink_url(value: SecretStr | None) -> SecretStr | None:
    # The value is never echoed: it is a secret.
    if value is not None and not _HTTP_URL.match(value.get_secret_value()):
        raise ValueError("must be an http:// or https:// URL (the value is not shown)")
    return value


class SlackSink(_NotificationSinkBase):
    type: Literal["slack"]

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _http_sink_url(value)


class WebhookSink(_NotificationSinkBase):
    type: Literal["webhook"]
    # HMAC-SHA256 key for X-UICI-Signature; required when url is set.
    secret: SecretStr | None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _http_sink_url(value)

    @field_validator("secret", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("secret")
    @classmethod
    def _secret_with_url(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        name = info.data.get("name", "?")
        if value is None and info.data.get("url") is not None:
            raise ValueError(
                f"webhook sink {name!r} has a url but no secret, so no receiver could verify "
                "X-UICI-Signature (reference one from the environment: secret: "
                "${UICI_NOTIFY_WEBHOOK_SECRET:-} with UICI_NOTIFY_WEBHOOK_SECRET set to e.g. "
                "`openssl rand -hex 32`; or empty the url to turn the sink off)"
            )
        if value is not None and len(value.get_secret_value()) < _WEBHOOK_SECRET_MIN_CHARS:
            raise ValueError(
                f"webhook sink {name!r}: the secret must be at least "
                f"{_WEBHOOK_SECRET_MIN_CHARS} characters (e.g. `openssl rand -hex 32`)"
            )
        return value


class AppriseSink(_NotificationSinkBase):
    type: Literal["apprise"]

    @field_validator("url")
    @classmethod
    def _apprise_urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value()
        rest = _APPRISE_URL.sub("", text).replace(",", " ").strip()
        if rest or not _APPRISE_URL.search(text):
            raise ValueError(
                "must be apprise URLs (scheme://..., e.g. msteams://, mmost://, mailto://, "
                "json://), separated by spaces or commas (the value is not shown)"
            )
        return value

    def apprise_urls(self) -> list[str]:
        """The configured apprise URLs, one per destination."""
        if self.url is None:
            return []
        return _APPRISE_URL.findall(self.url.get_secret_value())


NotificationSink = Annotated[SlackSink | WebhookSink | AppriseSink, Field(discriminator="type")]


class NotificationSettings(StrictModel):
    # Links in messages: where people reach the API and the Prefect UI.
    public_url: HttpUrlText
    prefect_ui_url: HttpUrlText
    approval_expiring_seconds: float = Field(gt=0, le=7 * 86_400)
    delivery: NotificationDelivery
    sinks: list[NotificationSink]

    @field_validator("public_url", "prefect_ui_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, sinks: list[SlackSink | WebhookSink | AppriseSink]) -> list[Any]:
        seen: dict[str, int] = {}
        for index, sink in enumerate(sinks):
            if sink.name in seen:
                raise ValueError(
                    f"duplicate sink name {sink.name!r} (sinks[{seen[sink.name]}] and "
                    f"sinks[{index}]); each sink needs its own name"
                )
            seen[sink.name] = index
        return sinks


class PlatformConfig(StrictModel):
    platform: PlatformInfo
    llm: LLMSettings
    prefect: PrefectSettings
    service: ServiceSettings
    storage: StorageSettings
    logging: LoggingSettings
    configuration: ConfigurationSettings
    api: ApiSettings
    alerts: AlertMapping
    notifications: NotificationSettings


# --- environments.yml -------------------------------------------------------------------


class SafetyPolicy(StrictModel):
    allowed_risks: list[RiskLevel]
    approval_required: list[RiskLevel]
    auto_approve: bool
    approval_timeout_seconds: PositiveSeconds
    max_write_steps_per_incident: int = Field(ge=0, le=100)
    cooldown_seconds: float = Field(ge=0, le=7 * 86_400)
    max_targets_per_write: int = Field(ge=1, le=1000)
    max_writes_per_target: int = Field(ge=1, le=1000)
    write_window_seconds: float = Field(gt=0, le=30 * 86_400)
    target_lock_wait_seconds: float = Field(ge=0, le=3600)
    # Distinct people (API keys) who must approve a write; 2 is the two-person rule.
    required_approvers: int = Field(ge=1, le=5)

    @model_validator(mode="after")
    def _approval_within_allowed(self) -> SafetyPolicy:
        stray = [r.value for r in self.approval_required if r not in self.allowed_risks]
        if stray:
            raise ValueError(
                f"approval_required lists {stray} which allowed_risks does not allow; "
                "a risk must be allowed before it can need approval"
            )
        if RiskLevel.READ in self.approval_required:
            raise ValueError("read operations cannot require approval (diagnosis would stall)")
        return self


class DockerTLS(StrictModel):
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool


class DockerConnection(StrictModel):
    base_url: Annotated[str, StringConstraints(pattern=r"^(unix|tcp|npipe|ssh)://\S+$")]
    timeout_seconds: PositiveSeconds
    tls: DockerTLS | None = None

    CONTEXT_KEYS: ClassVar[tuple[str, ...]] = ("docker_host",)

    def command_context(self) -> dict[str, str]:
        return {"docker_host": self.base_url}


class ClientRetrySettings(StrictModel):
    """Reads answered 429 or 5xx are retried `read_retries` times, waiting the server's
    Retry-After or an exponential back-off, never longer than the cap (infrastructure.retry).
    What happens to writes is each connection's own (see their comments)."""

    read_retries: Annotated[int, Field(ge=0, le=10)]
    retry_backoff_seconds: PositiveSeconds
    retry_after_cap_seconds: PositiveSeconds


class KubernetesConnection(ClientRetrySettings):
    in_cluster: bool
    kubeconfig: str | None = None
    context: str | None = None
    api_server: str | None = None  # overrides the kubeconfig server (private endpoints, tests)
    namespace: Name
    allowed_namespaces: list[Name]
    target_selectors: list[NonEmpty]
    request_timeout_seconds: PositiveSeconds
    # Writes are sent again only after a 429, which means the server did not act.
    # urllib3 re-tries a failed *connection* (nothing sent) this many times; never a request.
    connect_retries: Annotated[int, Field(ge=0, le=10)]
    # scale_service stays within these bounds in this environment.
    min_replicas: Annotated[int, Field(ge=0)]
    max_replicas: Annotated[int, Field(ge=1)]
    # A probe failure event counts as current for this long (a crash loop's longest back-off
    # is 300 s; the kubelet repeats a failing probe's event within it).
    probe_event_window_seconds: PositiveSeconds

    @model_validator(mode="after")
    def _namespace_allowed(self) -> KubernetesConnection:
        if self.namespace not in self.allowed_namespaces:
            raise ValueError(
                f"namespace {self.namespace!r} is not in allowed_namespaces"
                f" {self.allowed_namespaces}"
            )
        for selector in self.target_selectors:
            if "{target}" not in selector:
                raise ValueError(f"target selector {selector!r} must contain {{target}}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}"
            )
        return self

    CONTEXT_KEYS: ClassVar[tuple[str, ...]] = ("namespace", "kube_context")

    def command_context(self) -> dict[str, str]:
        return {"namespace": self.namespace, "kube_context": self.context or ""}


class OCIConnection(ClientRetrySettings):
    auth: Literal["api_key", "instance_principal", "resource_principal"]
    config_file: str | None = None
    profile: str
    region: str
    compartment_id: str
    # Per service (container_instances, logging_search, monitoring): private endpoints, tests.
    service_endpoints: dict[Literal["container_instances", "logging_search", "monitoring"], str] = (
        Field(default_factory=dict)
    )
    connect_timeout_seconds: PositiveSeconds
    timeout_seconds: PositiveSeconds
    # An action (start, stop, restart) is never sent again: recovery looks for its work request.
    # Start/stop/restart return a work request, polled to its end within this time.
    work_request_poll_seconds: PositiveSeconds
    work_request_timeout_seconds: PositiveSeconds
    # Logging Search scope per service (display name): "<compartment>/<log group>/<log>" OCIDs.
    log_search_scopes: dict[str, NonEmpty] = Field(default_factory=dict)

    CONTEXT_KEYS: ClassVar[tuple[str, ...]] = ("compartment_id", "region")

    def command_context(self) -> dict[str, str]:
        return {"compartment_id": self.compartment_id, "region": self.region}


class _HttpSource(StrictModel):
    """An HTTP API UICI reads from (Prometheus, Loki). An empty url turns it off: the
    operations that need it are refused with that reason. Credentials come from environment
    variables (bearer token, or user name and password for basic auth), never this file."""

    name: Name
    url: str = ""
    bearer_token: SecretStr | None = None
    username: str = ""
    password: SecretStr | None = None
    # PEM bundle of the CA that signed the server's certificate (default: the system's).
    ca_file: str = ""
    verify_tls: bool = True
    timeout_seconds: PositiveSeconds
    # A bigger answer is not read: the query is refused, saying how to narrow it.
    max_response_bytes: int = Field(default=33_554_432, ge=65_536, le=1_073_741_824)

    @field_validator("bearer_token", "password", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError(
                f"url {value!r} is not an http(s) URL without query (e.g. http://prometheus:9090)"
            )
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: str) -> str:
        if value and not Path(value).expanduser().is_file():
            raise ValueError(f"ca_file {value!r} is not a file (a PEM bundle of CA certificates)")
        return str(Path(value).expanduser()) if value else value

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> _HttpSource:
        if self.bearer_token is not None and (self.username or self.password is not None):
            raise ValueError("give a bearer_token or a username and password, not both")
        if (self.password is not None) != bool(self.username):
            raise ValueError("basic auth needs both username and password")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class PrometheusSource(_HttpSource):
    pass


class LokiSource(_HttpSource):
    # X-Scope-OrgID: the tenant of a multi-tenant Loki (empty: none is sent).
    tenant: str = ""
    # The stream label that names a service (container, app, service_name, ...).
    service_label: LabelName = "container"


class ObservabilitySources(StrictModel):
    prometheus: dict[Name, PrometheusSource] = Field(default_factory=dict)
    loki: dict[Name, LokiSource] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """Each source knows the name it is defined under."""
        if not isinstance(data, dict):
            return data
        named = dict(data)
        for kind in ("prometheus", "loki"):
            sources = data.get(kind)
            if isinstance(sources, dict):
                named[kind] = {
                    key: {**value, "name": key} if isinstance(value, dict) else value
                    for key, value in sources.items()
                }
        return named


# The PromQL token replaced by the service's label matchers (metric_labels, rendered).
SERVICE_MATCHERS_PLACEHOLDER = "$service"


class ResourceQueries(StrictModel):
    """PromQL for a service's resources; `$service` is replaced by its label matchers."""

    memory_usage: str = ""
    memory_limit: str = ""
    disk_usage: str = ""
    disk_capacity: str = ""
    cpu_usage: str = ""
    cpu_limit: str = ""

    @field_validator("*")
    @classmethod
    def _names_service(cls, value: str) -> str:
        if value and SERVICE_MATCHERS_PLACEHOLDER not in value:
            raise ValueError(
                f"{value!r} must contain {SERVICE_MATCHERS_PLACEHOLDER} (the service's matchers)"
            )
        return value


class EnvironmentObservability(StrictModel):
    """Where an environment's metrics and logs are, and how its services are named there.
    `prometheus` and `loki` name sources of observability_sources (resolved at load)."""

    prometheus: PrometheusSource | None = None
    loki: LokiSource | None = None
    # Loki stream labels of a service: label -> value template ({target}: the service's name,
    # {namespace}: its namespace where it has one). Empty: {<loki.service_label>: "{target}"}.
    log_selector: dict[LabelName, str] = Field(default_factory=dict)
    # Prometheus label matchers of a service's series, the same way.
    metric_labels: dict[LabelName, str] = Field(default_factory=dict)
    resources: ResourceQueries = Field(default_factory=ResourceQueries)
    # platform: log steps read the platform's own log (docker logs, kubectl logs) and Loki
    # only when that is gone; loki: the environment's logs live in Loki, log steps read it.
    log_source: Literal["platform", "loki"] = "platform"

    @field_validator("log_selector", "metric_labels")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        from infrastructure.templates import placeholders

        for template in value.values():
            unknown = set(placeholders(template)) - {"target", "namespace"}
            if unknown:
                raise ValueError(
                    f"{template!r} uses {sorted(unknown)}; only {{target}} and {{namespace}} exist"
                )
        return value

    def source(self, kind: str) -> PrometheusSource | LokiSource | None:
        source: PrometheusSource | LokiSource | None = getattr(self, kind)
        return source if source is not None and source.enabled else None


class _EnvironmentBase(StrictModel):
    enabled: bool
    description: str
    policy: SafetyPolicy
    observability: EnvironmentObservability = Field(default_factory=EnvironmentObservability)


class DockerEnvironment(_EnvironmentBase):
    type: Literal[EnvironmentType.DOCKER]
    connection: DockerConnection


class KubernetesEnvironment(_EnvironmentBase):
    type: Literal[EnvironmentType.KUBERNETES]
    connection: KubernetesConnection


class OCIEnvironment(_EnvironmentBase):
    type: Literal[EnvironmentType.OCI]
    connection: OCIConnection

    @model_validator(mode="after")
    def _enabled_needs_compartment(self) -> OCIEnvironment:
        if self.enabled and not self.connection.compartment_id:
            raise ValueError("an enabled oci environment needs connection.compartment_id")
        return self


# Values every translation may use besides parameters and the connection's context.
GLOBAL_CONTEXT_KEYS: tuple[str, ...] = ("log_level_patterns",)
# Values the remediation path supplies to write operations: `intent` is the remediation
# intent's id and time (absent for a manual `uici run`).
WRITE_CONTEXT_KEYS: tuple[str, ...] = ("intent",)

CONNECTION_MODELS: dict[
    EnvironmentType, type[DockerConnection] | type[KubernetesConnection] | type[OCIConnection]
] = {
    EnvironmentType.DOCKER: DockerConnection,
    EnvironmentType.KUBERNETES: KubernetesConnection,
    EnvironmentType.OCI: OCIConnection,
}

Environment = Annotated[
    DockerEnvironment | KubernetesEnvironment | OCIEnvironment, Field(discriminator="type")
]


class EnvironmentsConfig(StrictModel):
    default_policy: SafetyPolicy
    # Prometheus and Loki servers; environments name them in `observability`.
    observability_sources: ObservabilitySources = Field(default_factory=ObservabilitySources)
    default_observability: dict[str, Any] = Field(default_factory=dict)
    environments: dict[Name, Environment]

    @model_validator(mode="before")
    @classmethod
    def _merge_default_policy(cls, data: Any) -> Any:
        """An environment's `policy` overrides only the keys it names."""
        if not isinstance(data, dict):
            return data
        default = data.get("default_policy")
        environments = data.get("environments")
        if not isinstance(default, dict) or not isinstance(environments, dict):
            return data
        sources = data.get("observability_sources") or {}
        default_observability = data.get("default_observability") or {}
        merged = {}
        for name, environment in environments.items():
            if isinstance(environment, dict):
                own = environment.get("policy") or {}
                if isinstance(own, dict):
                    environment = {**environment, "policy": {**default, **own}}
                observability = environment.get("observability") or {}
                if isinstance(observability, dict) and isinstance(default_observability, dict):
                    observability = {**default_observability, **observability}
                    environment = {
                        **environment,
                        "observability": _resolve_sources(name, observability, sources),
                    }
            merged[name] = environment
        return {**data, "environments": merged}


def _resolve_sources(
    environment: str, observability: dict[str, Any], sources: Any
) -> dict[str, Any]:
    """Replace the source names an environment's `observability` gives by the sources."""
    resolved = dict(observability)
    for kind in ("prometheus", "loki"):
        name = resolved.get(kind)
        if name in (None, ""):
            resolved.pop(kind, None)
            continue
        if not isinstance(name, str):
            continue  # the model reports the type
        defined = sources.get(kind) if isinstance(sources, dict) else None
        defined = defined if isinstance(defined, dict) else {}
        if name not in defined:
            raise ValueError(
                f"environment {environment!r}: observability.{kind} names {name!r}, which"
                f" observability_sources.{kind} does not define"
                f" (defined: {', '.join(sorted(defined)) or 'none'})"
            )
        source = defined[name]
        resolved[kind] = {**source, "name": name} if isinstance(source, dict) else source
    return resolved


# --- operations.yml ---------------------------------------------------------------------


class ParameterType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DURATION = "duration"  # "30s", "5m", "2h", "1d"
    STRING_LIST = "string_list"


class ParameterSpec(StrictModel):
    type: ParameterType
    description: NonEmpty
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    enum: list[str | int | float] | None = None
    pattern: str | None = None
    max_length: int | None = Field(default=None, gt=0)

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        return None if value is None else _check_regex(value)

    @model_validator(mode="after")
    def _consistent(self) -> ParameterSpec:
        numeric = self.type in (ParameterType.INTEGER, ParameterType.NUMBER)
        if (self.minimum is not None or self.maximum is not None) and not numeric:
            raise ValueError("minimum/maximum apply only to integer and number parameters")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is greater than maximum {self.maximum}")
        if self.required and self.default is not None:
            raise ValueError("a required parameter cannot have a default")
        return self


class RetrySettings(StrictModel):
    attempts: int = Field(ge=1, le=10, description="total attempts; 1 means no retry")
    delay_seconds: float = Field(ge=0, le=600)
    backoff_factor: float = Field(ge=1, le=10)


class OperationSpec(StrictModel):
    description: NonEmpty
    risk: RiskLevel
    target: Literal["required", "optional", "none"]
    # The observability source the environment must name for this operation to run.
    requires: Literal["prometheus", "loki"] | None = None
    timeout_seconds: PositiveSeconds
    retry: RetrySettings
    environments: list[EnvironmentType]
    unsupported: dict[EnvironmentType, NonEmpty] = Field(default_factory=dict)
    parameters: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")], ParameterSpec
    ] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _supported_xor_unsupported(self) -> OperationSpec:
        both = sorted(t.value for t in set(self.environments) & set(self.unsupported))
        if both:
            raise ValueError(
                f"environment types {both} are listed as both supported and unsupported"
            )
        reserved = {"target", "environment"} & set(self.parameters)
        if reserved:
            raise ValueError(f"parameter names {sorted(reserved)} are reserved")
        return self


class TargetRules(StrictModel):
    pattern: Regex
    max_length: int = Field(gt=0, le=1024)
    description: NonEmpty

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        return _check_regex(value)


class OperationsConfig(StrictModel):
    targets: TargetRules
    # Log level name -> regular expression recognising a line of that level, most severe
    # first; a `level` filter keeps the lines of that level and every level above it.
    log_levels: dict[Annotated[str, StringConstraints(pattern=r"^[a-z]+$")], Regex] = Field(
        min_length=1
    )
    operations: dict[OperationName, OperationSpec]

    @field_validator("log_levels")
    @classmethod
    def _levels_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            _check_regex(pattern)
        return value


# --- command_translations.yml -----------------------------------------------------------


class ArgvGroup(StrictModel):
    """Arguments included only when a parameter has a value (and is not false)."""

    when: NonEmpty
    argv: list[str] = Field(min_length=1)


class Translation(StrictModel):
    method: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$")]
    args: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$")], NonEmpty] = Field(
        default_factory=dict
    )
    constants: dict[str, Any] = Field(default_factory=dict)
    command: list[str | ArgvGroup] = Field(min_length=1)


class TranslationsConfig(StrictModel):
    translations: dict[EnvironmentType, dict[OperationName, Translation]]


# --- agents.yml -------------------------------------------------------------------------


class ConditionOperator(StrEnum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    MATCHES = "matches"
    EXISTS = "exists"
    ABSENT = "absent"


class Condition(StrictModel):
    """A declarative test on one observation: a field of its data, or its log lines."""

    observation: OperationName
    scope: Literal["service", "dependencies", "any"] = "service"
    field: str | None = None
    operator: ConditionOperator | None = None
    value: Any = None
    log_pattern: str | None = None
    min_matches: int = Field(default=1, ge=1)
    # Fields of the matching item a diagnosis names as facts (e.g. message, exit_meaning).
    # A log_pattern's named groups are facts too: (?P<variable>[A-Z_]+) names the variable.
    facts: list[str] = Field(default_factory=list)

    @field_validator("log_pattern")
    @classmethod
    def _log_pattern_compiles(cls, value: str | None) -> str | None:
        return None if value is None else _check_regex(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        if (self.field is None) == (self.log_pattern is None):
            raise ValueError("a condition tests either a field (field + operator) or log_pattern")
        if self.field is not None and self.operator is None:
            raise ValueError("a field condition needs an operator")
        if self.operator is ConditionOperator.MATCHES:
            if not isinstance(self.value, str):
                raise ValueError("operator 'matches' needs a regular expression as value")
            _check_regex(self.value)
        if self.operator in (ConditionOperator.IN, ConditionOperator.NOT_IN) and not isinstance(
            self.value, list
        ):
            raise ValueError(f"operator {self.operator.value!r} needs a list as value")
        return self


class WhenClause(StrictModel):
    all: list[Condition] = Field(default_factory=list)
    any: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> WhenClause:
        if not self.all and not self.any:
            raise ValueError("a when clause needs at least one condition under all or any")
        return self


class RunbookStep(StrictModel):
    operation: OperationName
    target: Literal["service", "dependencies", "none"] = "service"
    params: dict[str, Any] = Field(default_factory=dict)
    when: WhenClause | None = None
    rationale: NonEmpty


class RunbookMatch(StrictModel):
    """Regular expressions matched in full against the alert's labels; absent means any."""

    alertname: Regex | None = None
    severity: Regex | None = None
    service: Regex | None = None
    environment: Regex | None = None
    labels: dict[str, Regex] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _patterns_compile(self) -> RunbookMatch:
        for value in (self.alertname, self.severity, self.service, self.environment):
            if value is not None:
                _check_regex(value)
        for value in self.labels.values():
            _check_regex(value)
        return self


class Runbook(StrictModel):
    name: Name
    description: NonEmpty
    # One matcher, or a list of matchers: the runbook fits when any of them fits (for example
    # an alert name, or the state the health sweep observed).
    match: list[RunbookMatch] = Field(min_length=1)
    phases: dict[Phase, list[RunbookStep]]
    auto_approve: list[OperationName] = Field(default_factory=list)

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict | RunbookMatch) else value


class RecommendedAction(StrictModel):
    operation: OperationName
    # service: the alerted service; dependencies: the dependencies the rule's evidence names
    target: Literal["service", "dependencies"] = "service"
    params: dict[str, Any] = Field(default_factory=dict)
    rationale: NonEmpty


class DiagnosisRule(StrictModel):
    name: Name
    when: WhenClause
    root_cause: NonEmpty
    # The failure class it names: one of `failure_classes`.
    category: Name
    confidence: float = Field(ge=0, le=1)
    # Conditions that do not decide whether the rule holds, only name facts when they do
    # (the memory limit of an OOM kill, the command a shell could not find).
    facts: list[Condition] = Field(default_factory=list)
    recommended_actions: list[RecommendedAction] = Field(default_factory=list)


class UnknownDiagnosisSettings(StrictModel):
    """When no rule holds: which log lines the report quotes as the most telling."""

    telling_line_pattern: str
    max_telling_lines: int = Field(ge=1, le=50)
    last_lines_before_exit: int = Field(ge=0, le=20)

    @field_validator("telling_line_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_regex(value)


class DependencyDiscoverySettings(StrictModel):
    """Which log lines name a dependency's host (a named group `host`), and how many
    candidates one incident looks up."""

    host_patterns: list[str] = Field(min_length=1)
    ignore_hosts: list[str] = Field(default_factory=list)
    max_candidates: int = Field(ge=0, le=20)
    # What may be run on a discovered name: reads of its state, not its logs or a command.
    read_operations: list[OperationName] = Field(min_length=1)

    @field_validator("host_patterns")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if "(?P<host>" not in _check_regex(pattern):
                raise ValueError(f"{pattern!r} has no named group (?P<host>...)")
        return patterns


class IncidentMemorySettings(StrictModel):
    """Incident memory (agent/incidents/memory.py)."""

    # Past incidents listed in a report, and looked at, at most.
    similar_limit: int = Field(ge=0, le=100)
    lookback_seconds: int = Field(ge=0)
    # A remediation of the same cause on the same service is refused and escalated once it
    # ran in this many earlier incidents within repeat_window_seconds.
    max_remediations_per_cause: int = Field(ge=1)
    repeat_window_seconds: int = Field(ge=0)


class LogMatchingSettings(StrictModel):
    """How log lines are matched by conditions and rules."""

    # Longer lines are cut before matching: a pattern's cost grows with a line's length.
    max_line_chars: int = Field(ge=80, le=100_000)
    # Operations that read a service's log lines: a log_pattern on one reads all of them.
    log_operations: list[OperationName] = Field(default_factory=list)


class EvaluationThresholds(StrictModel):
    """`uici eval` exits non-zero when a score (a fraction of the scenarios) is below these."""

    cause: float = Field(ge=0, le=1)
    safety: float = Field(ge=0, le=1)
    facts: float = Field(ge=0, le=1)


class EvaluationSettings(StrictModel):
    """How `uici eval` runs the corpus (agent/evaluation/)."""

    thresholds: EvaluationThresholds
    # The environment of this configuration each kind of scenario runs in.
    environments: dict[Literal["docker", "kubernetes", "oci"], Name]
    # A replayed service does not change: no settle window, one check.
    replay_validation: ValidationSettings


class ValidationSettings(StrictModel):
    """How long a remediated service must settle, and how often it is checked, before the
    report calls it recovered."""

    settle_seconds: float = Field(ge=0, le=3600)
    checks: int = Field(ge=1, le=20)
    interval_seconds: float = Field(ge=0, le=600)


class AlertExpressionSteps(StrictModel):
    enabled: bool
    # The alert's expression is evaluated over this window (a duration: 30m, 1h).
    window: Duration
    # No expression in the alert's generatorURL: look its alerting rule up by alertname.
    look_up_rules: bool


class IncidentWindow(StrictModel):
    """Loki is read from before_alert_seconds before the alert started to now, covering at
    least min_seconds and at most max_seconds."""

    before_alert_seconds: float = Field(ge=0, le=86_400)
    min_seconds: PositiveSeconds
    max_seconds: float = Field(gt=0, le=30 * 86_400)


class LokiFallback(StrictModel):
    enabled: bool
    # Log entries read from Loki (at most 5000, Loki's own cap).
    limit: int = Field(ge=1, le=5000)


class ObservabilitySteps(StrictModel):
    alert_expression: AlertExpressionSteps
    incident_window: IncidentWindow
    loki_fallback: LokiFallback


class DiagnosticAgentSettings(StrictModel):
    planner_mode: Literal["auto", "llm", "runbook"]
    max_steps_per_phase: dict[Phase, int]
    phase_time_budget_seconds: dict[Phase, PositiveSeconds]
    max_llm_iterations_per_phase: int = Field(ge=1, le=20)
    validation: ValidationSettings
    # Steps the planner adds where the environment has Prometheus or Loki (None: none).
    observability: ObservabilitySteps | None = None

    @model_validator(mode="after")
    def _every_phase(self) -> DiagnosticAgentSettings:
        for field_name in ("max_steps_per_phase", "phase_time_budget_seconds"):
            missing = [p for p in PHASES if p not in getattr(self, field_name)]
            if missing:
                raise ValueError(f"{field_name} is missing phases {missing}")
        bad = {p: n for p, n in self.max_steps_per_phase.items() if not 1 <= n <= 50}
        if bad:
            raise ValueError(f"max_steps_per_phase must be between 1 and 50, got {bad}")
        return self


class RedactionPattern(StrictModel):
    name: Name
    pattern: Regex
    replacement: str = "[REDACTED]"

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str) -> str:
        return _check_regex(value)


class RedactionSettings(StrictModel):
    """Secrets removed from everything that leaves UICI (infrastructure/redaction.py): reports,
    events, the audit trail, Prefect artifacts, logs, API answers and what an LLM is sent."""

    patterns: list[RedactionPattern] = Field(min_length=1)


class LLMSafetySettings(StrictModel):
    """How much may be sent to an LLM (what is sent is redacted first: RedactionSettings)."""

    max_prompt_tokens: int = Field(ge=500, le=1_000_000)
    chars_per_token: float = Field(gt=0, le=10)
    max_lines_per_observation: int = Field(ge=5, le=100_000)


class CompletedRun(StrictModel):
    """A service that stopped in one of `states` with one of `exit_codes` finished its work."""

    states: list[NonEmpty]
    exit_codes: list[int]


class ForecastSettings(StrictModel):
    """Predictive warnings: where the environment has Prometheus, the sweep fits a line to
    each running service's resources over `window` and opens a `predicted` incident for one
    forecast to reach its capacity within `horizon`."""

    enabled: bool
    resources: list[Literal["memory", "disk", "cpu"]] = Field(min_length=1)
    window: Duration
    horizon: Duration
    # Only a service already using at least this fraction of its capacity is forecast (a
    # steep line from almost nothing is noise, not a warning).
    min_current_ratio: float = Field(ge=0, le=1)
    # At most this many services per environment are forecast in one sweep.
    max_services: int = Field(ge=1, le=10_000)
    # The label the incident carries naming the resource forecast.
    resource_label: LabelName
    alertname: NonEmpty


class HealthSweepSettings(StrictModel):
    """What the scheduled health sweep calls unhealthy, how much it does at once, when it
    leaves a service alone, and how it marks the incidents it opens."""

    max_parallel: int = Field(ge=1, le=64)
    unhealthy_states: list[NonEmpty]
    unhealthy_health: list[NonEmpty]
    completed: CompletedRun
    rediagnose_after_seconds: float = Field(ge=0, le=30 * 86_400)
    source_label: LabelName
    observed_state_label: LabelName
    forecast: ForecastSettings | None = None


class AgentsConfig(StrictModel):
    diagnostic_agent: DiagnosticAgentSettings
    health_sweep: HealthSweepSettings
    redaction: RedactionSettings
    llm_safety: LLMSafetySettings
    runbooks: list[Runbook] = Field(min_length=1)
    # The failure classes diagnosis rules name, with what each means.
    failure_classes: dict[Name, NonEmpty]
    diagnosis_rules: list[DiagnosisRule] = Field(default_factory=list)
    # When no rule holds: the log lines the report quotes as the most telling.
    unknown_diagnosis: UnknownDiagnosisSettings
    dependency_discovery: DependencyDiscoverySettings
    incident_memory: IncidentMemorySettings
    log_matching: LogMatchingSettings
    evaluation: EvaluationSettings

    @model_validator(mode="after")
    def _rule_classes_known(self) -> AgentsConfig:
        for index, rule in enumerate(self.diagnosis_rules):
            if rule.category not in self.failure_classes:
                raise ValueError(
                    f"diagnosis_rules[{index}] ({rule.name}): category {rule.category!r} is not"
                    f" one of failure_classes ({', '.join(self.failure_classes) or 'none listed'})"
                )
        return self
