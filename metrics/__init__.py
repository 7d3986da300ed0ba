"""Prometheus metrics of report-worker: definitions, multiprocess collection, HTTP endpoint."""
