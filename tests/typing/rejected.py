"""Never executed: mistakes that ``mypy --strict`` must refuse.

``tests/test_public_api.py`` runs mypy on this file: each line ending in an ``expect``
comment must get an error containing the comment's text, and no other line may get one. A
mistake that type-checks here is one a user finds only at run time.
"""

from __future__ import annotations

from devs.risks.multi_model_failover import (
    ModelClient,
    MultiModelFailover,
    SyncMultiModelFailover,
)


async def mistakes(fo: MultiModelFailover, clients: list[ModelClient]) -> None:
    """One typo or wrong type per line."""
    MultiModelFailover.from_config(evnt_store="log.sqlite3")  # expect: "evnt_store"
    SyncMultiModelFailover.from_config(evnt_store="log.sqlite3")  # expect: "evnt_store"
    MultiModelFailover(clients, evnt_store="log.sqlite3")  # expect: "evnt_store"
    SyncMultiModelFailover(clients, evnt_store="log.sqlite3")  # expect: "evnt_store"
    MultiModelFailover.from_config(durability="forever")  # expect: "durability"
    MultiModelFailover(clients, prices={"a": 3.0})  # expect: "Price | Mapping[str, float]"
    await fo.call("hi", params=[("temperature", 0)])  # expect: "params"
    await fo.call(42)  # expect: "int"
    fo.stream("hi", recovery="later")  # expect: No overload variant
    cost: float = fo.metrics().cost  # expect: "float | None"
    print(cost)
