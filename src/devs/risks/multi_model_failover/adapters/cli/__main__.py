"""``python -m devs.risks.multi_model_failover.adapters.cli``: the ``failover`` command."""

from .commands import main

main()
