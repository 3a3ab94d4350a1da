"""Stage 4, the report: an output's manifest drawn as HTML grids and PNG contact sheets."""
