"""The pipeline's stages, grouped by what they do, each importable and testable without Prefect running."""
