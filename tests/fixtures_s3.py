"""Fixtures that start an S3-compatible server (moto) on loopback."""
