"""The service's own observability: structured logs with release/event context, Prometheus metrics."""
