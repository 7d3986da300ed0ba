"""report-worker: turns report requests from RabbitMQ into stored, cited reports."""

__version__ = "0.1.0"
