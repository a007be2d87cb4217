"""Medians, the table, issue 6's targets, and the JSON and PNG outputs.

`runs` maps (case key, size) to one metrics dict per round (None where the
case did not run that round, {"error": ...} where it failed).  A figure is
the median over the rounds that have it; a ratio is the median of the
per-round ratios (both sides measured in the same round, minutes apart at
most), which cancels most of the VM's drift between rounds.
"""
import json
import os
import statistics

from .common import LARGE, SMALL

LIMITS = ("limits | -", 0)
PYLOG_FAST, PYLOG_DURABLE = "pylog idempotent | fast", "pylog idempotent | durable"
PYLOG_TXN = "pylog txn x1000 | fast"
DURABLE_PEERS = ("persist-queue SQLiteQueue | durable", "persist-queue file Queue | durable",
                 "litequeue | durable", "NATS JetStream (nats-py) | durable")


def _values(runs, key, size, metric):
    return [r[metric] for r in runs.get((key, size), [])
            if r and r.get(metric) is not None]


def median(runs, key, size, metric):
    v = _values(runs, key, size, metric)
    return statistics.median(v) if v else None


def _per_round(runs, a, b, fn):
    """Median over rounds of fn(metrics of a, metrics of b); a and b are (key, size)."""
    vals = []
    for ra, rb in zip(runs.get(a, []), runs.get(b, [])):
        try:
            vals.append(fn(ra, rb))
        except (TypeError, KeyError, ZeroDivisionError):
            pass                                 # a side missing or failed that round
    return (statistics.median(vals), vals) if vals else (None, [])


def _workload(m):
    """records/s of the whole workload: write then read the same records."""
    return 1.0 / (1.0 / m["write"] + 1.0 / m["read"])


def targets(runs):
    """[(name, value, unit, op, target, verdict or None, per-round values)]."""
    out = []

    def add(name, pair, fn, op, target, unit="x"):
        value, rounds = _per_round(runs, pair[0], pair[1], fn)
        ok = None if value is None else (value >= target if op == ">=" else value <= target)
        out.append((name, value, unit, op, target, ok, rounds))

    s, lim = SMALL, LIMITS
    for peer, label, t in (("py-lmdb | fast", "py-lmdb puts", 1.5),
                           ("confluent-kafka enqueue | no broker", "confluent bare enqueue", 2.0)):
        add("produce() idempotent fsync=never / %s (100 B)" % label, ((PYLOG_FAST, s), (peer, s)),
            lambda a, b: a["write"] / b["write"], ">=", t)
        add("  same, produce() loop alone (no flush)", ((PYLOG_FAST, s), (peer, s)),
            lambda a, b: a["write_loop"] / b["write"], ">=", t)
    add("produce() fsync=always linger.ms=5, 100 B (M records/s)", ((PYLOG_DURABLE, s), lim),
        lambda a, _: a["write"] / 1e6, ">=", 1.0, "M/s")
    add("produce() fsync=always, 10 KiB: MB/s / fsynced write MB/s",
        ((PYLOG_DURABLE, LARGE), lim),
        lambda a, b: a["write"] * LARGE / 1e6 / b["seq_fsync_MBps"], ">=", 0.70)
    add("  same, / fsynced write with early writeback MB/s", ((PYLOG_DURABLE, LARGE), lim),
        lambda a, b: a["write"] * LARGE / 1e6 / b["seq_fsync_wb_MBps"], ">=", 0.70)
    for key, what in ((PYLOG_FAST, "idempotent log"), (PYLOG_TXN, "txn log")):
        add("consume() read_committed (%s) / py-lmdb cursor" % what,
            ((key, s), ("py-lmdb | fast", s)), lambda a, b: a["read"] / b["read"], ">=", 1.5)
        add("poll() read_committed (%s) (M records/s)" % what, ((key, s), lim),
            lambda a, _: a["poll"] / 1e6, ">=", 1.0, "M/s")
    commit = ("pylog txn x1 commit | durable", s)
    add("durable commit, 1-record txn (median) / fdatasync median", (commit, commit),
        lambda a, _: a["commit_med_s"] / a["fdatasync_med_s"], "<=", 3.0)
    for peer in DURABLE_PEERS:
        add("durable write+read workload: pylog / %s" % peer.split(" | ")[0],
            ((PYLOG_DURABLE, s), (peer, s)), lambda a, b: _workload(a) / _workload(b), ">=", 50)
    return out


def rows(runs, cases):
    """Table rows in case order, per size: dicts of medians."""
    out = []
    for size in (SMALL, LARGE):
        for case in cases:
            if (case.key, size) not in runs or case.group == "limits":
                continue
            med = {m: median(runs, case.key, size, m)
                   for m in ("write", "read", "write_loop", "poll", "commit_med_s",
                             "fdatasync_med_s", "write_n", "read_n")}
            errors = [r["error"] for r in runs[(case.key, size)] if r and "error" in r]
            out.append({"system": case.system, "mode": case.mode, "size": size,
                        "write_rps": med["write"], "read_rps": med["read"],
                        "write_loop_rps": med["write_loop"], "poll_rps": med["poll"],
                        "commit_med_ms": med["commit_med_s"] and med["commit_med_s"] * 1e3,
                        "fdatasync_med_ms": med["fdatasync_med_s"] and med["fdatasync_med_s"] * 1e3,
                        "write_n": med["write_n"], "read_n": med["read_n"],
                        "rounds": [r and {k: v for k, v in r.items() if k != "note"}
                                   for r in runs[(case.key, size)]],
                        "errors": errors})
    return out


