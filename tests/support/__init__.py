"""What several test modules share: sandbox and S3 fixtures, a recorded run for the report, processes."""
