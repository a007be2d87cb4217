"""pylog transactions: kafka-transactions.sh over a store (list, describe,
describe-producers, find-hanging, abort).

The coordinator's state per transactional.id is in LMDB (pylog.txn); a
partition's producer state is replayed from LMDB and the log when the
partition is opened.  There is one "broker", id 0.

A hanging transaction is open in a partition's producer state (it holds
back the last stable offset) while nothing will ever end it there: no
transactional.id owns the producer id, or the owner's coordinator state is
no longer an unfinished transaction that includes the partition.  Open
transactions whose last write is older than --max-transaction-timeout
minutes are reported too (Kafka's bound).

abort --transactional-id aborts through the coordinator: Prepare*Abort,
an epoch bump that fences the owner, ABORT markers on every partition.
abort --topic --partition --start-offset writes one ABORT marker for the
producer whose open transaction starts there (Kafka's way out of a
hanging transaction).
"""
import time

from ..codec import control_batch
from ..txn import COORDINATOR_EPOCH, ONGOING, PREPARE_ABORT, PREPARE_COMMIT
from .common import CliError, check_partition, now_ms, open_store, print_table

_UNFINISHED = (ONGOING, PREPARE_COMMIT, PREPARE_ABORT)


def add_parser(sub, parents):
    p = sub.add_parser("transactions", parents=parents, help="inspect and abort transactions")
    cmds = p.add_subparsers(dest="txn_command", metavar="COMMAND", required=True)
    c = cmds.add_parser("list", parents=parents, help="list transactional ids")
    c.set_defaults(func=run_list)
    c = cmds.add_parser("describe", parents=parents, help="describe a transactional id")
    c.add_argument("--transactional-id", required=True)
    c.set_defaults(func=run_describe)
    c = cmds.add_parser("describe-producers", parents=parents,
                        help="producer state of a partition")
    c.add_argument("--topic", required=True)
    c.add_argument("--partition", type=int, required=True)
    c.add_argument("--broker-id", type=int, help="accepted; the store is broker 0")
    c.set_defaults(func=run_describe_producers)
    c = cmds.add_parser("find-hanging", parents=parents, help="find hanging transactions")
    c.add_argument("--topic")
    c.add_argument("--partition", type=int)
    c.add_argument("--broker-id", type=int, help="accepted; the store is broker 0")
    c.add_argument("--max-transaction-timeout", type=int, default=15, metavar="MINUTES")
    c.set_defaults(func=run_find_hanging)
    c = cmds.add_parser("abort", parents=parents, help="abort a transaction")
    c.add_argument("--transactional-id", help="abort through the coordinator (fences the owner)")
    c.add_argument("--topic")
    c.add_argument("--partition", type=int)
    c.add_argument("--start-offset", type=int, help="first offset of the open transaction")
    c.add_argument("--producer-id", type=int, help="with --producer-epoch: the producer to abort")
    c.add_argument("--producer-epoch", type=int)
    c.add_argument("--coordinator-epoch", type=int, default=0)
    c.set_defaults(func=run_abort)


def run_list(args):
    with open_store(args) as store:
        states = store.meta.view(store.meta.txn_ids)
    print_table(["TransactionalId", "Coordinator", "ProducerId", "TransactionState"],
                [[tid, "0", str(st["producer_id"]), st["state"]] for tid, st in sorted(states.items())])
    return 0


def run_describe(args):
    tid = args.transactional_id
    with open_store(args) as store:
        st = store.meta.view(lambda txn: store.meta.get_txn(txn, tid))
    if st is None:
        raise CliError("Failed to describe transaction state of transactional-id `%s`: "
                       "TransactionalIdNotFoundException: The transactionalId could not be found."
                       % tid)
    start = st.get("start_ms", -1)
    started = start >= 0 and st["state"] in _UNFINISHED
    print_table(["CoordinatorId", "TransactionalId", "ProducerId", "ProducerEpoch",
                 "TransactionState", "TransactionTimeoutMs", "CurrentTransactionStartTimeMs",
                 "TransactionDurationMs", "TopicPartitions"],
                [["0", tid, str(st["producer_id"]), str(st["producer_epoch"]), st["state"],
                  str(st.get("timeout_ms", -1)), str(start) if started else "None",
                  str(now_ms() - start) if started else "None",
                  ",".join("%s-%d" % (t, p) for t, p in st["partitions"])]])
    return 0


def producers(part):
    """[(producer_id, entry, open transaction first offset or None)] of an open partition."""
    part.refresh()
    with part.log._mutex:
        return [(pid, e, part.state.open_txns.get(pid)) for pid, e in sorted(part.state.entries.items())]


def _last_seq(e):
    return e.batches[e.n - 1].last_seq if e.n else -1


def run_describe_producers(args):
    with open_store(args) as store:
        check_partition(store, args.topic, args.partition)
        rows = [[str(pid), str(e.producer_epoch), str(e.coordinator_epoch), str(_last_seq(e)),
                 str(e.last_timestamp), "None" if first is None else str(first)]
                for pid, e, first in producers(store.partition(args.topic, args.partition))]
    print_table(["ProducerId", "ProducerEpoch", "LatestCoordinatorEpoch", "LastSequence",
                 "LastTimestamp", "CurrentTransactionStartOffset"], rows)
    return 0


