"""pylog: an embedded, file-backed log store with Kafka's exactly-once semantics."""
__version__ = "0.1.0"
