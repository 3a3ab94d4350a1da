"""Subcommands of the `promptgrid` CLI, one module each; each exposes `register(app)`."""