def hanging(store, partitions, max_timeout_ms, now=None):
    """[(topic, partition, producer_id, entry, start_offset)] of hanging transactions."""
    now = now_ms() if now is None else now
    meta = store.meta

    def owners(txn, pids):
        out = {}
        for pid in pids:
            tid = meta.get_pid_owner(txn, pid)
            out[pid] = (tid, meta.get_txn(txn, tid) if tid is not None else None)
        return out
    found = []
    for topic, p in partitions:
        opened = [(pid, e, first) for pid, e, first in producers(store.partition(topic, p))
                  if first is not None]
        if not opened:
            continue
        who = meta.view(lambda txn: owners(txn, [pid for pid, _, _ in opened]))
        for pid, e, first in opened:
            tid, st = who[pid]
            covered = (st is not None and st["state"] in _UNFINISHED and
                       [topic, p] in st["partitions"] and pid in (st["producer_id"],
                                                                  st.get("next_producer_id")))
            if not covered or now - e.last_timestamp > max_timeout_ms:
                found.append((topic, p, pid, e, first))
    return found


def run_find_hanging(args):
    if args.partition is not None and not args.topic:
        raise CliError("The --partition argument requires --topic to be provided")
    with open_store(args) as store:
        if args.topic:
            desc = check_partition(store, args.topic, args.partition or 0)
            parts = [(args.topic, args.partition)] if args.partition is not None else \
                [(args.topic, p) for p in range(desc["partitions"])]
        else:
            parts = [(t, p) for t, d in sorted(store.topics().items()) for p in range(d["partitions"])]
        now = now_ms()
        rows = [[t, str(p), str(pid), str(e.producer_epoch), str(e.coordinator_epoch), str(first),
                 str(e.last_timestamp), str(max(now - e.last_timestamp, 0) // 60000)]
                for t, p, pid, e, first in hanging(store, parts, args.max_transaction_timeout * 60000, now)]
    print_table(["Topic", "Partition", "ProducerId", "ProducerEpoch", "CoordinatorEpoch",
                 "StartOffset", "LastTimestamp", "Duration(min)"], rows)
    return 0


def run_abort(args):
    if args.transactional_id:
        if args.topic or args.start_offset is not None or args.producer_id is not None:
            raise CliError("abort takes --transactional-id, or --topic --partition with "
                           "--start-offset (or --producer-id and --producer-epoch), not both")
        return _abort_tid(args)
    if not args.topic or args.partition is None:
        raise CliError("abort needs --transactional-id, or --topic and --partition")
    if args.start_offset is None and args.producer_id is None:
        raise CliError("The transaction to abort must be identified either with --start-offset or "
                       "with --producer-id and --producer-epoch")
    if args.start_offset is None and args.producer_epoch is None:
        raise CliError("Missing required argument --producer-epoch")
    return _abort_marker(args)


def _abort_tid(args):
    tid = args.transactional_id
    with open_store(args) as store:
        coord = store.coordinator               # rolls any crashed Prepare* forward first
        meta = store.meta
        with coord._tid_lock(tid):
            st = meta.view(lambda txn: meta.get_txn(txn, tid))
            if st is None:
                raise CliError("Transactional id '%s' does not exist" % tid)
            if st["state"] != ONGOING:
                raise CliError("Transactional id '%s' has no ongoing transaction to abort (state %s)"
                               % (tid, st["state"]))
            # The same steps as a transaction.timeout.ms abort: PrepareAbort
            # with an epoch bump (the owner is fenced), markers, CompleteAbort.
            done = coord._prepare(tid, st["producer_id"], st["producer_epoch"], False, fence=True)
            coord._complete(tid, done)
    parts = ", ".join("%s-%d" % (t, p) for t, p in done["partitions"]) or "none"
    print("Aborted the transaction of transactional-id '%s' (producer %d, epoch %d -> %d); "
          "markers written to: %s" % (tid, st["producer_id"], st["producer_epoch"],
                                      done["producer_epoch"], parts))
    return 0


def _abort_marker(args):
    with open_store(args) as store:
        check_partition(store, args.topic, args.partition)
        part = store.partition(args.topic, args.partition)
        target = None
        for pid, e, first in producers(part):
            if args.start_offset is not None and first == args.start_offset or \
                    args.start_offset is None and pid == args.producer_id and first is not None:
                target = (pid, e.producer_epoch if args.producer_epoch is None else args.producer_epoch)
        if target is None:
            what = "starting at offset %d" % args.start_offset if args.start_offset is not None \
                else "of producer %d" % args.producer_id
            raise CliError("Could not find any open transactions %s on partition %s-%d"
                           % (what, args.topic, args.partition))
        pid, epoch = target
        _refuse_live(store, args.topic, args.partition, pid)
        marker = control_batch(pid, epoch, False, max(args.coordinator_epoch, COORDINATOR_EPOCH),
                               int(time.time() * 1000))
        res = part.append([marker])[0]
        if res.error is not None:
            from ..errors import KafkaException
            raise KafkaException(res.error)
        part.log.sync(force=True)
    return 0


def _refuse_live(store, topic, partition, pid):
    """A transaction its coordinator will still end is not hanging: aborting it
    in one partition only would tear it (the rest could still commit)."""
    meta = store.meta

    def look(txn):
        tid = meta.get_pid_owner(txn, pid)
        return tid, (meta.get_txn(txn, tid) if tid is not None else None)
    tid, st = meta.view(look)
    if st is not None and st["state"] in _UNFINISHED and [topic, partition] in st["partitions"] \
            and pid in (st["producer_id"], st.get("next_producer_id")):
        raise CliError("The open transaction of producer %d on %s-%d belongs to transactional-id "
                       "'%s', whose transaction is still %s: it is not hanging. Use 'abort "
                       "--transactional-id %s' to abort it on every partition"
                       % (pid, topic, partition, tid, st["state"], tid))
