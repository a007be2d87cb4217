"""A checker for Kafka-style histories, after Jepsen's Kafka workload.

It reads what producers say the store acknowledged and what consumers say
they saw, and reports each anomaly kind with a count and one example.

Producer logs: JSON lines, one per event, appended by each producer process.

    {"op": "produce", "proc": P, "i": 7, "value": V, "topic": T, "partition": N, "txn": X}
        intent, written before produce(): names the value's transaction even
        if the process dies before its delivery report
    {"op": "send", "proc": P, "i": 7, "value": V, "topic": T, "partition": N,
     "offset": O, "txn": X, "outcome": "committed"}
        an acknowledged write (delivery report without error).  txn null: a
        non-transactional write, committed when acknowledged.  "outcome" is
        optional; a transaction's outcome can also come from "end" lines
    {"op": "commit_start", "txn": X, "t": T}     just before commit_transaction()
    {"op": "end", "txn": X, "outcome": "committed" | "aborted", "t": T}
        after commit_transaction() / abort_transaction() returned
A line without "op" is a "send".  Times are time.monotonic() seconds, which
on Linux is one clock for every process.

Consumer logs: JSON lines; a file may hold several runs (a run is one
consumer's life: polls in order, positions only moving by its own reads
unless it logs a seek).

    {"op": "start", "run": R, "isolation": "read_committed", "positions": [[T, N, O], ...]}
    {"op": "poll", "t0": T, "t1": T, "msgs": [[T, N, O, V], ...]}
    {"op": "seek", "positions": [[T, N, O], ...]}        (after an abort, a rebalance)
    {"op": "end", "complete": true, "final": false, "ends": [[T, N, O], ...]}
        complete: read every partition to its end offset (LSO for
        read_committed) as of `ends`; final: additionally nothing can still
        become visible (every transaction was ended), so the run covers
        every record of its partitions

Anomalies (KAFKA-FACTS.md, "Anomalies a checker must find"):

    lost-write            an acknowledged write at offset i was never read, although a
                          reader that started at or before i read past it
    unseen                an acknowledged write never read, and no reader read past it
    duplicate             one value visible at two offsets
    inconsistent-offsets  two values at one offset (any isolation level)
    G1a                   a read_committed reader saw a value of an aborted transaction
    precommitted-read     a read_committed reader saw a value before its transaction's
                          commit began (or of a transaction whose commit never began)
    poll-skip             a reader went from offset a to b over an offset between them
                          that holds a visible value
    nonmonotonic-poll     a reader's next offset in a partition was not above its last
    nonmonotonic-send     one producer's acknowledged offsets in a partition went down
                          while its produce order went up
    torn-transaction      a transaction visible in part: some value of it is missing
                          from a range a reader covered
    phantom-read          a value no producer ever logged (damage returned as data)
    lost-copy             (with copies=) a visible input value whose copy is not visible
                          in the output topic, once the final reader covered it

This module only reads JSON; it never opens a store.
"""
import bisect
import collections
import json
import os

KINDS = ("lost-write", "unseen", "duplicate", "inconsistent-offsets", "G1a", "precommitted-read",
         "poll-skip", "nonmonotonic-poll", "nonmonotonic-send", "torn-transaction",
         "phantom-read", "lost-copy")
COMMITTED, ABORTED = "committed", "aborted"


class Txn:
    __slots__ = ("id", "proc", "attempts", "commit_start", "outcome", "end")

    def __init__(self, tid):
        self.id = tid
        self.proc = None
        self.attempts = []
        self.commit_start = None
        self.outcome = None
        self.end = None


class Attempt:
    """One produce of a value: a value may be produced more than once (a
    copier copies an input again after an aborted transaction), each time
    in its own transaction."""
    __slots__ = ("value", "topic", "partition", "offset", "txn", "proc", "i", "acked")

    def __init__(self, value):
        self.value = value
        self.topic = self.partition = self.offset = self.txn = self.proc = self.i = None
        self.acked = False

    @property
    def tp(self):
        return (self.topic, self.partition)


