"""A local, strict stand-in for the prediction API, for demos, tests and benchmarks."""
