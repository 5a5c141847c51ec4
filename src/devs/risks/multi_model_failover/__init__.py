"""Multi-model failover: an ordered list of model clients behind one ``call()``.

Every attempt, backoff, failover, probe and state change is appended to an event log; metrics,
states and the audit trail are folds of that log (``replay``), live and after the fact.

Threads: ``SyncMultiModelFailover`` is the same engine for code that is not async (one
background event loop; safe to call from many threads).

Exceptions::

    ModelError (kind: ErrorKind)
     +-- AllModelsFailedError (attempts)
          +-- DeadlineExceededError (also TimeoutError)
    ConfigError (ValueError)
    EventLogError (ValueError)
     +-- SchemaVersionError
    EngineClosedError (RuntimeError)
"""

from loguru import logger as _logger

from .adapters.config import ClientConfig, FailoverConfig, load_config
from .adapters.facade import MultiModelFailover, replay
from .adapters.sync import SyncMultiModelFailover, SyncStream
from .core.calls import CallOutcome, EngineClosedError, FailReason
from .core.clock import VirtualClock
from .core.errors import (
    AllModelsFailedError,
    AttemptRecord,
    ConfigError,
    DeadlineExceededError,
    ErrorKind,
    EventLogError,
    ModelError,
    SchemaVersionError,
)
from .core.events import Event
from .core.health import HealthState
from .core.policies import HealthPolicy, RetryPolicy
from .core.pricing import Price
from .core.projections import AuditEntry, Metrics, ModelMetrics, ModelState, Snapshot
from .core.protocols import ChatMessage, EventStore, ModelClient, Params, Prompt
from .core.responses import ModelResponse, ToolCall, Usage
from .core.streaming import FailoverStream, StreamInterruptedError, StreamOutcome, StreamSwitch
from .storage.sqlite import SQLiteEventStore

# loguru's library convention: silent until the application calls logger.enable(...).
_logger.disable(__name__)

__all__ = [
    "AllModelsFailedError",
    "AttemptRecord",
    "AuditEntry",
    "CallOutcome",
    "ChatMessage",
    "ClientConfig",
    "ConfigError",
    "DeadlineExceededError",
    "EngineClosedError",
    "ErrorKind",
    "Event",
    "EventLogError",
    "EventStore",
    "FailReason",
    "FailoverConfig",
    "FailoverStream",
    "HealthPolicy",
    "HealthState",
    "Metrics",
    "ModelClient",
    "ModelError",
    "ModelMetrics",
    "ModelResponse",
    "ModelState",
    "MultiModelFailover",
    "Params",
    "Price",
    "Prompt",
    "RetryPolicy",
    "SQLiteEventStore",
    "SchemaVersionError",
    "Snapshot",
    "StreamInterruptedError",
    "StreamOutcome",
    "StreamSwitch",
    "SyncMultiModelFailover",
    "SyncStream",
    "ToolCall",
    "Usage",
    "VirtualClock",
    "load_config",
    "replay",
]