class Run:
    """One consumer's reads, in order."""
    __slots__ = ("id", "isolation", "start", "reads", "complete", "final", "ends", "tps",
                 "max_read", "min_read")

    def __init__(self, rid, isolation="read_committed", positions=None):
        self.id = rid
        self.isolation = isolation
        self.start = {}                 # tp -> start offset (when known)
        self.reads = []                 # ("read", tp, offset, value, t1) | ("seek", tp, offset)
        self.complete = False
        self.final = False
        self.ends = {}
        self.tps = set()
        self.max_read = {}
        self.min_read = {}
        for t, p, o in positions or []:
            self.start[(t, p)] = o
            self.tps.add((t, p))

    @property
    def committed_only(self):
        return self.isolation != "read_uncommitted"


class History:
    """Producer and consumer events, loaded from logs or added as dicts."""

    def __init__(self):
        self.attempts = {}              # key -> Attempt (key: (proc, i), (txn, value) or value)
        self.by_value = {}              # value -> [Attempt]
        self.txns = {}                  # txn id -> Txn
        self.runs = []
        self.bad_lines = 0
        self._order = 0

    # ---- loading ----
    def load(self, producer_logs=(), consumer_logs=()):
        for path in producer_logs:
            self.add_producer_events(read_jsonl(path, self), name=os.path.basename(path))
        for path in consumer_logs:
            self.add_consumer_events(read_jsonl(path, self), name=os.path.basename(path))
        return self

    def _txn(self, tid):
        t = self.txns.get(tid)
        if t is None:
            t = self.txns[tid] = Txn(tid)
        return t

    def _attempt(self, ev, name):
        v, tid = ev["value"], ev.get("txn")
        proc, i = ev.get("proc"), ev.get("i")
        key = (proc, i) if proc is not None and i is not None else (tid, v) if tid is not None else v
        a = self.attempts.get(key)
        if a is None:
            a = self.attempts[key] = Attempt(v)
            self.by_value.setdefault(v, []).append(a)
            a.proc = proc if proc is not None else name
            self._order += 1
            a.i = i if i is not None else self._order
            a.txn = tid
            if tid is not None:
                t = self._txn(tid)
                t.attempts.append(a)
                t.proc = a.proc
        return a

    def add_producer_events(self, events, name="producer"):
        for ev in events:
            op = ev.get("op", "send")
            tid = ev.get("txn")
            if op in ("produce", "send") and "value" in ev:
                a = self._attempt(ev, name)
                a.topic = ev.get("topic", a.topic)
                a.partition = ev.get("partition", a.partition)
                if op == "send":
                    a.acked = True
                    a.offset = ev.get("offset")
                if tid is not None and ev.get("outcome") in (COMMITTED, ABORTED):
                    self._txn(tid).outcome = ev["outcome"]
            elif op == "commit_start" and tid is not None:
                self._txn(tid).commit_start = ev.get("t", 0.0)
            elif op == "end" and tid is not None and ev.get("outcome") in (COMMITTED, ABORTED):
                t = self._txn(tid)
                t.outcome = ev["outcome"]
                t.end = ev.get("t")
        return self

    def add_consumer_events(self, events, name="consumer"):
        run = None
        for ev in events:
            op = ev.get("op")
            if op == "start" or run is None:
                run = Run(ev.get("run", "%s#%d" % (name, len(self.runs))),
                          ev.get("isolation", "read_committed"),
                          ev.get("positions") if op == "start" else None)
                self.runs.append(run)
                if op == "start":
                    continue
            if op == "poll":
                t1 = ev.get("t1", 0.0)
                for t, p, o, v in ev.get("msgs", ()):
                    tp = (t, p)
                    run.reads.append(("read", tp, o, v, t1))
                    run.tps.add(tp)
                    if o > run.max_read.get(tp, -1):
                        run.max_read[tp] = o
                    if o < run.min_read.get(tp, 1 << 62):
                        run.min_read[tp] = o
            elif op == "seek":
                for t, p, o in ev.get("positions", ()):
                    run.reads.append(("seek", (t, p), o, None, None))
                    run.tps.add((t, p))
                    # A seek back invalidates "started at": keep the lowest.
                    if o >= 0 and ((t, p) not in run.start or o < run.start[(t, p)]):
                        run.start[(t, p)] = o
            elif op == "end":
                run.complete = bool(ev.get("complete"))
                run.final = bool(ev.get("final"))
                for t, p, o in ev.get("ends", ()):
                    run.ends[(t, p)] = o
                    run.tps.add((t, p))
        return self


