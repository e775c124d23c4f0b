"""Benchmark harness: runs the service against PostgreSQL and reports ratios against a floor."""
