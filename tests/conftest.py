"""A throwaway PostgreSQL cluster for the sink tests (and benchmarks/bench_streams.py).

Debian's server binaries (/usr/lib/postgresql/*/bin) are used; if they are
missing and we are root with apt-get, .ci/setup-postgres.sh installs them
first.  The cluster lives in a temporary directory (socket there, TCP on a
free 127.0.0.1 port) and runs as user "postgres" when we are root, since
initdb refuses root.  Tests that need it skip, saying why, only when it
cannot be installed or started.
"""
import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     ".ci", "setup-postgres.sh")


class PostgresUnavailable(RuntimeError):
    pass


def _bindir():
    def version(path):
        return [int(x) for x in re.findall(r"\d+", path)]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb and os.access(os.path.join(os.path.dirname(initdb), "pg_ctl"), os.X_OK):
        return os.path.dirname(os.path.realpath(initdb))
    return None


def postgres_bindir():
    """initdb/pg_ctl's directory, installing Debian's server first if needed."""
    bindir = _bindir()
    if bindir:
        return bindir
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresUnavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) "
                                  "and not root with apt-get to install them: run "
                                  ".ci/setup-postgres.sh as root")
    try:
        r = subprocess.run(["bash", SETUP], env={**os.environ, "PYTHON": sys.executable},
                           capture_output=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PostgresUnavailable("%s failed: %s" % (SETUP, e))
    if r.returncode != 0 or not _bindir():
        raise PostgresUnavailable("%s could not install PostgreSQL (exit %d): %s" % (
            SETUP, r.returncode, r.stderr.decode(errors="replace")[-500:]))
    return _bindir()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres():
    """Yields the DSN of a fresh cluster; stops and deletes it after."""
    bindir = postgres_bindir()
    as_user = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run "
                                      "the server as (Debian's postgresql package creates it)")
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    tmp = tempfile.mkdtemp(prefix="pylog-pg-", dir="/tmp" if as_user else None)
    data, log = os.path.join(tmp, "data"), os.path.join(tmp, "server.log")

    def run(*args, timeout=120):
        return subprocess.run([os.path.join(bindir, args[0]), *args[1:]], check=True,
                              capture_output=True, timeout=timeout, **as_user)
    try:
        if as_user:
            os.chown(tmp, as_user["user"], as_user["group"])
        run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C",
            "--no-sync")
        for attempt in range(3):            # another process may take the free port first
            port = _free_port()
            try:
                run("pg_ctl", "-D", data, "-w", "-t", "60", "-l", log, "-o",
                    "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c max_connections=50" % (port, tmp), "start", timeout=90)
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", None) or b"").decode(errors="replace")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                detail += f.read()[-500:]
        shutil.rmtree(tmp, ignore_errors=True)
        raise PostgresUnavailable("could not start a PostgreSQL cluster: %s %s"
                                  % (e, detail[-800:]))
    try:
        yield "host=%s port=%d user=postgres dbname=postgres" % (tmp, port)
    finally:
        try:
            run("pg_ctl", "-D", data, "-m", "immediate", "stop", timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster():
    """The DSN of a throwaway cluster shared by the session's tests."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]' installs it)")
    cm = throwaway_postgres()
    try:
        dsn = cm.__enter__()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    try:
        yield dsn
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def closing():
    """closing(client): close it when the test ends, even when it fails."""
    opened = []
    yield opened.append
    for c in reversed(opened):
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture
def fsyncs(monkeypatch):
    """The fds passed to fsutil.fsync, the one path every data fsync takes."""
    from pylog import fsutil
    calls = []
    real = fsutil.fsync

    def counting(fd, what="file"):
        calls.append(fd)
        return real(fd, what)

    monkeypatch.setattr(fsutil, "fsync", counting)
    return calls
