"""Benchmark harness: report-worker run under a fake LLM of known latency, figures against the ideal."""
