"""Warm mode's page learning: which pages a warm child copies, so that the spares after
it copy them before their requests come (issue 5).

A forked child shares every page with its zygote until it writes to one. Then the kernel
copies that page (a copy-on-write fault: 3-5 µs each on the machines we measure on). A
warm Flask request writes about 1,100 such pages, mostly reference counts spread over
the heap, and those faults were most of its time. Which pages they are changes little
from one request of a script to the next. So now and then the zygote asks a child to
stop itself (SIGSTOP) once its script has run and its output is closed (no client
waits for this), and reads in /proc/PID/pagemap which of the child's private writable
pages are its own by then: present and mapped by it alone (``learn``). The spares
forked after that write-fault those pages with ``madvise(MADV_POPULATE_WRITE)`` while
they wait for a request (``prefault``), so a request finds most of the copying done.
The CPU is spent all the same, but not while a client waits; the zygote has spares do
it only while requests are far enough apart for idle time to do it in.

What this shares between requests is which pages were written, never their contents: a
spare's copies are of the zygote's pages. A page that every other holder copied away
from counts as the child's own too, so the set can be a little larger than the
request's; a page that is gone or not mapped in a spare is skipped by the kernel.

Stdlib only, like ``warm_zygote``: the zygote's loader runs this file beside it.
"""

from __future__ import annotations

import ctypes
import os
import select

# No ``typing`` and no ``re``: every page a zygote's imports fill is a page each fork
# copies the entry of and each child's exit tears down (they were 2.6 of its 6.7 MiB).
TYPE_CHECKING = False

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_PAGES = 8192  # a spare copies at most this many pages ahead (32 MiB of 4 KiB pages)
MAX_SCAN = 1 << 30  # bytes of a child's writable memory looked at, at most
CHUNK = 64  # pages populated between two looks for a request that has come
# Runs this close together are populated as one: a few pages more cost less than a
# system call each (a Flask child's ~1,000 pages come in ~500 runs, ~90 once joined).
GAP = 8  # pages
MADV_POPULATE_WRITE = 23  # Linux 5.14

# pagemap entries are 64-bit little-endian: bit 63 "present", bit 56 "exclusively
# mapped" (Documentation/admin-guide/mm/pagemap.rst) are both in the top byte.
_OWN = bytes(int(byte & 0x81 == 0x81) for byte in range(256))

if TYPE_CHECKING:  # types only: the zygote may run on an interpreter older than ours
    import _socket as socket
    from collections.abc import Callable

    Ranges = list[tuple[int, int]]  # (address, pages)


def learn(pid: int) -> Ranges:
    """The runs of pages that a stopped child ``pid`` holds alone, in its private
    writable mappings: at most MAX_PAGES pages, fewest runs first (none if /proc says
    nothing: another kernel, or a child we may not look at)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as maps:
            regions = _writable(maps.read())
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    runs: Ranges = []
    try:
        for start, end in regions:
            first = start // PAGE
            entries = os.pread(fd, 8 * ((end - start) // PAGE), 8 * first)
            runs += _runs(entries[7::8].translate(_OWN), first)
    except OSError:
        return []
    finally:
        os.close(fd)
    return _cap(_joined(runs))


def _runs(own: bytes, first: int) -> Ranges:
    """The runs of 1s in ``own`` (one byte a page, from page number ``first``)."""
    runs: Ranges = []
    start = own.find(1)
    while start >= 0:
        end = own.find(0, start)
        end = len(own) if end < 0 else end
        runs.append((PAGE * (first + start), end - start))
        start = own.find(1, end)
    return runs


def _joined(runs: Ranges) -> Ranges:
    """``runs`` (in address order) with those less than GAP pages apart made one."""
    joined: Ranges = []
    for start, pages in runs:
        if joined:
            last_start, last_pages = joined[-1]
            gap = (start - last_start) // PAGE - last_pages
            if 0 <= gap < GAP:
                joined[-1] = (last_start, last_pages + gap + pages)
                continue
        joined.append((start, pages))
    return joined


def _writable(maps: bytes) -> list[tuple[int, int]]:
    """The private writable mappings of a /proc/PID/maps text, up to MAX_SCAN bytes."""
    regions, total = [], 0
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[1] != b"rw-p":
            continue
        start, _, end = fields[0].partition(b"-")
        region = (int(start, 16), int(end, 16))
        total += region[1] - region[0]
        if total > MAX_SCAN:
            break
        regions.append(region)
    return regions


def _cap(runs: Ranges) -> Ranges:
    """At most MAX_PAGES pages: the longest runs (fewest calls to populate them)."""
    if sum(pages for _, pages in runs) <= MAX_PAGES:
        return runs
    kept, total = [], 0
    for start, pages in sorted(runs, key=lambda run: -run[1]):
        if total + pages > MAX_PAGES:
            continue
        kept.append((start, pages))
        total += pages
    return sorted(kept)


_madvise: Callable[[int, int, int], int] | None = None


def available() -> bool:
    """Whether this process can populate pages (libc's madvise through ctypes): the
    zygote asks once, before its first fork, so that no spare loads it again."""
    global _madvise
    if _madvise is None:
        try:
            _madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError):
            return False
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise.restype = ctypes.c_int
    return True


def prefault(runs: Ranges, sock: socket.socket) -> int:
    """Write-fault ``runs`` in this process (a spare) until a request comes on ``sock``:
    the pages populated. None on a kernel without MADV_POPULATE_WRITE (EINVAL)."""
    if not runs or not available() or _madvise is None:
        return 0
    madvise = _madvise
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    done, since_look = 0, CHUNK  # a look before the first chunk too
    for start, pages in runs:
        for offset in range(0, pages, CHUNK):
            if since_look >= CHUNK:
                if poller.poll(0):
                    return done  # a request: it must not wait for the rest
                since_look = 0
            size = min(CHUNK, pages - offset)
            since_look += size
            if madvise(start + offset * PAGE, size * PAGE, MADV_POPULATE_WRITE) == 0:
                done += size
            elif ctypes.get_errno() == 22:
                return done  # EINVAL: no such advice here
            # else ENOMEM or EFAULT: not mapped, or not writable, here: the next chunk
    return done
