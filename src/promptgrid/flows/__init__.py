"""The Prefect flows (`generate`, `backfill`, `sweep`): each wires the tasks of `promptgrid.tasks`; nothing
else lives here."""