def read_jsonl(path, history=None):
    """Events of a JSON-lines file; a torn or damaged line (a process killed
    mid-write) is skipped and counted in history.bad_lines."""
    out = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return out
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if history is not None:
                history.bad_lines += 1
    return out


class Report:
    """Anomalies by kind: {kind: {"count": n, "example": {...}}}, and counters."""

    def __init__(self):
        self.anomalies = {}
        self.stats = {}

    def add(self, kind, example):
        a = self.anomalies.get(kind)
        if a is None:
            self.anomalies[kind] = {"count": 1, "example": example}
        else:
            a["count"] += 1

    def count(self, kind=None):
        if kind is None:
            return sum(a["count"] for a in self.anomalies.values())
        a = self.anomalies.get(kind)
        return a["count"] if a else 0

    @property
    def ok(self):
        return not self.anomalies

    def merge(self, other):
        for kind, a in other.anomalies.items():
            mine = self.anomalies.get(kind)
            if mine is None:
                self.anomalies[kind] = dict(a)
            else:
                mine["count"] += a["count"]
        for k, v in other.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v
        return self

    def summary(self):
        if not self.anomalies:
            return "no anomalies"
        return "; ".join("%s=%d (e.g. %s)" % (k, a["count"], json.dumps(a["example"], default=str))
                         for k, a in sorted(self.anomalies.items()))

    def __repr__(self):
        return "Report(%s)" % self.summary()


