"""The six torture scenarios.  Each takes (trials, seed, root, opts) and
returns a harness.Outcome; `python -m pylog.torture` runs them.

Every scenario ends a trial the same way: verify() in a fresh child settles
every transactional.id, commits one more transaction and reads everything
back (read_committed and read_uncommitted); the checker then judges the
producers' and consumers' logs.
"""
import json
import os
import random
import shutil
import time

from pylog import testing

from . import harness, powerloss, workload
from .harness import Outcome, Trial, copy_store, expect_ok, run_step

TOPICS = {"a": 3, "b": 2}


class Options:
    """Knobs shared by the scenarios; defaults are the full run's."""

    def __init__(self, **kw):
        self.kills = 2                  # scenario 1: producer kills per trial
        self.min_s = 0.1                # random kill window, seconds after a start
        self.max_s = 0.6
        self.hits = 3                   # scenario 2/4: crash at hits 1..hits of each failpoint
        self.later = 2                  # scenario 2: and at this many later hits, the last included
        self.cycles = 5                 # scenario 3: power losses per store
        self.lmdb = "random"            # scenario 3: LMDB's last commit: keep, undo or random
        self.recovery_kills = 3         # scenario 5: kills during recovery per trial
        self.duration = 120.0           # scenario 6: seconds per trial
        self.producers = 3              # scenario 6
        self.copiers = 2
        self.copier_strategy = None     # scenario 6: partition.assignment.strategy (None: eager)
        self.keep = False               # keep the directories of trials with anomalies
        self.verbose = False
        self.failpoints = None          # scenario 2: only these
        self.io_arms = ("start", "open")    # scenario 4: arm before opening, or after
        self.io_targets = IO_TARGETS        # scenario 4: failpoints to fail at
        self.io_segment_bytes = 700         # scenario 4: small segments, so writes roll
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError("unknown option %r" % k)
            setattr(self, k, v)


def _log(opts, msg):
    if opts.verbose:
        print(msg, flush=True)


def _finish(out, trial, opts, copies=None, tids=(), topics=TOPICS, name="final"):
    """verify() the trial's store, run the checker, add what it found."""
    r = testing.run_in_child(workload.verify, trial.store, sorted(tids), trial.logs, topics, name,
                             timeout=120)
    if not expect_ok(out, r, "verify", kind="reopen-failed"):
        _keep(out, trial, opts)
        return None
    rep = trial.check(copies)
    _log(opts, "  %s: %s %s" % (os.path.basename(trial.dir), rep.summary(), rep.stats))
    out.report.merge(rep)
    if not rep.ok:
        _keep(out, trial, opts)
    return rep


def _keep(out, trial, opts):
    if opts.keep and trial.dir not in out.kept:
        out.kept.append(trial.dir)


def _trial(out, root, name):
    t = Trial(root, name)
    t.baseline = out.anomalies
    return t


def _cleanup(out, trial, opts):
    """Remove the trial's directory, unless opts.keep and it found anomalies."""
    if out.anomalies > getattr(trial, "baseline", out.anomalies):
        _keep(out, trial, opts)
    trial.cleanup(keep=opts.keep and trial.dir in out.kept)


# ---- 1: kill -9 during multi-topic transactions, read_committed readers running ----

