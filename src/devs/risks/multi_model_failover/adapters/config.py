"""Configuration: one document, from ``MULTI_MODEL_FAILOVER_CONFIG`` (JSON), a YAML file or a
mapping the application already holds.

Where it comes from, first found wins: the environment variable (when set and not blank),
else the source given (a path to a YAML file, or the document itself as a mapping, the shape
``yaml.safe_load`` returns), else ``config/risks.yaml``. The variable wins even over a mapping:
an operator can always replace the configuration of a deployed application without a code
change. The document is validated by msgspec; every problem is a ``ConfigError`` naming the key
path and the source (the variable, the file, or "the given mapping"). API keys are never
written in the document: ``api_key_env`` names the environment variable that holds one.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import yaml

from ..core.errors import ConfigError
from ..core.policies import HealthPolicy, RetryPolicy
from ..core.pricing import Price
from ..core.protocols import Durability

ENV_VAR: Final = "MULTI_MODEL_FAILOVER_CONFIG"
DEFAULT_PATH: Final = Path("config/risks.yaml")
ROOT_KEY: Final = "multi_model_failover"
MAPPING_SOURCE: Final = "the given mapping"

# A path to a YAML file, or the configuration document itself.
ConfigSource = str | os.PathLike[str] | Mapping[str, Any]

ClientKind = Literal["openai", "anthropic", "callable"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# postgresql://user:password@host/... or ...?password=...: a literal password in the document.
_URL_PASSWORD = re.compile(r"^postgres(?:ql)?://[^/@:]*:[^/@]+@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"[?&]password=", re.IGNORECASE)
_PROBES: Final = ("request", "models")


def _check_seconds(name: str, value: float | None) -> None:
    """ValueError naming ``name`` unless ``value`` (seconds) is None or finite and > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 seconds and finite, got {value!r}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error, not last-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r}: a key may be given once",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class PriceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``price`` of a client: USD per million ``input`` and ``output`` tokens (both required).

    With a price, each attempt's reported usage gets a ``cost`` in the log and in metrics.
    """

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{name} must be a finite number >= 0 (USD per million tokens), got {value!r}"
                )

    def to_price(self) -> Price:
        """The engine's ``Price``."""
        return Price(input=self.input, output=self.output)


class ClientConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model client entry; clients are tried in the order they are listed."""

    id: str
    kind: ClientKind
    model: str = ""
    base_url: str = ""
    api_key_env: str | None = None
    timeout: float = 30.0
    headers: dict[str, str] = {}
    params: dict[str, Any] = {}
    target: str | None = None  # "package.module:function" for kind=callable
    api_key: str | None = None  # refused: accepted only to explain why
    # How health_check probes: "request" (one real request for one token) or "models"
    # (GET /models, which some providers answer while their model cannot serve).
    probe: Literal["request", "models"] = "request"
    # Whether the model continues a final assistant message (``stream(..., recovery="continue")``);
    # None is the protocol's default: true for anthropic, false for openai.
    prefill: bool | None = None
    # USD per million input and output tokens (None: usage is counted, never priced).
    price: PriceConfig | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id must not be empty")
        if self.api_key is not None:
            raise ValueError(
                "api_key: literal keys are refused (config files end up in repositories and "
                "logs); put the key in an environment variable and name it in api_key_env"
            )
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits, _), "
                "not the key itself"
            )
        _check_seconds("timeout", self.timeout)
        if self.kind == "callable" and not self.target:
            raise ValueError("target is required for kind=callable ('package.module:function')")
        if self.kind in ("openai", "anthropic") and not self.model:
            raise ValueError(f"model is required for kind={self.kind}")
        self._check_http_options()

    def _check_http_options(self) -> None:
        # msgspec checks the types of a document; these checks also hold for Python callers.
        if self.probe not in _PROBES:
            raise ValueError(f"probe must be 'request' or 'models', got {self.probe!r}")
        if self.prefill is not None and not isinstance(self.prefill, bool):
            raise ValueError(f"prefill must be true or false, got {self.prefill!r}")
        if self.kind == "callable" and self.probe != "request":
            raise ValueError("probe applies to kind openai and anthropic, not callable")
        if self.kind == "callable" and self.prefill is not None:
            raise ValueError("prefill applies to kind openai and anthropic, not callable")

    def __repr__(self) -> str:
        # Headers may carry credentials; never show their values.
        headers = dict.fromkeys(self.headers, "[secure]")
        return (
            f"ClientConfig(id={self.id!r}, kind={self.kind!r}, model={self.model!r}, "
            f"base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, headers={headers}, "
            f"probe={self.probe!r}, prefill={self.prefill!r})"
        )


class RetentionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``retention``: archive the events older than ``keep_days`` into ``archive_dir`` (one
    SQLite archive file per day of events), every ``interval`` seconds, in the background of
    an engine that is open (``async with``). See ``adapters.retention``."""

    keep_days: float
    archive_dir: str
    interval: float = 3600.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.keep_days) and self.keep_days > 0):
            raise ValueError(f"keep_days must be > 0 and finite, got {self.keep_days!r}")
        if not self.archive_dir.strip() or "\x00" in self.archive_dir:
            raise ValueError("archive_dir must name a folder")
        _check_seconds("interval", self.interval)


class FailoverConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``multi_model_failover`` section."""

    clients: list[ClientConfig]
    retry_policy: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    health_policy: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    health_check_interval: float = 30.0
    # A path to an SQLite file, or postgresql://user@host:port/db for a fleet's shared log.
    event_log: str | None = None
    # The NAME of the environment variable holding the PostgreSQL password (libpq's own
    # PGPASSWORD and ~/.pgpass work too); never the password itself.
    event_log_password_env: str | None = None
    durability: Durability = "process"
    # This replica's name in a shared log, unique among live processes (default: host-pid-id).
    replica: str | None = None
    # Seconds between reads of the other replicas' events (default: the store's own).
    follow_interval: float | None = None
    # Old events archived in the background (None: the log keeps everything).
    retention: RetentionConfig | None = None

    def __post_init__(self) -> None:
        if not self.clients:
            raise ValueError("clients must list at least one client")
        self._check_event_log()
        _check_seconds("follow_interval", self.follow_interval)
        ids = [c.id for c in self.clients]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate client id(s): {', '.join(duplicates)}")
        _check_seconds("health_check_interval", self.health_check_interval)

    def _check_event_log(self) -> None:
        if self.event_log_password_env is not None and not _ENV_NAME.match(
            self.event_log_password_env
        ):
            raise ValueError(
                "event_log_password_env must be the NAME of an environment variable "
                "(letters, digits, _), not the password itself"
            )
        url = None if self.event_log is None else urllib.parse.unquote(self.event_log)
        if url is not None and (
            _URL_PASSWORD.match(url)
            or (url.lower().startswith("postgres") and _QUERY_PASSWORD.search(url))
        ):
            raise ValueError(
                "event_log: a password in the URL is refused (config files end up in "
                "repositories and logs); name its environment variable in event_log_password_env"
            )

    @property
    def prices(self) -> dict[str, Price]:
        """The ``price`` of each client that has one, by client id (the engine's ``prices``)."""
        return {c.id: c.price.to_price() for c in self.clients if c.price is not None}

    def event_log_password(self, env: Mapping[str, str] | None = None) -> str | None:
        """The PostgreSQL password from ``event_log_password_env``; ConfigError when unset."""
        return _secret_from(self.event_log_password_env, env, "event_log_password_env")


class _Document(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    multi_model_failover: FailoverConfig


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """YAML's complaint in one line, with where it is."""
    problem = getattr(exc, "problem", None) or "no detail"
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"not valid YAML/JSON ({problem}{where})".split())


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate key {key!r}: a key may be given once")
        found[key] = value
    return found


def _error(source: str, exc: Exception) -> ConfigError:
    message = str(exc)
    # msgspec reports the path as `$.multi_model_failover.clients[0].kind`; keep it readable.
    message = message.replace("$.", "").replace(" - at `$`", "")
    return ConfigError(f"invalid configuration in {source}: {message}")


def _too_deep(source: str) -> ConfigError:
    return ConfigError(f"invalid configuration in {source}: nested too deeply")


def read_document(text: str | bytes, *, source: str = "<config>") -> Any:
    """The YAML (or JSON) document in ``text``, as plain data (None when empty), read as a
    configuration is: YAML's safe loader, a key given twice is an error. ``ConfigError``
    naming ``source`` and the line when it is not valid YAML or nests too deeply."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) if text else None  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid configuration in {source}: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise _too_deep(source) from None


def parse_config(
    data: Mapping[str, Any] | str | bytes, *, source: str = "<config>"
) -> FailoverConfig:
    """Validate a configuration document (a mapping, JSON text or YAML text)."""
    if isinstance(data, str | bytes):
        data = read_document(data, source=source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"invalid configuration in {source}: expected a mapping with key {ROOT_KEY!r}, "
            f"got {type(data).__name__}"
        )
    try:
        return msgspec.convert(data, _Document, strict=True).multi_model_failover
    except msgspec.ValidationError as exc:
        raise _error(source, exc) from None
    except RecursionError:
        raise _too_deep(source) from None
    except UnicodeError:
        # YAML turns a JSON escaped surrogate pair ("\ud83d\ude00") into two lone surrogates.
        raise ConfigError(
            f"invalid configuration in {source}: text is not valid Unicode (a lone surrogate, "
            "such as an escaped surrogate pair; write the character itself)"
        ) from None


def load_config(
    source: ConfigSource | None = None, *, env: Mapping[str, str] | None = None
) -> FailoverConfig:
    """Load the configuration: the env var's JSON if set, else ``source`` (a path to a YAML
    file, or the document as a mapping), else the default file. ``ConfigError`` names the key
    path and where the document came from."""
    environ = os.environ if env is None else env
    text = environ.get(ENV_VAR)
    if text is not None and text.strip():
        try:
            # The standard parser: it sees duplicate keys, and reads 1e999 as infinity, which
            # validation then refuses naming its key.
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        except ValueError as exc:  # json.JSONDecodeError, a duplicate key
            raise ConfigError(
                f"invalid configuration in environment variable {ENV_VAR}: not valid JSON ({exc})"
            ) from None
        except RecursionError:
            raise _too_deep(f"environment variable {ENV_VAR}") from None
        return parse_config(data, source=f"environment variable {ENV_VAR}")
    if isinstance(source, Mapping):
        return parse_config(source, source=MAPPING_SOURCE)
    if source is not None and not isinstance(source, str | os.PathLike):
        raise TypeError(
            "the configuration source must be a path or a mapping (a configuration document), "
            f"got {type(source).__name__}"
        )
    file = Path(source) if source is not None else DEFAULT_PATH
    try:
        content = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no configuration: {ENV_VAR} is not set and {file} does not exist"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc}") from None
    return parse_config(content, source=str(file))


def _secret_from(name: str | None, env: Mapping[str, str] | None, key: str) -> str | None:
    """The value of the environment variable ``name`` (None when no variable is named);
    ConfigError naming the variable and the ``key`` that names it when it is unset or empty."""
    if name is None:
        return None
    environ = os.environ if env is None else env
    value = environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} ({key}) is not set")
    return value


def resolve_api_key(client: ClientConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The API key of ``client`` from its environment variable; ConfigError when unset."""
    try:
        return _secret_from(client.api_key_env, env, "api_key_env")
    except ConfigError as exc:
        raise ConfigError(f"client {client.id!r}: {exc}") from None
