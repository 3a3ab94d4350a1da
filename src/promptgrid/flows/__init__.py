"""Prefect flows that wire the stages of promptgrid.tasks together; nothing else lives here."""
