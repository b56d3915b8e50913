"""The service's configuration: one pydantic model tree, read from YAML, overridden by env.

Precedence (highest first): ``ACR_*`` environment variables, the YAML file, defaults.
Environment names are ``ACR_<SECTION>_<FIELD>``, e.g. ``ACR_REDIS_URL`` or
``ACR_SERVER_PORT``; list and dict values are given as JSON. The same model validates the
Helm chart's ConfigMap (``helm/``), so there is one source of truth.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from policies.settings import PolicySettings, StrategiesSettings
from router.config_models import (
    POOL_FIELDS,
    AutoscalingConfig,
    BackendConfig,
    ModelConfig,
    PoolConfig,
    ReasoningConfig,
)
from router.config_section import Section as _Section
from tasks.profiles import TaskProfileConfig, builtin_profiles
from tasks.task import OPEN

ENV_PREFIX = "ACR_"

__all__ = [
    "AppConfig",
    "AutoscalingConfig",
    "BackendConfig",
    "ConfigError",
    "ModelConfig",
    "PoolConfig",
    "ReasoningConfig",
    "load_config",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad field and what is valid."""


class ServerConfig(_Section):
    """HTTP server and request-level limits."""

    host: str = Field(default="127.0.0.1", description="Address the HTTP proxy binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    request_timeout_ms: PositiveInt = Field(
        default=30_000, le=600_000, description="Default deadline of a request."
    )
    max_request_timeout_ms: PositiveInt = Field(
        default=120_000, le=3_600_000, description="Largest deadline a request may ask for."
    )
    max_body_bytes: PositiveInt = Field(
        default=1_048_576, le=64 * 1_048_576, description="Largest request body accepted."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty turns CORS off."
    )
    log_prompts: bool = Field(default=False, description="Write prompt text to logs.")

    @model_validator(mode="after")
    def _timeouts_ordered(self) -> ServerConfig:
        if self.request_timeout_ms > self.max_request_timeout_ms:
            raise ValueError(
                f"request_timeout_ms ({self.request_timeout_ms}) must be <= "
                f"max_request_timeout_ms ({self.max_request_timeout_ms})"
            )
        return self


class RedisConfig(_Section):
    """Where decisions, outcomes and policy state live."""

    url: str | None = Field(
        default=None,
        description="redis:// URL; empty starts an embedded redis-server for the process.",
    )
    embedded_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the embedded redis-server; 0 picks a free one (never 6379).",
    )
    key_prefix: str = Field(default="acr", min_length=1, max_length=64)
    outcomes_stream: str = Field(default="acr:outcomes", min_length=1, max_length=256)
    stream_maxlen: PositiveInt | None = Field(
        default=None,
        description="Approximate cap of the outcome stream's length; empty (the default) "
        "never trims. Setting it makes Redis drop the oldest outcomes whether or not "
        "anything has read them.",
    )
    buffer_max_outcomes: PositiveInt = Field(
        default=10_000,
        description="Outcomes held in memory only while the spool cannot be written (disk "
        "full or read-only); past it the oldest is dropped, counted and logged.",
    )
    spool_dir: str | None = Field(
        default=None,
        max_length=4096,
        description="Directory of the outcome spool: a local append-only file per process "
        "where every outcome is fsynced before the response, kept until Redis has it and "
        "replayed at start. Empty: $ACR_CACHE_DIR/outcomes, else ~/.cache/acr/outcomes. "
        "Must be writable and outlive the process (the Helm chart mounts an emptyDir).",
    )
    outcome_dedup_ttl_s: PositiveInt = Field(
        default=86_400,
        le=30 * 86_400,
        description="How long Redis remembers a written outcome's id, so that a replay after "
        "a crash writes it once (about 100 bytes of Redis memory per outcome).",
    )
    embedded_maxmemory_mb: PositiveInt = Field(
        default=512,
        le=1_048_576,
        description="maxmemory of the embedded redis-server, policy noeviction: when full it "
        "refuses writes (outcomes wait in the spool) instead of evicting unread ones.",
    )
    password: str | None = Field(
        default=None,
        description="Redis password (set it from a Secret as ACR_REDIS_PASSWORD); kept out "
        "of the URL, so any character is safe.",
    )
    socket_timeout_ms: PositiveInt = Field(default=500, le=60_000)
    reconnect_backoff_max_ms: PositiveInt = Field(default=5_000, le=600_000)


