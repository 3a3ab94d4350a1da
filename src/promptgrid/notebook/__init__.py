"""The Python API for notebooks and scripts: specs, plans, runs, the manifest as pandas, contact sheets.

Its public names are exported lazily from `promptgrid` itself (`promptgrid.run`, ...); the modules here are
the top layer, above the command line, so they may use every stage.
"""
