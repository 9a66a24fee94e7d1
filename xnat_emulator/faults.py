"""Fault injection. `Emulator.faults` is one `Faults` object; the server reads it per request.

Attributes (plain, set them at any time; `clear()` restores the defaults):

* `error_rate` (float 0..1): answer this fraction of requests with `error_status` (random but
  deterministic: the RNG is seeded with `seed` and reseeded by `clear()`).
* `error_status` (int, default 503).
* `fail_every_nth_download` (int, 0 = off): every Nth file GET answers 500.
* `truncate_downloads` (bool or float 0..1): file GETs send the full Content-Length, then about
  half the body, then close the connection. A float is the probability per download.
* `corrupt_downloads` (bool or float 0..1): file GETs send the right length but wrong bytes.
* `delay` (float seconds): added before every response.
* `listing_delay` (float seconds): added before every response except single-file downloads
  (a server whose listings are slow: catalogs read per request).
* `download_rate` (bytes per second, 0 = unlimited): file bodies are sent at this rate (a slow
  body, for timeouts and progress reporting).
* `expire_sessions_after` (int, 0 = off): a JSESSION dies after that many requests made with it.
* `drop_digests` (bool): file listings show `digest: ""` for every file.
* `login_page_instead_of_401` (bool): unauthenticated requests get 200 + the HTML login page
  (what a misconfigured proxy or an old XNAT does), instead of 401.
* `silent` (False, True or "downloads"): requests (only single-file GETs and HEADs with
  "downloads") are read and never answered, until the fault is cleared (then the connection
  closes unanswered): a server that accepts connections and has stopped working.
* `redirect_to` (str, "" = off): every request is answered 302 with `Location:` this base URL
  (e.g. another server's "http://host:port") followed by the path and query asked for.
* `endless_downloads` (False, True or int bytes): file GETs answer 200 without a Content-Length
  (chunked) and a body of that many bytes, or one that never ends, whatever the file's size
  (a server or proxy that streams the wrong thing).
* `wrong_content_length` (int bytes, 0 = off): file GETs announce a Content-Length this much
  larger than the file, send the file and close the connection.
* `endless_listings` (bool or int bytes): every ResultSet listing answers a valid beginning of
  JSON and rows that never end (or end, unfinished, after that many bytes).
* `endless_login` (bool or int bytes): `POST /data/JSESSION` answers its session id followed by
  a body that never ends (or that many bytes).
* `endless_errors` (bool or int bytes): every 5xx answer (of `error_rate`,
  `fail_every_nth_download` or the emulator itself) is an HTML status page that never ends (or
  ends after that many bytes), sent chunked: a proxy's error page gone wrong.
* `corrupt_archives` (bool or float 0..1, the probability per archive): zip and tar downloads
  (`format=zip|tar|tar.gz` of a files listing, or of one file) carry altered bytes in one
  member's data (the second member with content, else the first) while its CRC-32 and sizes
  are those of the true content: a zip reader sees a CRC mismatch for that member, and any
  reader an MD5 mismatch. Single-file downloads are unchanged.
* `truncate_archives` (bool, float 0..1 or int bytes): zip and tar downloads stop after about
  half of their bytes (True, or a float: the probability per archive) or after that many bytes
  (an int; an archive shorter than that is sent whole), in the middle of a chunk, and the
  connection closes without the chunked terminator: a broken connection. Single-file
  downloads are unchanged.
* `refuse_archives` (int status, 0 = off): zip and tar downloads answer that status (a 5xx:
  an XNAT whose archive service fails, e.g. out of temporary space) while everything else works.
"""

from __future__ import annotations

import random
import threading
from typing import Iterator

DEFAULTS = {
    "error_rate": 0.0,
    "error_status": 503,
    "fail_every_nth_download": 0,
    "truncate_downloads": False,
    "corrupt_downloads": False,
    "delay": 0.0,
    "listing_delay": 0.0,
    "download_rate": 0,
    "expire_sessions_after": 0,
    "drop_digests": False,
    "login_page_instead_of_401": False,
    "redirect_to": "",
    "silent": False,
    "endless_downloads": False,
    "wrong_content_length": 0,
    "endless_listings": False,
    "endless_login": False,
    "endless_errors": False,
    "corrupt_archives": False,
    "truncate_archives": False,
    "refuse_archives": 0,
}


class Faults:
    def __init__(self, seed: int = 0, **kwargs) -> None:
        self._lock = threading.Lock()
        self.seed = seed
        self.clear()
        for k, v in kwargs.items():
            if k not in DEFAULTS:
                raise TypeError(f"unknown fault {k!r}")
            setattr(self, k, v)

    def clear(self) -> None:
        """Switch every fault off and restart the RNG and the download counter."""
        for k, v in DEFAULTS.items():
            setattr(self, k, v)
        with self._lock:
            self._rng = random.Random(f"faults-{self.seed}")
            self.downloads = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in DEFAULTS}

    def __repr__(self) -> str:
        active = {k: v for k, v in self.as_dict().items() if v != DEFAULTS[k]}
        return f"Faults({active})"

    # -- decisions, called by the server ---------------------------------------------------
    def _chance(self, p) -> bool:
        if p is True:
            return True
        if not p:
            return False
        with self._lock:
            return self._rng.random() < float(p)

    def random_error(self) -> int | None:
        rate = self.error_rate
        if rate and self._chance(rate):
            return int(self.error_status)
        return None

    def silences(self, file_request: bool) -> bool:
        """Whether a request (`file_request`: of one file) is to go unanswered now."""
        silent = self.silent
        return silent is True or (silent == "downloads" and file_request)

    def download_fault(self) -> str | None:
        """Called once per file GET: None, "fail", "truncate" or "corrupt"."""
        with self._lock:
            self.downloads += 1
            n = self.downloads
        nth = self.fail_every_nth_download
        if nth and n % int(nth) == 0:
            return "fail"
        if self._chance(self.truncate_downloads):
            return "truncate"
        if self._chance(self.corrupt_downloads):
            return "corrupt"
        return None

    def archive_fault(self) -> tuple[bool, "str | int | None"]:
        """Called once per archive GET: (corrupt, truncate), truncate None, "half" or the
        number of bytes after which the archive stops."""
        corrupt = self._chance(self.corrupt_archives)
        t = self.truncate_archives
        if isinstance(t, bool) or isinstance(t, float):
            return corrupt, ("half" if self._chance(t) else None)
        if t and int(t) > 0:
            return corrupt, int(t)
        return corrupt, None


class Endless:
    """A body for the endless_* faults: `head`, then `unit` repeated, `limit` bytes in all
    (None: for ever). Sent chunked (`iter_bytes`), so the server holds one chunk at a time."""

    def __init__(self, head: bytes, unit: bytes, limit: "bool | int | None" = None) -> None:
        self.head = head
        self.unit = unit * max(1, (1 << 16) // max(1, len(unit)))
        self.limit = None if limit is True or limit is None else int(limit)

    def iter_bytes(self) -> Iterator[bytes]:
        sent = 0
        chunk = self.head
        while self.limit is None or sent < self.limit:
            if self.limit is not None:
                chunk = chunk[:self.limit - sent]
            if chunk:
                yield chunk
                sent += len(chunk)
            chunk = self.unit
