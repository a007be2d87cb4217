"""pylog stats: per-partition offsets, sizes and transaction state, and
per-group lag (pylog.metrics.collect), as tables or --json."""
import json

from ..metrics import collect
from .common import CliError, open_store

_PART_COLUMNS = (("TOPIC", "topic"), ("PARTITION", "partition"), ("LOG-START", "log_start_offset"),
                 ("HIGH-WATERMARK", "high_watermark"), ("LSO", "last_stable_offset"),
                 ("SIZE", "size_bytes"), ("SEGMENTS", "segments"),
                 ("OPEN-TXNS", "open_transactions"), ("PRODUCERS", "producer_count"))
_LAG_COLUMNS = (("GROUP", None), ("TOPIC", "topic"), ("PARTITION", "partition"),
                ("COMMITTED", "committed_offset"), ("HIGH-WATERMARK", "high_watermark"), ("LAG", "lag"))


def add_parser(sub, parents):
    p = sub.add_parser("stats", parents=parents, help="offsets, sizes, transactions and lag")
    p.add_argument("--topic", action="append", default=None, help="only these topics (repeatable)")
    p.add_argument("--group", action="append", default=None, help="only these groups (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args):
    with open_store(args) as store:
        known = store.topics()
        for t in args.topic or []:
            if t not in known:
                raise CliError("Topic '%s' does not exist" % t)
        m = collect(store, args.topic, args.group)
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    _table([[r[k] for _, k in _PART_COLUMNS] for r in m["partitions"]], [h for h, _ in _PART_COLUMNS])
    rows = [[g] + [r[k] for _, k in _LAG_COLUMNS[1:]] for g, rs in sorted(m["groups"].items()) for r in rs]
    if rows:
        print()
        _table(rows, [h for h, _ in _LAG_COLUMNS])
    return 0


def _table(rows, headers):
    cells = [[str("-" if c is None else c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [headers] + cells:
        print(" ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
