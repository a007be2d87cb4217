"""File-system helpers with one rule: every durability step goes through here.

fsync and directory fsync are the steps the crash harness hooks (failpoints),
so no other module calls os.fsync directly.
"""
import logging
import os

from . import _bridge, failpoints


def fsync(fd, what="file"):
    failpoints.hit("fsync.before")
    os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
    failpoints.hit("fsync.after")


def fsync_dir(path):
    """Make a created, renamed or removed directory entry durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        failpoints.hit("fsync.before")
        os.fsync(fd)
        failpoints.hit("fsync.after")
    finally:
        os.close(fd)


def write_atomic(path, data, durable=True):
    """Replace path with data: write a .tmp, fsync it, rename, fsync the directory.

    A crash leaves either the old file or the new one, plus at worst a stray
    .tmp that the next open removes."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        failpoints.hit("write")
        os.write(fd, data)
        if durable:
            fsync(fd)
    finally:
        os.close(fd)
    failpoints.hit("rename")
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path) or ".")


def pread_exact(fd, n, pos):
    """Read up to n bytes at pos, looping over short reads; fewer only at EOF."""
    chunks = []
    while n > 0:
        b = os.pread(fd, n, pos)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
        pos += len(b)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_offset_file(path, default=0):
    """The offset in a small offset file (8-byte BE offset + CRC-32C of it),
    default when the file is missing or damaged."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return default
    if len(raw) != 12 or _bridge.crc32c(raw[:8]) != int.from_bytes(raw[8:], "big"):
        logging.getLogger("pylog.log").warning("ignoring a damaged %s", path)
        return default
    return int.from_bytes(raw[:8], "big", signed=True)


def write_offset_file(path, offset, durable=True):
    body = offset.to_bytes(8, "big", signed=True)
    write_atomic(path, body + _bridge.crc32c(body).to_bytes(4, "big"), durable)
