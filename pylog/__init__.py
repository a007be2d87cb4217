"""pylog: an embedded, file-backed log store with Kafka's exactly-once semantics.

The API follows confluent-kafka: point bootstrap.servers at file:///some/dir
for a pylog store.  Any other bootstrap.servers names a Kafka cluster, and
Producer/Consumer then hand back confluent-kafka's own clients, so the same
program runs on one machine or on a cluster.
"""
from .errors import KafkaError, KafkaException
from .message import (Message, TopicPartition, OFFSET_BEGINNING, OFFSET_END, OFFSET_STORED,
                      OFFSET_INVALID, TIMESTAMP_NOT_AVAILABLE, TIMESTAMP_CREATE_TIME,
                      TIMESTAMP_LOG_APPEND_TIME)
from .producer import Producer
from .consumer import Consumer

__version__ = "0.1.0"

__all__ = ["Producer", "Consumer", "Message", "TopicPartition", "KafkaError", "KafkaException",
           "OFFSET_BEGINNING", "OFFSET_END", "OFFSET_STORED", "OFFSET_INVALID",
           "TIMESTAMP_NOT_AVAILABLE", "TIMESTAMP_CREATE_TIME", "TIMESTAMP_LOG_APPEND_TIME"]
