"""KafkaError and KafkaException, shaped like confluent-kafka's.

Codes are librdkafka's numbers: negative ones are local (client) errors,
positive ones are broker errors.  Only the codes pylog can raise or that a
program ported from confluent-kafka is likely to compare against are named.
"""

# name -> (code, description)
_CODES = {
    "_BAD_MSG": (-199, "Local: Bad message format"),
    "_BAD_COMPRESSION": (-198, "Local: Invalid compressed data"),
    "_DESTROY": (-197, "Local: Broker handle destroyed"),
    "_FAIL": (-196, "Local: Communication failure with broker"),
    "_MSG_TIMED_OUT": (-192, "Local: Message timed out"),
    "_PARTITION_EOF": (-191, "Broker: No more messages"),
    "_UNKNOWN_PARTITION": (-190, "Local: Unknown partition"),
    "_FS": (-189, "Local: File or filesystem error"),
    "_UNKNOWN_TOPIC": (-188, "Local: Unknown topic"),
    "_INVALID_ARG": (-186, "Local: Invalid argument or configuration"),
    "_TIMED_OUT": (-185, "Local: Timed out"),
    "_QUEUE_FULL": (-184, "Local: Queue full"),
    "_UNKNOWN_GROUP": (-179, "Local: Unknown group"),
    "_CONFLICT": (-173, "Local: Conflicting use"),
    "_STATE": (-172, "Local: Erroneous state"),
    "_NOT_IMPLEMENTED": (-170, "Local: Not implemented"),
    "_NO_OFFSET": (-168, "Local: No offset stored"),
    "_NOENT": (-156, "Local: No such entry"),
    "_INVALID_TYPE": (-154, "Local: Invalid type"),
    "_PURGE_QUEUE": (-152, "Local: Purged in queue"),
    "_PURGE_INFLIGHT": (-151, "Local: Purged in flight"),
    "_FATAL": (-150, "Local: Fatal error"),
    "_MAX_POLL_EXCEEDED": (-147, "Local: Maximum application poll interval (max.poll.interval.ms) exceeded"),
    "_INCONSISTENT": (-149, "Local: Inconsistent state"),
    "_NOT_CONFIGURED": (-145, "Local: Functionality not configured"),
    "_FENCED": (-144, "Local: This instance has been fenced by a newer instance"),
    "_ASSIGNMENT_LOST": (-142, "Local: Group partition assignment lost"),
    "_AUTO_OFFSET_RESET": (-140, "Local: No offset to automatically reset to"),
    "UNKNOWN": (-1, "Unknown broker error"),
    "NO_ERROR": (0, "Success"),
    "OFFSET_OUT_OF_RANGE": (1, "Broker: Offset out of range"),
    "INVALID_MSG": (2, "Broker: Invalid message"),
    "UNKNOWN_TOPIC_OR_PART": (3, "Broker: Unknown topic or partition"),
    "INVALID_MSG_SIZE": (4, "Broker: Invalid message size"),
    "MSG_SIZE_TOO_LARGE": (10, "Broker: Message size too large"),
    "TOPIC_EXCEPTION": (17, "Broker: Invalid topic"),
    "RECORD_LIST_TOO_LARGE": (18, "Broker: Message batch larger than configured server segment size"),
    "ILLEGAL_GENERATION": (22, "Broker: Specified group generation id is not valid"),
    "INCONSISTENT_GROUP_PROTOCOL": (23, "Broker: Inconsistent group protocol"),
    "UNKNOWN_MEMBER_ID": (25, "Broker: Unknown member"),
    "REBALANCE_IN_PROGRESS": (27, "Broker: Group rebalance in progress"),
    "INVALID_TIMESTAMP": (32, "Broker: Invalid timestamp"),
    "TOPIC_ALREADY_EXISTS": (36, "Broker: Topic already exists"),
    "INVALID_PARTITIONS": (37, "Broker: Invalid number of partitions"),
    "INVALID_CONFIG": (40, "Broker: Configuration is invalid"),
    "INVALID_REQUEST": (42, "Broker: Invalid request"),
    "POLICY_VIOLATION": (44, "Broker: Policy violation"),
    "OUT_OF_ORDER_SEQUENCE_NUMBER": (45, "Broker: Broker received an out of order sequence number"),
    "DUPLICATE_SEQUENCE_NUMBER": (46, "Broker: Broker received a duplicate sequence number"),
    "INVALID_PRODUCER_EPOCH": (47, "Broker: Producer attempted an operation with an old epoch"),
    "INVALID_TXN_STATE": (48, "Broker: Producer attempted a transactional operation in an invalid state"),
    "INVALID_PRODUCER_ID_MAPPING": (49, "Broker: Producer attempted to use a producer id which is not currently assigned to its transactional id"),
    "INVALID_TRANSACTION_TIMEOUT": (50, "Broker: Transaction timeout is larger than the maximum value allowed by the broker's max.transaction.timeout.ms"),
    "CONCURRENT_TRANSACTIONS": (51, "Broker: Producer attempted to update a transaction while another concurrent operation on the same transaction was ongoing"),
    "KAFKA_STORAGE_ERROR": (56, "Broker: Disk error when trying to access log file on disk"),
    "UNKNOWN_PRODUCER_ID": (59, "Broker: Unknown Producer Id"),
    "GROUP_ID_NOT_FOUND": (69, "Broker: The group id does not exist"),
    "FENCED_INSTANCE_ID": (82, "Broker: Static consumer fenced by other consumer with same group.instance.id"),
    "INVALID_RECORD": (87, "Broker: Broker failed to validate record"),
    "UNSTABLE_OFFSET_COMMIT": (88, "Broker: There are unstable offsets that need to be cleared"),
    "PRODUCER_FENCED": (90, "Broker: There is a newer producer with the same transactionalId which fences the current one"),
    "TRANSACTION_ABORTABLE": (120, "Broker: Transaction aborted and must be retried"),
}
_NAMES = {code: name for name, (code, _) in _CODES.items()}