class VerifierConfig(_Section):
    """An optional learned reward model: the verifier of task profiles that name
    ``reward_model`` and of ``open`` prompts (exact checkers need no configuration).

    ``reward_model_path`` loads a local transformers sequence-classification checkpoint into
    its own Ray Serve replicas (``num_replicas``, ``num_cpus``, ``num_gpus``); ``url`` calls a
    served one instead (vLLM's ``/classify`` API: ``{"model", "input": [...]}`` ->
    ``{"data": [{"probs": [...]}]}``; the last label's probability is the score).
    """

    reward_model_path: str | None = Field(
        default=None, description="Local transformers sequence-classification checkpoint."
    )
    url: str | None = Field(
        default=None, description="A served reward model's /classify endpoint (vLLM API)."
    )
    model: str = Field(default="reward-model", min_length=1, description="Its model id there.")
    api_key_env: str | None = Field(
        default=None, description="Env var holding the served reward model's API key."
    )
    timeout_ms: PositiveInt = Field(default=30_000, le=600_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    num_replicas: PositiveInt = Field(default=1, le=64)

    @model_validator(mode="after")
    def _one_source(self) -> VerifierConfig:
        if self.reward_model_path and self.url:
            raise ValueError("verifier: give reward_model_path (local) or url (served), not both")
        return self


class TasksConfig(_Section):
    """Task profiles: how prompts are recognised, their answers read and checked."""

    profiles: list[TaskProfileConfig] = Field(
        default_factory=list,
        description="Your own profiles, matched before the built-in ones.",
    )
    builtin: bool = Field(
        default=True, description="Also match the built-in game24, arithmetic and math."
    )

    def all_profiles(self) -> list[TaskProfileConfig]:
        """Your profiles, then the built-in ones (when on); ``open`` is the fallback."""
        return [*self.profiles, *(builtin_profiles() if self.builtin else [])]


class LimitsConfig(_Section):
    """Bounds every request field is validated against."""

    max_n: PositiveInt = Field(default=16, le=256)
    max_tokens: PositiveInt = Field(default=2048, le=32768)
    max_messages: PositiveInt = Field(default=64, le=4096)
    max_message_chars: PositiveInt = Field(default=32_000, le=4_000_000)
    max_prompt_chars: PositiveInt = Field(default=64_000, le=8_000_000)
    max_stop: PositiveInt = Field(default=4, le=16)
    max_stop_chars: PositiveInt = Field(default=64, le=1024)
    max_samples: PositiveInt = Field(
        default=64, le=256, description="Most samples a request's acr.budget may ask for."
    )
    max_search_width: PositiveInt = Field(
        default=64, le=4096, description="Most beam_width x expansions a request may ask for."
    )
    max_request_tokens: PositiveInt = Field(
        default=131_072,
        le=10_000_000,
        description="Most tokens one request may generate: n times its strategy's cap.",
    )


class AuthConfig(_Section):
    """API keys and per-key limits per one-minute window (all off by default)."""

    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer keys. None here and no keys file: no auth, and every "
        "caller shares the limits of one key, 'anonymous'.",
    )
    api_keys_file: str | None = Field(
        default=None, description="File with one key per line (e.g. a mounted Secret)."
    )
    requests_per_minute: NonNegativeInt = Field(
        default=0, description="Requests a key may start per one-minute window; 0 = no limit."
    )
    tokens_per_minute: NonNegativeInt = Field(
        default=0,
        description="Tokens (prompt + generated, as usage counts them) a key may spend per "
        "one-minute window; 0 = no limit. A request holds the most it may spend while it runs "
        "(429 when that does not fit) and is charged what it spent when it ends, so the "
        "window passes the limit by at most one request. While Redis is down each replica "
        "counts alone: up to R times the limit with R replicas.",
    )


