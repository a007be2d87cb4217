"""The side-by-side comparison (python -m benchmarks.compare, issue 6) still runs.

A tiny run of the systems that need no extra package (pylog, py-lmdb,
sqlite3) plus the physical limits: it checks the harness, not the figures,
so it passes whatever the targets' verdicts are.  The peers that need the
"bench" extra (NATS, persist-queue, litequeue, pulsar-lite) are not selected.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_tiny_run_writes_table_targets_and_json(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--records", "2000", "--quick",
         "--rounds", "1", "--systems", "pylog,py-lmdb,sqlite", "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "target (issue 6)" in proc.stdout
    doc = json.loads((out / "compare-quick.json").read_text())
    rows = {(r["system"], r["mode"], r["size"]): r for r in doc["rows"]}
    for system in ("pylog idempotent", "pylog txn x1000", "py-lmdb", "sqlite3 WAL"):
        for mode in ("fast", "durable"):
            for size in (100, 10240):
                row = rows[(system, mode, size)]
                assert not row["errors"], row["errors"]
                assert row["write_rps"] > 0 and row["read_rps"] > 0
    assert rows[("pylog idempotent", "fast", 100)]["poll_rps"] > 0
    assert rows[("pylog txn x1 commit", "durable", 100)]["commit_med_ms"] > 0
    assert doc["limits"]["seq_fsync_MBps"] > 0 and doc["limits"]["fdatasync_med_s"] > 0
    verdicts = {t["name"]: t["verdict"] for t in doc["targets"]}
    assert verdicts["produce() idempotent fsync=never / py-lmdb puts (100 B)"] in ("PASS", "FAIL")
    assert verdicts["durable write+read workload: pylog / litequeue"] is None   # not selected
