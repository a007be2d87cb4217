"""The parent side of a torture run: trial directories, children, outcomes
and the scoreboard.

A trial owns one directory: the store under store/, and logs/ with one
JSON-lines file per producer incarnation (p-*.jsonl), per consumer run
(c-*.jsonl) and per fsync recorder (fsync-*.jsonl).  The parent never opens
the store itself: every step runs in a spawned child (pylog.testing), so a
hang or a crash in pylog costs one trial, not the run.
"""
import glob
import os
import shutil
import time

from pylog import testing

from . import checker

# Anomaly kinds found by the harness rather than the history checker.
HARNESS_KINDS = ("hang", "crash", "unclear-error", "fsync-retried", "reopen-failed",
                 "digest-mismatch")
ALL_KINDS = checker.KINDS + HARNESS_KINDS


class Outcome:
    """One scenario's result: anomalies (a checker.Report), trial count, notes."""

    def __init__(self, scenario, trials, seed):
        self.scenario = scenario
        self.trials = trials
        self.seed = seed
        self.report = checker.Report()
        self.notes = {}
        self.seconds = 0.0
        self.kept = []                 # trial directories kept for inspection

    @property
    def anomalies(self):
        return self.report.count()

    def note(self, key, n=1):
        self.notes[key] = self.notes.get(key, 0) + n

    def row(self):
        by_kind = ", ".join("%s=%d" % (k, a["count"]) for k, a in sorted(self.report.anomalies.items()))
        return "| %-22s | %6d | %6s | %-40s | %7.1f |" % (
            self.scenario, self.trials, self.seed, by_kind or "none", self.seconds)


HEADER = ("| %-22s | %6s | %6s | %-40s | %7s |" % ("scenario", "trials", "seed",
                                                  "anomalies by kind", "seconds"))
RULE = "|" + "-" * 24 + "|" + "-" * 8 + "|" + "-" * 8 + "|" + "-" * 42 + "|" + "-" * 9 + "|"


def print_scoreboard(outcomes, out=print):
    out(HEADER)
    out(RULE)
    for o in outcomes:
        out(o.row())
    for o in outcomes:
        for kind, a in sorted(o.report.anomalies.items()):
            out("  %s %s: %d, e.g. %s" % (o.scenario, kind, a["count"], a["example"]))
        if o.notes:
            out("  %s notes: %s" % (o.scenario, ", ".join("%s=%s" % kv for kv in sorted(o.notes.items()))))
        for d in o.kept:
            out("  %s kept %s" % (o.scenario, d))


class Trial:
    """A directory holding one store and its logs."""

    def __init__(self, root, name):
        self.dir = os.path.join(root, name)
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        self.store = os.path.join(self.dir, "store")
        self.logs = os.path.join(self.dir, "logs")
        os.makedirs(self.logs)
        self.stop_path = os.path.join(self.dir, "stop")
        self._children = []

    def log(self, kind, name):
        """Path of a log: kind "p" (producer), "c" (consumer), "fsync"."""
        return os.path.join(self.logs, "%s-%s.jsonl" % (kind, name))

    def producer_logs(self):
        return sorted(glob.glob(os.path.join(self.logs, "p-*.jsonl")))

    def consumer_logs(self):
        return sorted(glob.glob(os.path.join(self.logs, "c-*.jsonl")))

    def check(self, copies=None):
        return checker.check(producer_logs=self.producer_logs(), consumer_logs=self.consumer_logs(),
                             copies=copies)

    def start(self, fn, *args, failpoints=None, **kwargs):
        c = testing.start_child(fn, *args, failpoints=failpoints, **kwargs)
        self._children.append(c)
        return c

    def stop(self):
        with open(self.stop_path, "w"):
            pass

    def kill_all(self):
        for c in self._children:
            c.kill("cleanup")
            c.wait(10)
        self._children = []

    def cleanup(self, keep=False):
        self.kill_all()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def expect_ok(outcome, result, step, kind="crash"):
    """Record a child that did not return normally as an anomaly; True if it did."""
    if result.ok:
        return True
    if result.timed_out:
        outcome.report.add("hang", {"step": step, "seconds": round(result.duration, 1)})
    else:
        outcome.report.add(kind, {"step": step, "returncode": result.returncode,
                                  "error": (result.error or "").strip().splitlines()[-3:]})
    return False


def run_step(outcome, step, fn, *args, timeout=60.0, kind="crash", **kwargs):
    """Run a step that must succeed in a child; returns its ChildResult, or
    None (and an anomaly recorded) if it did not return normally."""
    r = testing.run_in_child(fn, *args, timeout=timeout, **kwargs)
    return r if expect_ok(outcome, r, step, kind) else None


def copy_store(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def elapsed(start):
    return time.monotonic() - start
