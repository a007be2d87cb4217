"""pylog side by side with the systems a user would pick instead (issue 6).

    python -m benchmarks.compare [--records N] [--quick] [--out DIR]

One workload for every system: N records of 100 bytes, and N/20 records of
10 KiB, written then read back, once in the system's fastest mode and once
durable (an fsync at least every 1,000 records or per commit).  The physical
limits of the machine (write bandwidth, fdatasync latency, CRC32C, memcpy)
are measured in the same run.  Systems are interleaved round by round
(A B C, then B C A, ...) and every figure is the median over rounds, because
this shared 2-core VM varies up to 2x between runs (shared/PEERS.md).

Modules:
  common.py    the Case type, timing helpers, capped loops, free ports
  limits.py    the physical limits
  pylog_cases.py   pylog: idempotent produce, transactions, consume/poll
  embedded.py  py-lmdb, sqlite3, persist-queue, litequeue
  servers.py   NATS JetStream, confluent-kafka (mock cluster, bare enqueue),
               pulsar-lite
  report.py    medians, the table, the targets, JSON and the PNG chart
  cli.py       argument parsing and the round-robin driver
"""
