"""Stage 3, the output: sinks, key layout, the prediction journal, the Parquet manifest, input images."""
