"""Fixtures that start the sandbox API in-process."""
