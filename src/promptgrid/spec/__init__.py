"""Stage 1, the spec: a YAML spec and its grid read, every value checked, expanded into jobs."""
