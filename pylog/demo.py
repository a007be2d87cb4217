"""The Quick start demo: an idempotent producer writing to a store in a local
folder, a retried batch recognised as a duplicate, and the data read back
after the store is reopened.

    python -m pylog.demo [STORE_DIR]     (default ./pylog-demo-store)
"""
import os
import sys
import time

from pylog import Producer
from pylog.admin import AdminClient, NewTopic
from pylog.codec import decode_batch, encode_batch
from pylog.store import Store


def main(argv):
    path = os.path.abspath(argv[1] if len(argv) > 1 else "pylog-demo-store")
    conf = {"bootstrap.servers": "file://" + path}
    print("store:", path)

    admin = AdminClient(conf)
    admin.create_topics([NewTopic("orders", num_partitions=3)])  # TOPIC_ALREADY_EXISTS on rerun: fine
    admin.close()

    delivered, failed = [], []

    def on_delivery(err, msg):
        (failed if err else delivered).append(msg)

    p = Producer({**conf, "enable.idempotence": True, "pylog.fsync": "always", "linger.ms": 5})
    n = 100_000
    start = time.perf_counter()
    for i in range(n):
        p.produce("orders", value=b"order %d" % i, key=b"customer-%d" % (i % 97),
                  on_delivery=on_delivery)
        if i % 10000 == 0:
            p.poll(0)
    p.flush()
    elapsed = time.perf_counter() - start
    p.close()
    print("produced %d records in %.2f s (%.0f records/s, fsync=always): %d delivered, %d failed"
          % (n, elapsed, n / elapsed, len(delivered), len(failed)))
    last = delivered[-1]
    print("last record: partition %d offset %d key %r" % (last.partition(), last.offset(), last.key()))

    store = Store.acquire(path)
    part = store.partition("orders", 0)
    retry = encode_batch([(0, b"k", b"retried", None)], producer_id=4242, producer_epoch=0,
                         base_sequence=part.state.entries.get(4242).batches[0].last_seq + 1
                         if 4242 in part.state.entries else 0)
    first = part.append([retry])[0]
    again = part.append([retry])[0]
    print("a batch sent twice (a retry after an unknown outcome): first %s, then %s"
          % (first, again))
    store.release()

    store = Store.acquire(path)                # reopen: recovery runs from the recovery point
    total = 0
    for partition in range(3):
        log = store.partition("orders", partition).log
        count, offset = 0, log.log_start_offset
        while offset < log.next_offset:
            data, infos = log.read(offset, 1 << 20)
            for info in infos:
                count += sum(1 for r in decode_batch(data, info) if r.offset >= offset)
            offset = infos[-1].next_offset
        print("partition %d: %d records, log end offset %d" % (partition, count, log.next_offset))
        total += count
    store.release()
    print("read back %d records" % total)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
