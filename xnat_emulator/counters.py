"""Request counters, thread-safe.

* `total`: requests answered;
* `by_route`: {"GET /data/experiments/{E}/scans/{SC}/files": n, ...} keyed by route template
  (method + template; the `/data/archive` prefix is kept when the client used it). A request
  for an archive (`format=zip|tar|tar.gz`, `tgz` and the MIME names counted as these, of a
  files listing, or `format=zip` of one file) is counted under its template with
  `?format=` and the archive added, whatever its answer (`paths.counter_key`):
  "GET /data/experiments/{E}/scans/{SC}/resources/{R}/files?format=zip",
  "GET .../files/{path}?format=zip"; the plain template counts listings and file downloads
  only;
* `by_status`: {200: n, 401: n, ...};
* `bytes_sent`: response body bytes written;
* `reset()` zeroes everything; `snapshot()` returns a plain dict copy.
"""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.bytes_sent = 0
            self.by_route: Counter = Counter()
            self.by_status: Counter = Counter()

    def record(self, route: str, status: int) -> None:
        with self._lock:
            self.total += 1
            self.by_route[route] += 1
            self.by_status[status] += 1

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def __getitem__(self, route: str) -> int:
        with self._lock:
            return self.by_route.get(route, 0)

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": self.total, "bytes_sent": self.bytes_sent,
                    "by_route": dict(self.by_route), "by_status": dict(self.by_status)}

    def __repr__(self) -> str:
        return f"Counters(total={self.total}, bytes_sent={self.bytes_sent})"
