"""The parent's PROMETHEUS_MULTIPROC_DIR: prepared before forking, read on scrape, folded as children die.

prometheus_client picks its value class once, when `prometheus_client.values` is first imported:
`MultiProcessValue` (one mmap file per process and metric type) if PROMETHEUS_MULTIPROC_DIR is in the
environment then, an in-memory value otherwise. Children are forked, so they inherit the parent's
choice; the parent must therefore call `prepare_directory()` before anything imports
prometheus_client (metrics.definitions, worker.*), and fork only afterwards. A forked child opens its
own `<type>_<pid>.db` files on its first metric call (the library notices the pid change).

Bounded files, counters that never go back: when a child is reaped, `mark_dead(pid)` adds its
counter, histogram and summary values into one `<type>_dead.db` file per type, and deletes its
files, so the directory holds at most (live children + 1) x (types used) files however often children
restart. Gauges of a dead process are deleted: children only use `live*` modes, which the library
itself drops on death. Scrapes and merges take the same lock, so no scrape sees a dead child's
values twice (once merged, once in its own file) or not at all.
"""

import glob
import os
import shutil
import sys
import tempfile
import threading
from collections import defaultdict

ENV = "PROMETHEUS_MULTIPROC_DIR"
DEAD = "dead"                     # the pid part of the accumulated files' names
MERGED_TYPES = ("counter", "histogram", "summary")
HEADER_BYTES = 8                  # mmap file header: used bytes (int32) and padding


class ImportOrderError(RuntimeError):
    """prometheus_client was imported before the directory was set: children would record nothing."""


class MetricsDirectory:
    """One directory of mmap files: the children write, the parent reads and folds."""

    def __init__(self, path: str, owned: bool = False):
        self.path = path
        self.owned = owned            # created by us (a temp dir): `remove()` may delete it
        self._lock = threading.Lock()

    def wipe(self) -> None:
        """Delete every metric file left by an earlier run (only *.db and our *.tmp files)."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        for name in os.listdir(self.path):
            if name.endswith((".db", ".db.tmp")):
                os.unlink(os.path.join(self.path, name))

    def files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.path, "*.db")))

    def collect(self):
        """The children's metrics, summed across processes (a prometheus_client collector)."""
        from prometheus_client.multiprocess import MultiProcessCollector

        with self._lock:
            return list(MultiProcessCollector.merge([f for f in self.files() if _started(f)], accumulate=True))

    def mark_dead(self, pid: int) -> None:
        """Fold a reaped child's files into the accumulated ones. Call after waitpid, before the next fork."""
        with self._lock:
            for typ in MERGED_TYPES:
                own = os.path.join(self.path, f"{typ}_{pid}.db")
                if os.path.exists(own):
                    self._fold(typ, own)
            for own in glob.glob(os.path.join(self.path, f"gauge_*_{pid}.db")):
                os.unlink(own)

    def _fold(self, typ: str, own: str) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        merged = os.path.join(self.path, f"{typ}_{DEAD}.db")
        totals: dict[str, float] = defaultdict(float)
        for path in (merged, own):
            if _started(path):
                for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(path):
                    totals[key] += value
        partial = merged + ".tmp"
        if os.path.exists(partial):
            os.unlink(partial)
        target = MmapedDict(partial)
        try:
            for key, value in totals.items():
                target.write_value(key, value, 0.0)
        finally:
            target.close()
        os.replace(partial, merged)   # readers see the old total or the new one, never half
        os.unlink(own)

    def remove(self) -> None:
        """At the parent's exit: delete the directory if we made it, else only our files."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
        elif os.path.isdir(self.path):
            self.wipe()


def _started(path: str) -> bool:
    """False for a file a process created but had not sized yet (it may have died there: kill -9).

    prometheus_client creates the file, then truncates it to its first size; reading it in between
    raises struct.error and fails the whole scrape (client_python issue #1199). Such a file holds
    nothing yet. Files only grow, so a size seen once stays valid.
    """
    try:
        return os.path.getsize(path) >= HEADER_BYTES
    except FileNotFoundError:
        return False


def prepare_directory(path: str | None = None) -> MetricsDirectory:
    """Create or wipe the directory and export it; call first thing in the parent, before any fork.

    `path` defaults to an existing PROMETHEUS_MULTIPROC_DIR, else a new private temp directory.
    Raises ImportOrderError if prometheus_client was already imported without the variable.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not values.ValueClass._multiprocess:
        raise ImportOrderError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set, so forked children "
            "would keep their metrics in memory; call metrics.multiprocess.prepare_directory() before "
            "importing metrics.definitions or any worker module"
        )
    owned = False
    path = path or os.environ.get(ENV)
    if not path:
        path, owned = tempfile.mkdtemp(prefix="report-worker-metrics-"), True
    directory = MetricsDirectory(os.path.abspath(path), owned=owned)
    directory.wipe()
    os.environ[ENV] = directory.path
    return directory