def kill_during_transactions(trials, seed, root, opts):
    """Two transactional producers write transactions over topics a and b
    (20% aborted) while two read_committed readers and one read_uncommitted
    reader poll; every 0.1-0.6 s one producer (sometimes a reader too) gets
    SIGKILL and a new incarnation with the same transactional.id takes over."""
    out = Outcome("1 kill-9 transactions", trials, seed)
    rng = random.Random(seed)
    tps = workload.all_tps(TOPICS)
    for n in range(trials):
        t = _trial(out, root, "s1-%04d" % n)
        try:
            if run_step(out, "create topics", workload.create_topics, t.store, TOPICS) is None:
                continue
            incarnation = {}

            def start_reader(slot, iso):
                k = incarnation[("r", slot)] = incarnation.get(("r", slot), -1) + 1
                run = "r%d.%d" % (slot, k)
                return t.start(workload.reader, t.store, run, t.log("c", run), tps, iso,
                               stop_path=t.stop_path, timeout=120)

            def start_producer(slot):
                k = incarnation[("p", slot)] = incarnation.get(("p", slot), -1) + 1
                proc = "p%d.%d" % (slot, k)
                return t.start(workload.txn_producer, t.store, proc, "tx-%d" % slot,
                               t.log("p", proc), TOPICS, seed=rng.randrange(1 << 30),
                               abort_ratio=0.2, stop_path=t.stop_path, duration=120)
            isolation = ["read_committed", "read_committed", "read_uncommitted"]
            readers = [start_reader(i, iso) for i, iso in enumerate(isolation)]
            producers = [start_producer(i) for i in range(2)]
            for _ in range(opts.kills):
                time.sleep(rng.uniform(opts.min_s, opts.max_s))
                slot = rng.randrange(len(producers))
                producers[slot].kill()
                producers[slot].wait(10)
                out.note("kills")
                if rng.random() < 0.3:
                    r = rng.randrange(len(readers))
                    readers[r].kill()
                    readers[r].wait(10)
                    readers[r] = start_reader(r, isolation[r])
                    out.note("reader kills")
                producers[slot] = start_producer(slot)
            time.sleep(rng.uniform(opts.min_s, opts.max_s))
            t.stop()
            for i, c in enumerate(producers + readers):
                expect_ok(out, c.wait(60), "producer/reader %d" % i)
            _finish(out, t, opts, tids=["tx-0", "tx-1"])
        finally:
            _cleanup(out, t, opts)
    return out


# ---- 2: every failpoint x its first few hits, crash at each ----

FP_TOPICS = {"a": 2, "b": 1}
# A roll every few transactions, and index entries inside each segment.
FP_CONFIG = {"segment.bytes": 700, "index.interval.bytes": 200}


def _failpoint_base(root, seed, out):
    """A store that opening has work to do on: a transaction left in
    PrepareCommit (killed at its commit point), a torn tail, and a
    partition whose last fsync failed (the next open discards what followed
    the last good one)."""
    t = Trial(root, "s2-base")
    if run_step(out, "create topics", workload.create_topics, t.store, FP_TOPICS, FP_CONFIG) is None:
        return None
    r = testing.run_in_child(workload.txn_producer, t.store, "base", "tx-fp", t.log("p", "base"),
                             FP_TOPICS, seed=seed, txns=4, abort_ratio=0.0, fsync="always",
                             failpoints={"txn.prepare.after": "kill@4"}, timeout=60)
    if not r.killed:
        expect_ok(out, r, "base workload")
        return None
    _torn_tail(t.store, "a", 0, random.Random(seed))
    workload.fail_sync_marker(t.store, "b", 0)
    return t


