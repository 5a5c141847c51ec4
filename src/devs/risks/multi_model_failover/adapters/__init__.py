"""The edges: the public facade, configuration, model clients, the CLI and logging set-up."""