def limits(runs):
    ms = [r for r in runs.get(LIMITS, []) if r and "error" not in r]
    return {k: statistics.median(r[k] for r in ms if k in r) for k in (ms[0] if ms else {})}


def _num(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def _mb(rps, size):
    return None if rps is None else rps * size / 1e6


def table_lines(table, lim):
    head = "%-32s %-10s %6s %13s %13s %9s %9s  %s" % (
        "system", "mode", "size", "written rec/s", "read rec/s", "wr MB/s", "rd MB/s", "notes")
    lines = [head, "-" * len(head)]
    for r in table:
        size = "100 B" if r["size"] == SMALL else "10 KiB"
        notes = []
        if r["errors"]:
            notes.append("FAILED %d round(s): %s" % (len(r["errors"]), r["errors"][0][:60]))
        if r["write_n"] is not None and r["read_n"] is not None and r["read_n"] < r["write_n"]:
            notes.append("read capped at %d records" % r["read_n"])
        if r["commit_med_ms"] is not None:
            notes.append("commit median %.3f ms, fdatasync %.3f ms" % (
                r["commit_med_ms"], r["fdatasync_med_ms"]))
        lines.append("%-32s %-10s %6s %13s %13s %9s %9s  %s" % (
            r["system"], r["mode"], size, _num(r["write_rps"]), _num(r["read_rps"]),
            _num(_mb(r["write_rps"], r["size"]), "{:,.1f}"),
            _num(_mb(r["read_rps"], r["size"]), "{:,.1f}"), "; ".join(notes)))
        if r["write_loop_rps"] is not None:
            lines.append("%-32s %-10s %6s %13s %13s %9s" % (
                "  produce() loop alone", "", "", _num(r["write_loop_rps"]), "", _num(
                    _mb(r["write_loop_rps"], r["size"]), "{:,.1f}")))
        if r["poll_rps"] is not None:
            lines.append("%-32s %-10s %6s %13s %13s %9s %9s" % (
                "  read with poll()", "", "", "", _num(r["poll_rps"]), "",
                _num(_mb(r["poll_rps"], r["size"]), "{:,.1f}")))
    if lim:
        lines += ["", "physical limits (medians): sequential write %s MB/s to the page cache, "
                  "%s MB/s with a final fdatasync (%s with early writeback) (%d MiB); "
                  "4 KiB append + fdatasync %.3f ms median, %.3f ms p99" % (
                      _num(lim.get("seq_cached_MBps")), _num(lim.get("seq_fsync_MBps")),
                      _num(lim.get("seq_fsync_wb_MBps")),
                      int(lim.get("seq_bytes", 0)) >> 20, lim.get("fdatasync_med_s", 0) * 1e3,
                      lim.get("fdatasync_p99_s", 0) * 1e3),
                  "  CRC32C %s GB/s (pylog._bridge), %s GB/s (crc32c package); memcpy %s GB/s"
                  % (_num(lim.get("crc_pylog_GBps"), "{:.1f}"),
                     _num(lim.get("crc_pkg_GBps"), "{:.1f}"),
                     _num(lim.get("memcpy_GBps"), "{:.1f}"))]
    return lines


def target_lines(tgts):
    lines = ["%-62s %9s %11s  %s" % ("target (issue 6)", "measured", "target", "verdict")]
    for name, value, unit, op, target, ok, rounds in tgts:
        verdict = "n/a (not measured)" if ok is None else ("PASS" if ok else "FAIL")
        lines.append("%-62s %9s %11s  %s%s" % (
            name, _num(value, "{:.2f}") + ("" if value is None else unit),
            "%s %g%s" % (op, target, unit), verdict,
            "   rounds: " + " ".join("%.2f" % v for v in rounds) if len(rounds) > 1 else ""))
    return lines


def write_json(path, meta, table, lim, tgts):
    doc = dict(meta, rows=table, limits=lim, targets=[
        {"name": n.strip(), "value": v, "unit": u, "op": op, "target": t,
         "verdict": None if ok is None else ("PASS" if ok else "FAIL"), "rounds": rs}
        for n, v, u, op, t, ok, rs in tgts])
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")


def write_png(path, table, lim, title):
    """Bar chart, log scale: records/s written and read per system and mode."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print("no chart: matplotlib is not importable (%s); pip install matplotlib" % exc)
        return False
    sizes = [s for s in (SMALL, LARGE) if any(r["size"] == s for r in table)]
    fig, axes = plt.subplots(1, len(sizes), figsize=(8 * len(sizes), 9), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rs = [r for r in table if r["size"] == size][::-1]
        ys = range(len(rs))
        for off, key, label, color in ((0.2, "write_rps", "written", "tab:blue"),
                                       (-0.2, "read_rps", "read", "tab:orange")):
            ax.barh([y + off for y in ys], [r[key] or 0 for r in rs], height=0.4,
                    label=label + " records/s", color=color)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(["%s | %s" % (r["system"], r["mode"]) for r in rs], fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(left=10)
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.set_title("%s records (median of rounds)" % ("100 B" if size == SMALL else "10 KiB"))
        ax.legend(loc="lower right", fontsize=8)
        if size == LARGE and lim.get("seq_fsync_MBps"):
            ax.axvline(lim["seq_fsync_MBps"] * 1e6 / LARGE, color="k", ls="--", lw=1)
            ax.text(lim["seq_fsync_MBps"] * 1e6 / LARGE, len(rs) - 0.5,
                    " fsynced write bandwidth", fontsize=7, va="top")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
