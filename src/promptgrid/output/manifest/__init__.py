"""The manifest: Parquet rows declared once, written in atomic parts, read back latest-per-job."""
