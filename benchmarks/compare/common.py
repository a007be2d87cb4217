"""What every case shares: the Case type, the records, the run context, timers.

A case's run(ctx, size, n) writes n records of `size` bytes into a fresh store
under ctx.workdir, reads them back, and returns a dict of metrics:

  write, read     records/s of the whole write phase (durable when the mode
                  is) and of the whole read phase
  write_n, read_n how many records each phase handled (fewer than n when a
                  slow phase was capped by time: its rate is still a rate)
  write_loop      records/s of the produce() loop alone (no flush)
  poll            records/s read one record per poll() call
  commit_med_s    median seconds of one commit (small transactions)
  note            free text shown under the table
"""
import dataclasses
import importlib
import os
import shutil
import socket
import time
from typing import Callable, Optional, Tuple

SMALL = 100                 # bytes: the record
LARGE = 10 * 1024           # bytes: the second size, with N / 20 records
perf = time.perf_counter


def value_of(size):
    """A record of `size` bytes (not all one byte: nobody compresses here)."""
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def records_for(size, n_small):
    """Records at `size` for a run of n_small 100-byte records: N, or N / 20 at 10 KiB."""
    return n_small if size <= SMALL else max(100, n_small // 20)


@dataclasses.dataclass
class Context:
    workdir: str            # every store is made under here (one filesystem)
    cap: float              # seconds a slow case's write or read phase may take
    quick: bool = False

    def fresh(self, name):
        """An empty directory for one store; its parent is removed after the case."""
        path = os.path.join(self.workdir, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path


@dataclasses.dataclass
class Case:
    group: str              # what --systems selects: pylog, py-lmdb, sqlite, ...
    system: str             # the table's first column
    mode: str               # fast | durable | in memory | ...
    run: Callable           # run(ctx, size, n) -> metrics dict
    needs: Tuple[str, ...] = ()
    sizes: Tuple[int, ...] = (SMALL, LARGE)
    check: Optional[Callable] = None    # extra availability check: None or a reason

    @property
    def key(self):
        return "%s | %s" % (self.system, self.mode)

    def missing(self):
        """None when the case can run here, else the reason it is skipped."""
        for mod in self.needs:
            try:
                importlib.import_module(mod)
            except Exception as exc:        # ImportError, or a broken install
                return "python module %r not importable (%s: %s)" % (
                    mod, type(exc).__name__, exc)
        return self.check() if self.check else None


def capped(n, cap, body, step=100):
    """Call body(start, stop) over [0, n) in slices of `step` records until n
    are done or `cap` seconds have passed (cap None: no limit).
    Returns (records done, seconds)."""
    t0 = perf()
    done = 0
    while done < n:
        stop = min(n, done + step)
        body(done, stop)
        done = stop
        if cap is not None and perf() - t0 > cap:
            break
    return done, perf() - t0


def phase(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20.0):
    """Wait until 127.0.0.1:port accepts connections; fail if proc exits first."""
    deadline = perf() + timeout
    while perf() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %s before listening" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listening on 127.0.0.1:%d after %.0f s" % (port, timeout))


def stop_process(proc, timeout=10.0):
    """Stop a server this benchmark started, by its own handle (never by name)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except Exception:
            proc.kill()
            proc.wait(timeout)
