"""Stages of the pipeline, one module each, usable without Prefect running."""