def check(history=None, producer_logs=(), consumer_logs=(), copies=None):
    """Check a History (or the given log files) and return a Report.

    copies: {(input topic, output topic): prefix} for a copier that writes
    prefix + value to the output for each input value; checked once a final
    reader covered the output topic."""
    h = history if history is not None else History().load(producer_logs, consumer_logs)
    rep = Report()
    txns = h.txns

    def committed(a):
        return a.txn is None or (a.txn in txns and txns[a.txn].outcome == COMMITTED)

    # What each offset holds, per source.
    all_at = collections.defaultdict(lambda: collections.defaultdict(set))    # tp -> off -> values
    vis_at = collections.defaultdict(lambda: collections.defaultdict(set))
    vis_offsets = collections.defaultdict(set)                                 # value -> {(tp, off)}
    read_rc = collections.defaultdict(list)                                    # (tp, off, v) -> [(run, t1)]
    for a in h.attempts.values():
        if a.acked and a.offset is not None:
            all_at[a.tp][a.offset].add(a.value)
            if committed(a):
                vis_at[a.tp][a.offset].add(a.value)
                vis_offsets[a.value].add((a.tp, a.offset))
    rc_offsets = collections.defaultdict(set)                                  # (tp, v) -> {off}
    n_reads = 0
    for run in h.runs:
        for kind, tp, off, v, t1 in run.reads:
            if kind != "read":
                continue
            n_reads += 1
            all_at[tp][off].add(v)
            if run.committed_only:
                vis_at[tp][off].add(v)
                vis_offsets[v].add((tp, off))
                read_rc[(tp, off, v)].append((run, t1))
                rc_offsets[(tp, v)].add(off)

    def attempts_of(tp, off, v):
        """The attempts a read of v at (tp, off) can be: the one acknowledged
        at that offset, else those of v in tp whose offset is unknown."""
        cands = [a for a in h.by_value.get(v, ()) if a.tp == tp]
        exact = [a for a in cands if a.offset == off]
        return exact or [a for a in cands if a.offset is None]

    def visible(a):
        if a.offset is not None:
            return (a.tp, a.offset, a.value) in read_rc
        return any(a in attempts_of(a.tp, off, a.value) for off in rc_offsets.get((a.tp, a.value), ()))

    # inconsistent-offsets
    for tp in sorted(all_at, key=str):
        for off in sorted(all_at[tp]):
            vals = all_at[tp][off]
            if len(vals) > 1:
                rep.add("inconsistent-offsets", {"topic": tp[0], "partition": tp[1], "offset": off,
                                                 "values": sorted(vals, key=str)})
    # duplicate
    for v in sorted(vis_offsets, key=str):
        places = vis_offsets[v]
        if len(places) > 1:
            rep.add("duplicate", {"value": v, "at": sorted([list(tp) + [o] for tp, o in places], key=str)})

    # G1a, precommitted-read, phantom-read
    for (tp, off, v) in sorted(read_rc, key=str):
        run, t1 = read_rc[(tp, off, v)][0]
        where = {"value": v, "topic": tp[0], "partition": tp[1], "offset": off, "reader": run.id}
        cands = attempts_of(tp, off, v)
        if not cands:
            rep.add("phantom-read", where)
            continue
        if any(a.txn is None for a in cands):
            continue
        ts = [txns[a.txn] for a in cands]
        if all(t.outcome == ABORTED for t in ts):
            rep.add("G1a", dict(where, txn=ts[0].id))
            continue
        live = [t for t in ts if t.outcome != ABORTED]
        if all(t.commit_start is None for t in live):
            rep.add("precommitted-read", dict(where, txn=live[0].id, commit_start=None))
            continue
        start = min(t.commit_start for t in live if t.commit_start is not None)
        early = [(r, t) for r, t in read_rc[(tp, off, v)] if t is not None and t < start]
        if early:
            rep.add("precommitted-read", dict(where, reader=early[0][0].id, read_at=early[0][1],
                                              txn=live[0].id, commit_start=start))

    rc_runs = [r for r in h.runs if r.committed_only]

    def later_read(tp, off):
        """A read_committed run that started at or before off and read past it."""
        for r in rc_runs:
            if r.max_read.get(tp, -1) > off and _started_by(r, tp, off):
                return r
        return None

    def covered(tp, off):
        for r in rc_runs:
            if tp not in r.tps:
                continue
            if r.final:
                return r
            if off is None:
                continue
            if _started_by(r, tp, off) and (r.max_read.get(tp, -1) > off or
                                            (r.complete and r.ends.get(tp, -1) > off)):
                return r
        return None

    # lost-write, unseen
    acked = 0
    for key in sorted(h.attempts, key=str):
        a = h.attempts[key]
        if not (a.acked and committed(a)):
            continue
        acked += 1
        if a.offset is not None and (a.tp, a.offset, a.value) in read_rc:
            continue
        ex = {"value": a.value, "topic": a.topic, "partition": a.partition, "offset": a.offset,
              "txn": a.txn, "producer": a.proc}
        r = later_read(a.tp, a.offset) if a.offset is not None else None
        if r is not None:
            rep.add("lost-write", dict(ex, later_read_by=r.id, max_offset_read=r.max_read[a.tp]))
        else:
            rep.add("unseen", ex)

    # torn-transaction: visible in part, a missing value in a covered range
    for tid in sorted(txns, key=str):
        t = txns[tid]
        if t.outcome == ABORTED or not t.attempts:
            continue
        vis = [a for a in t.attempts if visible(a)]
        if not vis:
            continue
        for a in t.attempts:
            if a in vis:
                continue
            r = covered(a.tp, a.offset)
            if r is not None:
                rep.add("torn-transaction", {"txn": tid,
                                             "visible": sorted(x.value for x in vis)[:5],
                                             "missing": a.value, "topic": a.topic,
                                             "partition": a.partition, "offset": a.offset,
                                             "covered_by": r.id})
                break

    # poll-skip and nonmonotonic-poll, per run and partition
    vis_sorted = {tp: sorted(offs) for tp, offs in vis_at.items()}
    all_sorted = {tp: sorted(offs) for tp, offs in all_at.items()}
    for r in h.runs:
        known = vis_sorted if r.committed_only else all_sorted
        last = {}                        # tp -> last offset read (a seek to o: o - 1)
        for kind, tp, off, v, t1 in r.reads:
            if kind == "seek":
                last[tp] = off - 1 if off >= 0 else None      # None: position unknown
                continue
            moved = tp in last
            prev = last[tp] if moved else (r.start[tp] - 1 if r.start.get(tp, -1) >= 0 else None)
            if prev is not None:
                if off <= prev:
                    if moved:
                        rep.add("nonmonotonic-poll", {"reader": r.id, "topic": tp[0],
                                                      "partition": tp[1], "after": prev, "read": off})
                elif off > prev + 1:
                    offs = known.get(tp, ())
                    i = bisect.bisect_right(offs, prev)
                    if i < len(offs) and offs[i] < off:
                        skipped = offs[i]
                        held = (vis_at if r.committed_only else all_at)[tp][skipped]
                        rep.add("poll-skip", {"reader": r.id, "topic": tp[0], "partition": tp[1],
                                              "from": prev, "to": off, "skipped": skipped,
                                              "skipped_values": sorted(held, key=str)})
            last[tp] = off

    # nonmonotonic-send: per producer and partition, offsets rise with produce order
    by_proc = collections.defaultdict(list)
    for a in h.attempts.values():
        if a.acked and a.offset is not None:
            by_proc[(a.proc, a.tp)].append((a.i, a.offset, a.value))
    for (proc, tp), sends in sorted(by_proc.items(), key=str):
        sends.sort(key=lambda s: s[0])
        for x, y in zip(sends, sends[1:]):
            if y[1] <= x[1]:
                rep.add("nonmonotonic-send", {"producer": proc, "topic": tp[0], "partition": tp[1],
                                              "first": {"value": x[2], "offset": x[1]},
                                              "then": {"value": y[2], "offset": y[1]}})
                break

    # lost-copy
    for (src, dst), prefix in (copies or {}).items():
        finals = [r for r in rc_runs if r.final and any(tp[0] == dst for tp in r.tps)]
        if not finals:
            continue
        visible_out = {v for v, places in vis_offsets.items() if any(tp[0] == dst for tp, _ in places)}
        for v in sorted(vis_offsets, key=str):
            if any(tp[0] == src for tp, _ in vis_offsets[v]) and prefix + v not in visible_out:
                tp, off = sorted(vis_offsets[v], key=str)[0]
                rep.add("lost-copy", {"value": v, "topic": tp[0], "partition": tp[1], "offset": off,
                                      "missing": prefix + v, "in_topic": dst})

    n_committed = sum(1 for t in txns.values() if t.outcome == COMMITTED)
    n_aborted = sum(1 for t in txns.values() if t.outcome == ABORTED)
    rep.stats = {"writes": len(h.attempts), "acked": acked, "reads": n_reads, "runs": len(h.runs),
                 "txns": len(txns), "committed": n_committed, "aborted": n_aborted,
                 "unknown": len(txns) - n_committed - n_aborted, "bad_lines": h.bad_lines}
    return rep


def _started_by(run, tp, off):
    start = run.start.get(tp)
    if start is not None and start >= 0:
        return start <= off
    lo = run.min_read.get(tp)
    return lo is not None and lo < off
