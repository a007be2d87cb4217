"""The Quick start demo, on a store in a local folder:

1. an idempotent producer writes orders (fsync=always: every delivery report
   means on disk);
2. a transactional copier turns orders into invoices, committing its input
   offsets inside each transaction; one transaction is aborted on purpose;
3. a read_committed consumer sees every invoice exactly once and nothing of
   the aborted transaction, which a read_uncommitted consumer does see.

    python -m pylog.demo [STORE_DIR]     (default ./pylog-demo-store)
"""
import os
import shutil
import sys
import time

from pylog import Consumer, KafkaException, Producer, TopicPartition
from pylog.admin import AdminClient, NewTopic

N_ORDERS = 100_000
TXN_SIZE = 1_000


def produce_orders(conf):
    failed = []
    p = Producer({**conf, "enable.idempotence": True, "pylog.fsync": "always"})
    start = time.perf_counter()
    for i in range(N_ORDERS):
        p.produce("orders", value=b"order %d amount %d" % (i, i % 500), key=b"customer-%d" % (i % 97),
                  on_delivery=lambda err, msg: err and failed.append(err))
    p.flush()
    elapsed = time.perf_counter() - start
    p.close()
    print("1. produced %d orders in %.2f s (%.0f records/s, fsync=always), %d failed"
          % (N_ORDERS, elapsed, N_ORDERS / elapsed, len(failed)))
    return not failed


def copy_to_invoices(conf):
    c = Consumer({**conf, "group.id": "billing", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe(["orders"])
    p = Producer({**conf, "transactional.id": "billing-copier"})
    p.init_transactions()
    copied, txns, aborted, start = 0, 0, 0, time.perf_counter()
    while True:
        msgs = c.consume(TXN_SIZE, 1.0)
        if not msgs:
            break
        p.begin_transaction()
        for m in msgs:
            p.produce("invoices", key=m.key(), value=b"invoice for " + m.value())
        if txns == 3:                          # an aborted transaction: never visible
            p.flush()                          # its records reach the log first
            p.abort_transaction()
            aborted += len(msgs)
            committed = c.committed(c.assignment())
            for tp in committed:               # rewind to the last committed offsets
                c.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
        else:
            p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata())
            p.commit_transaction()
            copied += len(msgs)
        txns += 1
    elapsed = time.perf_counter() - start
    p.close()
    c.close()
    print("2. copied %d orders to invoices in %d transactions (%.0f records/s); one transaction "
          "of %d records aborted" % (copied, txns, copied / elapsed, aborted))
    return copied


def count(conf, isolation):
    c = Consumer({**conf, "group.id": "audit-" + isolation, "isolation.level": isolation,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("invoices", p, 0) for p in range(3)])
    seen, values = 0, set()
    while True:
        msgs = c.consume(10_000, 0.5)
        if not msgs:
            break
        seen += len(msgs)
        values.update(m.value() for m in msgs)
    c.close()
    return seen, len(values)


def main(argv):
    path = os.path.abspath(argv[1] if len(argv) > 1 else "pylog-demo-store")
    shutil.rmtree(path, ignore_errors=True)     # a fresh store each run
    conf = {"bootstrap.servers": "file://" + path}
    print("store:", path)
    admin = AdminClient(conf)
    for f in admin.create_topics([NewTopic("orders", num_partitions=3),
                                  NewTopic("invoices", num_partitions=3)]).values():
        f.result()
    admin.close()

    ok = produce_orders(conf)
    copied = copy_to_invoices(conf)
    committed, distinct = count(conf, "read_committed")
    uncommitted, _ = count(conf, "read_uncommitted")
    print("3. read_committed consumer: %d invoices, %d distinct (exactly once: %s); "
          "read_uncommitted sees %d, the aborted transaction included"
          % (committed, distinct, committed == distinct == N_ORDERS == copied, uncommitted))
    return 0 if ok and committed == distinct == N_ORDERS else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KafkaException as e:
        print("error:", e.args[0], file=sys.stderr)
        sys.exit(1)
