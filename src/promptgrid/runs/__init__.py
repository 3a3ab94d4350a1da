"""The run service under both faces: a run prepared once (spec, settings, models, output, lease) and run
through the flows, ending in one `promptgrid.run_summary.RunSummary`; the command line and the notebook API
only translate their arguments into `RunOptions` and its summary into their own terms."""
