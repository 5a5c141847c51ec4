"""The pure domain: events, policies, backoff, health, projections and the engine.

Nothing in this package does I/O of its own; the engine receives its event store, clocks,
sleep and random source from the caller (see ``adapters.facade``).
"""
