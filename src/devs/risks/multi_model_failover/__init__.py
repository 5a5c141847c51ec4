"""Multi-model failover: an ordered list of model clients behind one ``call()``.

Every attempt, backoff, failover, probe and state change is appended to an event log; metrics,
states and the audit trail are folds of that log (``replay``), live and after the fact.

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
from .core.projections import AuditEntry, Metrics, ModelMetrics, ModelState, Snapshot
from .core.protocols import EventStore, ModelClient
from .core.responses import ModelResponse, Usage
from .core.streaming import FailoverStream, StreamInterruptedError, StreamOutcome, StreamSwitch
from .storage.sqlite import SQLiteEventStore

# loguru's library convention: silent until the application calls logger.enable(...).
_logger.disable(__name__)

__all__ = [
    "AllModelsFailedError",
    "AttemptRecord",
    "AuditEntry",
    "CallOutcome",
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
    "RetryPolicy",
    "SQLiteEventStore",
    "SchemaVersionError",
    "Snapshot",
    "StreamInterruptedError",
    "StreamOutcome",
    "StreamSwitch",
    "Usage",
    "VirtualClock",
    "load_config",
    "replay",
]