class KafkaError:
    """An error with a librdkafka code, a message and the transaction flags.

    fatal(): the client instance cannot be used any more (e.g. fenced).
    retriable(): the same call may succeed if repeated.
    txn_requires_abort(): abort the current transaction, then start again.
    """

    __slots__ = ("_code", "_reason", "_fatal", "_retriable", "_txn_requires_abort")

    def __init__(self, error, reason=None, fatal=False, retriable=False,
                 txn_requires_abort=False):
        self._code = int(error)
        self._reason = reason
        self._fatal = bool(fatal)
        self._retriable = bool(retriable)
        self._txn_requires_abort = bool(txn_requires_abort)

    def code(self):
        return self._code

    def name(self):
        return _NAMES.get(self._code, "ERR_%d?" % self._code)

    def str(self):
        if self._reason is not None:
            return self._reason
        entry = _CODES.get(self.name())
        return entry[1] if entry else "Err-%d?" % self._code

    def fatal(self):
        return self._fatal

    def retriable(self):
        return self._retriable

    def txn_requires_abort(self):
        return self._txn_requires_abort

    def __eq__(self, other):
        if isinstance(other, KafkaError):
            return self._code == other._code
        if isinstance(other, int):
            return self._code == other
        return NotImplemented

    def __hash__(self):
        return hash(self._code)

    def __str__(self):
        flags = "FATAL," if self._fatal else ""
        return 'KafkaError{%scode=%s,val=%d,str="%s"}' % (flags, self.name(), self._code, self.str())

    __repr__ = __str__


for _name, (_code, _) in _CODES.items():
    setattr(KafkaError, _name, _code)
KafkaError.CORRUPT_MESSAGE = 2  # Kafka's name for librdkafka's INVALID_MSG


class KafkaException(Exception):
    """Raised with one KafkaError as args[0], like confluent_kafka.KafkaException."""

    def __init__(self, kafka_error, *args, **kwargs):
        if not isinstance(kafka_error, KafkaError):
            kafka_error = KafkaError(kafka_error, *args, **kwargs)
        super().__init__(kafka_error)

    @property
    def error(self):
        return self.args[0]

    def __str__(self):
        return str(self.args[0])


def kafka_exception(code, reason, **flags):
    """Shorthand: KafkaException(KafkaError(code, reason, **flags))."""
    return KafkaException(KafkaError(code, reason, **flags))


class CorruptRecordError(KafkaException):
    """Stored bytes failed validation (CRC, magic, lengths): CORRUPT_MESSAGE."""

    def __init__(self, reason):
        super().__init__(KafkaError(KafkaError.CORRUPT_MESSAGE, reason))


class StorageError(KafkaException):
    """An I/O failure made a partition unwritable (KAFKA_STORAGE_ERROR, fatal).

    After a failed fsync the kernel may have dropped the dirty pages, so the
    write is never retried and acknowledged: the partition refuses writes until
    it is reopened, which revalidates the log from disk.
    """

    def __init__(self, reason):
        super().__init__(KafkaError(KafkaError.KAFKA_STORAGE_ERROR, reason, fatal=True))
