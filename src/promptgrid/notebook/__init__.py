"""The Python API for notebooks and scripts: specs, plans, runs, the manifest as pandas, contact sheets.

Its public names are exported lazily from `promptgrid` itself (`promptgrid.run`, ...); the modules here are
a face over the run service (`promptgrid.runs`), beside the command line, which they never import.
"""
