"""Prefect flows that wire the stages in tasks/ together."""