class ResponsesConfig(_Section):
    """The Responses API's stored responses (``POST /v1/responses`` with ``store``)."""

    store: bool = Field(
        default=True,
        description="Keep responses that ask for it (store: true, the default) in Redis, "
        "readable and deletable by the key that made them and continued by "
        "previous_response_id; false stores none. Not prompt logging: the logs and the "
        "outcome stream keep their own setting.",
    )
    ttl_s: PositiveInt = Field(
        default=604_800, le=31_536_000, description="How long a stored response is kept."
    )


class AppConfig(BaseSettings):
    """The whole configuration; see ``config.example.yaml`` for every field documented."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        validate_assignment=True,
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    strategies: StrategiesSettings = Field(default_factory=StrategiesSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    backends: list[BackendConfig] = Field(
        default_factory=list,
        max_length=32,
        description="Several backends behind one endpoint (a pool); empty: `model` alone.",
    )
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @model_validator(mode="after")
    def _pool_names(self) -> AppConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backends need distinct names, got {names}")
        if self.pool.id in names:
            raise ValueError(f"pool.id {self.pool.id!r} is also a backend's name")
        known = {OPEN, *(p.name for p in self.tasks.all_profiles())}
        for b in self.backends:
            if unknown := sorted(set(b.profiles) - known):
                raise ValueError(
                    f"backend {b.name!r} names unknown task profiles {unknown}; "
                    f"known: {sorted(known)}"
                )
        return self

    def pool_backends(self) -> list[BackendConfig]:
        """The backends of the pool: ``backends``, or ``model`` alone."""
        if self.backends:
            return list(self.backends)
        return [BackendConfig(**self.model.model_dump())]

    def for_backend(self, backend: BackendConfig) -> AppConfig:
        """This config as one backend's service sees it: ``model`` is that backend (and its
        router model, when it has its own, the policy's)."""
        model = ModelConfig(**backend.model_dump(exclude=set(POOL_FIELDS)))
        update: dict[str, Any] = {"model": model, "backends": []}
        if backend.router_model_path is not None:
            update["policy"] = self.policy.model_copy(
                update={"classifier_path": backend.router_model_path}
            )
        return self.model_copy(update=update)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file (passed as init kwargs), which beats defaults.
        return (env_settings, init_settings)


def format_errors(exc: ValidationError, source: str) -> str:
    """``exc`` as one line per bad field (``source`` names where the values came from)."""
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read ``path`` (YAML, optional), apply ``ACR_*`` overrides and validate.

    Returns the validated ``AppConfig``; raises ``ConfigError`` naming every bad field.
    ``env`` defaults to ``os.environ``; tests pass their own mapping.
    """
    return parse_config(*read_config_file(path), env=env)


def read_config_file(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The mapping in the YAML file ``path`` and its source name (``({}, "defaults")`` for
    no file); raises ``ConfigError`` when the file is missing or not a YAML mapping."""
    if path is None:
        return {}, "defaults"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return loaded, str(p)


def parse_config(
    data: Mapping[str, Any], source: str, env: Mapping[str, str] | None = None
) -> AppConfig:
    """``data`` (``source`` names it in errors) with ``ACR_*`` overrides, validated; raises
    ``ConfigError`` naming every bad field."""
    environ = os.environ if env is None else env
    saved = None
    if env is not None:
        # pydantic-settings reads os.environ; swap in the given mapping for this call only.
        saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    try:
        return AppConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from exc
    finally:
        if saved is not None:
            for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
                del os.environ[k]
            os.environ.update(saved)


def config_to_yaml(config: AppConfig) -> str:
    """The config as YAML (what ``acr config --show`` prints and the chart renders)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