def _crash_hits(total, first, later):
    """Hits 1..first, then `later` more evenly spaced up to total (the last
    included), of a failpoint a dry run hit total times."""
    out = set(range(1, min(first, total) + 1))
    rest = total - first
    if rest > 0:
        out.update(first - (-rest * i // later) for i in range(1, later + 1))   # ceil
    return sorted(out)


def _torn_tail(store, topic, partition, rng, n=37):
    """Append n bytes of a half-written batch to the partition's active segment."""
    workload.append_garbage(store, topic, partition, rng, n)


def every_failpoint(trials, seed, root, opts):
    """For every failpoint pylog hits (pylog.testing.failpoint_names()) and
    each of its first opts.hits hits, plus opts.later hits spread over the
    rest of a dry run's count (the last one included: failpoints that
    opening crosses first, such as fsync or the LMDB commit, are then also
    crashed at in the middle and at the end of the workload): copy a base
    store that needs recovery and a roll-forward, run opening + transactions
    + idempotent writes with fsync=always and small segments, SIGKILL at
    that hit, then verify.  trials caps the number of (failpoint, hit) pairs
    (0: all)."""
    out = Outcome("2 every failpoint", 0, seed)
    base = _failpoint_base(root, seed, out)
    if base is None:
        return out
    names = opts.failpoints or testing.failpoint_names()
    try:
        dry = Trial(root, "s2-dry")
        copy_store(base.store, dry.store)
        r = testing.run_in_child(workload.failpoint_phase, dry.store, "dry", "tx-fp", dry.logs,
                                 FP_TOPICS, seed=seed, count_hits=True, timeout=120,
                                 failpoints={n: "sleep:0" for n in names})
        dry.cleanup()
        if not expect_ok(out, r, "dry run"):
            return out
        hits = r.value
        pairs = [(n, k) for n in names for k in _crash_hits(hits.get(n, 0), opts.hits, opts.later)]
        for n in names:
            if not hits.get(n):
                out.note("not crossed: " + n)
        if trials:
            pairs = pairs[:trials]
        for i, (name, k) in enumerate(pairs):
            t = _trial(out, root, "s2-%04d" % i)
            try:
                copy_store(base.store, t.store)
                shutil.copy(base.log("p", "base"), t.log("p", "base"))
                proc = "fp%d" % i
                r = testing.run_in_child(workload.failpoint_phase, t.store, proc, "tx-fp", t.logs,
                                         FP_TOPICS, seed=seed, failpoints={name: "kill@%d" % k},
                                         timeout=120)
                out.trials += 1
                if r.killed_by == "failpoint":
                    out.note("kills")
                elif r.ok:
                    out.note("not reached")        # the hit count varied between runs
                else:
                    expect_ok(out, r, "%s@%d" % (name, k))
                _log(opts, "  2: %s@%d -> %s" % (name, k, r))
                _finish(out, t, opts, tids=["tx-fp"], topics=FP_TOPICS)
            finally:
                _cleanup(out, t, opts)
    finally:
        base.cleanup()
    return out


# ---- 3: simulated power loss ----

def power_loss(trials, seed, root, opts):
    """Per store, opts.cycles times: a transactional and an idempotent
    producer write with fsync=always (the fsync recorder on), SIGKILL at a
    random moment, then everything past each file's last fsync is cut,
    zero-filled, garbled or kept, and LMDB keeps its last commit or loses it
    (opts.lmdb "random": half the time, if the child made it and the LMDB
    settings allow it, see powerloss.apply); the next cycle opens the
    damaged store.  trials counts power losses.  No acknowledged record may
    be lost."""
    out = Outcome("3 power loss", 0, seed)
    rng = random.Random(seed)
    n = 0
    while out.trials < trials:
        t = _trial(out, root, "s3-%04d" % n)
        n += 1
        try:
            if run_step(out, "create topics", workload.create_topics, t.store, TOPICS,
                        {"segment.bytes": 4096}) is None:
                break
            for cycle in range(min(opts.cycles, trials - out.trials)):
                before = powerloss.snapshot(t.store)
                lmdb_before = powerloss.lmdb_txnid(t.store)
                proc = "pl%d" % cycle
                fsync_log = t.log("fsync", proc)
                c = t.start(workload.powerloss_phase, t.store, proc, "tx-pl", t.logs, TOPICS,
                            fsync_log, seed=rng.randrange(1 << 30))
                time.sleep(rng.uniform(opts.min_s, opts.max_s))
                c.kill()
                r = c.wait(30)
                out.trials += 1
                if not r.killed:
                    expect_ok(out, r, "power-loss workload")
                records = powerloss.read_records(fsync_log)
                summary = powerloss.apply(t.store, records, before, rng, mode="garble",
                                          lmdb=opts.lmdb, lmdb_before=lmdb_before)
                for k, v in summary.items():
                    out.note(k, v)
            _finish(out, t, opts, tids=["tx-pl"])
        finally:
            _cleanup(out, t, opts)
    return out


# ---- 4: I/O errors ----

IO_TARGETS = ("write", "log.write", "fsync.before", "fsync.after", "rename", "truncate",
              "recovery.truncate", "log.sync_marker.before", "index.save.between")
IO_ACTIONS = ("eio", "eio!", "enospc", "enospc!")


def io_errors(trials, seed, root, opts):
    """An I/O error (EIO or ENOSPC, once or on every hit from then on) at the
    k-th write, fsync, rename and truncate, for k in 1..opts.hits, counted
    from the start (opening the store meets it first) or from once every
    partition is open (opts.io_arms), during opening, transactions and
    idempotent writes with fsync=always.  Then:
    the child must end (no hang) with only KafkaExceptions reaching the
    application; no segment fsync may follow a failed one; with every file
    cut back to its last successful fsync, reopening must work and lose no
    acknowledged record.  trials caps the number of cases (0: all)."""
    out = Outcome("4 I/O errors", 0, seed)
    rng = random.Random(seed)
    base = Trial(root, "s4-base")
    try:
        if run_step(out, "create topics", workload.create_topics, base.store, FP_TOPICS,
                    {"segment.bytes": opts.io_segment_bytes}) is None:
            return out
        if run_step(out, "base data", workload.txn_producer, base.store, "base", "tx-io",
                    base.log("p", "base"), FP_TOPICS, seed=seed, txns=4, abort_ratio=0.0) is None:
            return out
        known = set(testing.failpoint_names())
        cases = []
        for target in opts.io_targets:
            if target not in known:
                out.note("missing failpoint: " + target)
                continue
            for action in IO_ACTIONS:
                if action.startswith("enospc") and target not in ("write", "log.write"):
                    continue
                for k in range(1, opts.hits + 1):
                    for arm in opts.io_arms:
                        cases.append((target, action, k, arm))
        rng.shuffle(cases)
        if trials:
            cases = cases[:trials]
        for i, (target, action, k, arm) in enumerate(cases):
            t = _trial(out, root, "s4-%04d" % i)
            try:
                copy_store(base.store, t.store)
                shutil.copy(base.log("p", "base"), t.log("p", "base"))
                _torn_tail(t.store, "a", 0, rng)
                before = powerloss.snapshot(t.store)
                durable = powerloss.durable_sizes(t.store)
                proc = "io%d" % i
                fsync_log = t.log("fsync", proc)
                r = testing.run_in_child(workload.io_error_phase, t.store, proc, "tx-io", t.logs,
                                         FP_TOPICS, fsync_log, (target, action, k), arm,
                                         seed=seed, timeout=60)
                out.trials += 1
                case = "%s=%s@%d (armed at %s)" % (target, action, k, arm)
                with open(os.path.join(t.dir, "case"), "w") as f:
                    f.write(case + "\n")
                _log(opts, "  4: %s -> %s" % (case, r))
                if r.timed_out:
                    out.report.add("hang", {"case": case})
                elif not r.ok:
                    out.report.add("crash", {"case": case, "returncode": r.returncode,
                                             "error": (r.error or "").strip().splitlines()[-2:]})
                elif r.value:
                    out.note("cases with errors")
                _judge_io(out, t, case, durable)
                records = powerloss.read_records(fsync_log)
                powerloss.apply(t.store, records, before, rng, mode="truncate")
                _finish(out, t, opts, tids=["tx-io"], topics=FP_TOPICS)
            finally:
                _cleanup(out, t, opts)
    finally:
        base.cleanup()
    return out


def _judge_io(out, t, case, durable):
    """Unclear errors (not a KafkaException) and fsyncs retried after a failure."""
    for path in t.producer_logs():
        for ev in workload_events(path):
            if ev.get("op") == "api_error" and not ev.get("kafka"):
                out.report.add("unclear-error", {"case": case, "type": ev.get("type"),
                                                 "msg": ev.get("msg"), "where": ev.get("where")})
    for path in sorted(p for p in os.listdir(t.logs) if p.startswith("fsync-")):
        records = powerloss.read_records(os.path.join(t.logs, path))
        for r in powerloss.fsync_retries(records, durable):
            out.report.add("fsync-retried", {"case": case, "file": os.path.relpath(r["path"], t.store),
                                             "ok": r.get("ok"),
                                             "durable_before_failure": r["durable_before_failure"]})


def workload_events(path):
    out = []
    with open(path, "rb") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# ---- 5: kill -9 during recovery, repeatedly ----

RECOVERY_POINTS = ("recovery.segment", "recovery.truncate", "recovery.drop_segment",
                   "recovery.discard", "recovery.point", "index.rebuild", "index.save.between",
                   "write", "rename", "truncate", "fsync.before", "fsync.after",
                   "log.sync_marker.before", "log.sync_marker.after", "log.write",
                   "log.append.after_write", "meta.commit.before", "meta.commit.after",
                   "txn.marker.after", "txn.complete.before", "txn.complete.after")


def kill_during_recovery(trials, seed, root, opts):
    """Damage a store (a writer killed mid-run, a transaction left at its
    commit point, then one of: a torn tail, a batch cut in half, a deleted
    index, a damaged or missing recovery point, a failed last fsync), copy
    it, recover the copy once cleanly for the reference digest, then recover
    the original while killing it opts.recovery_kills times (at a recovery
    failpoint hit drawn from the reference's hit counts, or at a random
    moment), and recover it twice more: both digests must equal the
    reference."""
    out = Outcome("5 kill-9 in recovery", trials, seed)
    rng = random.Random(seed)
    for n in range(trials):
        t = _trial(out, root, "s5-%04d" % n)
        ref = Trial(root, "s5-%04d-ref" % n)
        try:
            if not _damaged_store(out, t, rng, opts):
                continue
            copy_store(t.store, ref.store)
            armed = {name: "sleep:0" for name in RECOVERY_POINTS}
            r = testing.run_in_child(workload.recover_and_digest, ref.store, FP_TOPICS, True,
                                     failpoints=armed, timeout=120)
            if not expect_ok(out, r, "reference recovery", kind="reopen-failed"):
                continue
            want, hits = r.value, r.value.pop("hits")
            out.note("records digested", want["records"])
            choices = [(name, k) for name, h in sorted(hits.items()) for k in range(1, h + 1)]
            for _ in range(opts.recovery_kills):
                if choices and rng.random() < 0.8:
                    name, k = rng.choice(choices)
                    r = testing.run_in_child(workload.recover, t.store, FP_TOPICS,
                                             failpoints={name: "kill@%d" % k}, timeout=60)
                    what = "%s@%d" % (name, k)
                else:
                    r = testing.random_kill(workload.recover, t.store, FP_TOPICS, min_s=0.0,
                                            max_s=0.15, rng=rng, timeout=60)
                    what = "random"
                if r.killed:
                    out.note("kills")
                elif r.ok:
                    out.note("recovery finished first")
                else:
                    expect_ok(out, r, "recovery killed at " + what, kind="reopen-failed")
            for attempt in ("first", "second"):
                r = testing.run_in_child(workload.recover_and_digest, t.store, FP_TOPICS, timeout=120)
                if not expect_ok(out, r, "%s clean recovery" % attempt, kind="reopen-failed"):
                    break
                if r.value != want:
                    out.report.add("digest-mismatch", {"trial": n, "recovery": attempt,
                                                       "want": want, "got": r.value})
                    _keep(out, t, opts)
                    break
        finally:
            ref.cleanup()
            _cleanup(out, t, opts)
    return out


def _damaged_store(out, t, rng, opts):
    if run_step(out, "create topics", workload.create_topics, t.store, FP_TOPICS, FP_CONFIG) is None:
        return False
    # A long transaction timeout: whether an Ongoing transaction counts as
    # expired must not depend on how long each recovery took.
    fps = {"txn.prepare.after": "kill@%d" % rng.randint(2, 6)} if rng.random() < 0.5 else None
    c = t.start(workload.txn_producer, t.store, "w", "tx-w", t.log("p", "w"), FP_TOPICS,
                seed=rng.randrange(1 << 30), abort_ratio=0.3, txn_timeout_ms=900000,
                failpoints=fps)
    time.sleep(rng.uniform(0.2, 0.5))
    c.kill()
    c.wait(30)
    damage = rng.choice(("torn tail", "cut batch", "no index", "bad recovery point",
                         "no recovery point", "failed fsync"))
    out.note("damage: " + damage)
    d = os.path.join(t.store, "a-0")
    segs = sorted(f for f in os.listdir(d) if f.endswith(".log"))
    if damage == "torn tail":
        _torn_tail(t.store, "a", 0, rng)
    elif damage == "cut batch":
        p = os.path.join(d, segs[-1])
        size = os.path.getsize(p)
        if size > 70:
            os.truncate(p, size - rng.randint(1, 60))
    elif damage == "no index":
        for f in os.listdir(d):
            if f.endswith(".index") or f.endswith(".timeindex"):
                os.unlink(os.path.join(d, f))
    elif damage == "failed fsync":
        # The writer's last fsync failed: opening cuts back to the one
        # before, dropping any segment rolled since (fsync=never: often).
        workload.fail_sync_marker(t.store, "a", 0)
    elif damage == "bad recovery point":
        with open(os.path.join(d, "recovery-point"), "r+b") as f:
            f.seek(rng.randrange(36))
            f.write(bytes([rng.getrandbits(8)]))
    else:
        try:
            os.unlink(os.path.join(d, "recovery-point"))
        except FileNotFoundError:
            pass
    return True


# ---- 6: the soak: producers, copiers and readers, random kills ----

SOAK_TOPICS = {"in": 3, "out": 3}


def soak(trials, seed, root, opts):
    """opts.producers transactional producers write to "in" and opts.copiers
    copiers (one active group member at a time) copy "in" to "out" exactly
    once, both with 30% aborts, for opts.duration seconds while two
    read_committed readers and one read_uncommitted reader poll both topics;
    every 0.2-1.0 s a producer or a copier (sometimes a reader) is SIGKILLed
    and restarted.  At the end a copier drains "in", and the checker also
    requires every visible input value to be copied exactly once."""
    out = Outcome("6 soak", trials, seed)
    rng = random.Random(seed)
    tps = workload.all_tps(SOAK_TOPICS)
    for n in range(trials):
        t = _trial(out, root, "s6-%04d" % n)
        try:
            if run_step(out, "create topics", workload.create_topics, t.store, SOAK_TOPICS) is None:
                continue
            inc = {}

            def start(kind, slot):
                k = inc[(kind, slot)] = inc.get((kind, slot), -1) + 1
                name = "%s%d.%d" % (kind, slot, k)
                s = rng.randrange(1 << 30)
                if kind == "p":
                    return t.start(workload.txn_producer, t.store, name, "tx-%d" % slot,
                                   t.log("p", name), {"in": 3}, seed=s, abort_ratio=0.3,
                                   stop_path=t.stop_path, duration=opts.duration + 60,
                                   txn_timeout_ms=10000)
                if kind == "c":
                    return t.start(workload.copier, t.store, name, "copier-%d" % slot,
                                   t.log("p", name), t.log("c", name), "in", "out", seed=s,
                                   abort_ratio=0.3, stop_path=t.stop_path,
                                   duration=opts.duration + 60, strategy=opts.copier_strategy)
                iso = "read_uncommitted" if slot == 2 else "read_committed"
                return t.start(workload.reader, t.store, name, t.log("c", name), tps, iso,
                               stop_path=t.stop_path, timeout=opts.duration + 120)
            procs = {("p", i): start("p", i) for i in range(opts.producers)}
            procs.update({("c", i): start("c", i) for i in range(opts.copiers)})
            procs.update({("r", i): start("r", i) for i in range(3)})
            end = time.monotonic() + opts.duration
            while time.monotonic() < end:
                time.sleep(rng.uniform(0.2, 1.0))
                victims = [k for k in procs if k[0] != "r"]
                key = rng.choice(victims) if rng.random() < 0.85 else ("r", rng.randrange(3))
                procs[key].kill()
                procs[key].wait(10)
                out.note("kills")
                procs[key] = start(*key)
            t.stop()
            _log(opts, "  6: stopping")
            for key, c in sorted(procs.items()):
                expect_ok(out, c.wait(90), "%s%d" % key)
            _log(opts, "  6: stopped")
            tids = ["tx-%d" % i for i in range(opts.producers)] + \
                   ["copier-%d" % i for i in range(opts.copiers)]
            r = testing.run_in_child(workload.settle, t.store, tids, timeout=60)
            expect_ok(out, r, "settle", kind="reopen-failed")
            _log(opts, "  6: settled")
            name = "cd"
            r = testing.run_in_child(workload.copier, t.store, name, "copier-drain", t.log("p", name),
                                     t.log("c", name), "in", "out", abort_ratio=0.0, drain=True,
                                     timeout=120, strategy=opts.copier_strategy)
            expect_ok(out, r, "drain copier")
            _log(opts, "  6: drained: %s" % r)
            _finish(out, t, opts, copies={("in", "out"): "c:"},
                    tids=tids + ["copier-drain"], topics=SOAK_TOPICS)
        finally:
            _cleanup(out, t, opts)
    return out


SCENARIOS = {
    "1": kill_during_transactions,
    "2": every_failpoint,
    "3": power_loss,
    "4": io_errors,
    "5": kill_during_recovery,
    "6": soak,
}
NAMES = {"kill": "1", "failpoints": "2", "powerloss": "3", "ioerrors": "4", "recovery": "5",
         "soak": "6"}


def run(scenario, trials, seed, root, opts=None):
    fn = SCENARIOS[NAMES.get(str(scenario), str(scenario))]
    opts = opts or Options()
    os.makedirs(root, exist_ok=True)
    start = time.monotonic()
    out = fn(trials, seed, root, opts)
    out.seconds = harness.elapsed(start)
    return out
