"""AdminClient and NewTopic, shaped like confluent_kafka.admin's.

Each call returns {name: concurrent.futures.Future}; the work is local, so
the futures are already done when returned.
"""
from concurrent.futures import Future

from . import config
from .errors import KafkaError, KafkaException
from .store import Store


class NewTopic:
    def __init__(self, topic, num_partitions=-1, replication_factor=-1, replica_assignment=None,
                 config=None):
        self.topic = topic
        self.num_partitions = num_partitions
        self.replication_factor = replication_factor
        self.replica_assignment = replica_assignment
        self.config = dict(config or {})

    def __repr__(self):
        return "NewTopic(topic=%s,num_partitions=%d)" % (self.topic, self.num_partitions)


class PartitionMetadata:
    def __init__(self, pid):
        self.id = pid
        self.leader = 0
        self.replicas = [0]
        self.isrs = [0]
        self.error = None


class TopicMetadata:
    def __init__(self, topic, partitions, error=None):
        self.topic = topic
        self.partitions = {i: PartitionMetadata(i) for i in range(partitions)}
        self.error = error

    def __repr__(self):
        return "TopicMetadata(%s, %d partitions)" % (self.topic, len(self.partitions))


class BrokerMetadata:
    def __init__(self, path):
        self.id = 0
        self.host = path
        self.port = 0


class ClusterMetadata:
    def __init__(self, store, topics):
        self.cluster_id = "pylog:" + store.path
        self.controller_id = 0
        self.brokers = {0: BrokerMetadata(store.path)}
        self.topics = topics
        self.orig_broker_id = 0
        self.orig_broker_name = store.path


class DeletedRecords:
    """The result of delete_records for one partition."""

    def __init__(self, low_watermark):
        self.low_watermark = low_watermark

    def __repr__(self):
        return "DeletedRecords(low_watermark=%d)" % self.low_watermark


def cluster_metadata(store, topic=None):
    topics = store.topics()
    if topic is not None:
        desc = topics.get(topic)
        tm = {topic: TopicMetadata(topic, desc["partitions"]) if desc else
              TopicMetadata(topic, 0, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))}
    else:
        tm = {name: TopicMetadata(name, d["partitions"]) for name, d in topics.items()}
    return ClusterMetadata(store, tm)


def _done(result=None, error=None):
    f = Future()
    if error is not None:
        f.set_exception(error)
    else:
        f.set_result(result)
    return f


class AdminClient:
    def __new__(cls, conf=None, **kwargs):
        conf = dict(conf or {}, **kwargs)
        servers = conf.get("bootstrap.servers")
        if isinstance(servers, str) and servers and not servers.startswith("file:"):
            try:
                from confluent_kafka.admin import AdminClient as KafkaAdmin
            except ImportError:
                raise config.invalid("bootstrap.servers names a Kafka cluster: install "
                                     "confluent-kafka to use one") from None
            return KafkaAdmin({k: v for k, v in conf.items() if not k.startswith("pylog.")})
        return super().__new__(cls)

    def __init__(self, conf=None, **kwargs):
        conf = dict(conf or {}, **kwargs)
        self._conf = config.parse(conf, "admin")
        self._store = Store.acquire(config.store_path(self._conf), self._conf)

    def create_topics(self, new_topics, operation_timeout=0, request_timeout=None,
                      validate_only=False):
        if not isinstance(new_topics, (list, tuple)) or not all(isinstance(t, NewTopic) for t in new_topics):
            raise TypeError("create_topics() expects a list of NewTopic")
        out = {}
        for nt in new_topics:
            parts = 1 if nt.num_partitions == -1 else nt.num_partitions
            try:
                if validate_only:
                    # Kafka's validate_only runs every check of a real create,
                    # the topic's existence and partition count included.
                    from .format import validate_topic
                    from .store import MAX_PARTITIONS, validate_topic_config
                    validate_topic(nt.topic)
                    if not isinstance(parts, int) or isinstance(parts, bool) \
                            or not 1 <= parts <= MAX_PARTITIONS:
                        raise KafkaException(KafkaError(
                            KafkaError.INVALID_PARTITIONS,
                            "num_partitions must be an integer in 1..%d, got %r"
                            % (MAX_PARTITIONS, parts)))
                    validate_topic_config(nt.config)
                    if self._store.topic(nt.topic) is not None:
                        raise KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS,
                                                        "Topic '%s' already exists." % nt.topic))
                else:
                    self._store.create_topic(nt.topic, parts, nt.config)
                out[nt.topic] = _done(None)
            except KafkaException as e:
                out[nt.topic] = _done(error=e)
        return out

    def list_topics(self, topic=None, timeout=-1):
        return cluster_metadata(self._store, topic)

    def delete_records(self, topic_partition_offsets, request_timeout=None, operation_timeout=None):
        """Move each partition's log start to the given offset (-1: the high
        watermark); returns {TopicPartition: Future(DeletedRecords)}."""
        from .message import TopicPartition
        out = {}
        for tp in topic_partition_offsets:
            if not isinstance(tp, TopicPartition):
                raise TypeError("delete_records() expects a list of TopicPartition")
            try:
                low = self._store.delete_records(tp.topic, tp.partition, tp.offset)
                out[tp] = _done(DeletedRecords(low))
            except KafkaException as e:
                out[tp] = _done(error=e)
        return out

    def close(self):
        if self._store is not None:
            self._store.release()
            self._store = None
