"""Stage 4, exports: an output's images and manifest rows as Hugging Face Parquet or WebDataset tar shards."""
