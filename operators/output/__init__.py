"""Outputs: transcript Parquet parts (write) and the run summary (report)."""
