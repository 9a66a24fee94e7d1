"""Scenario 2: REST requests to enumerate each preset (the emulator's counters).

Counts every request the emulator answered during one run, split into listing/auth requests and
per-file requests (GET/HEAD of a file). Ours: one `xnat-update --reckless fast` (reused from
scenario 1 when it ran). datalad-xnat: its own listing code (`_XNAT` + `parse_xnat`, the loop of
its update without `addurls`) at every size, plus the per-file requests of its full update measured
at the sample size. Target: about one request per session plus a handful.
"""

from __future__ import annotations

import time

from ..context import Context
from ..emulator import EmulatorProcess
from ..results import Figure, Ratio, Section, now
from . import _runs


def _is_file_route(route: str) -> bool:
    method, _, path = route.partition(" ")
    return "/files/" in path and method in ("GET", "HEAD") and not path.endswith("/files")


def _is_archive_route(route: str) -> bool:
    """A zip or tar of a files listing (`.../files?format=zip`): content, not a listing."""
    return "/files?format=" in route


def split(counters: dict | None) -> tuple[int, int, dict] | None:
    """(listing+auth requests, per-file requests, by_route) from a counters snapshot; archive
    downloads are in neither count (only by_route has them)."""
    if not counters or "by_route" not in counters:
        return None
    routes = counters["by_route"]
    per_file = sum(v for k, v in routes.items() if _is_file_route(k))
    archives = sum(v for k, v in routes.items() if _is_archive_route(k))
    return sum(routes.values()) - per_file - archives, per_file, routes


def _sessions(ctx: Context, n: int, peer_routes: dict | None) -> tuple[int, str]:
    """How many sessions the preset has, and how that is known."""
    table = ctx.shared.get("tables", {}).get((n, ctx.sizes.register_file_size))
    if table:
        return len({r.session_id for r in table}), "sessions in the listing"
    if peer_routes:
        count = peer_routes.get("GET /data/experiments/{E}/scans/{SC}/files", 0)
        if count:
            return count, "datalad-xnat's per-session listings"
    return -(-n // 450), "the preset's 450 files per session"


def run(ctx: Context, selected: set) -> Section:
    sec = Section("requests", "2. REST requests to enumerate a project", started=now())
    t0 = time.perf_counter()
    shared = ctx.shared.setdefault("requests", {})
    for n in ctx.sizes.register:
        entry = shared.setdefault(n, {})
        need_ours = "ours" not in entry and not ctx.ours_reason
        need_peer = "peer-listing" not in entry and not ctx.peer_reason
        if need_ours or need_peer:
            with EmulatorProcess(n, ctx.sizes.register_file_size) as emu:
                if need_ours:
                    res = _runs.ours_update(ctx, emu, n, f"requests-ours-{n}", reckless_fast=True)
                    entry["ours"] = res.counters if not res.error else {"error": res.error}
                if need_peer:
                    res = _runs.peer_enumerate(ctx, emu, n, f"requests-peer-listing-{n}")
                    entry["peer-listing"] = res.counters if not res.error else {"error": res.error}
                    entry["peer-listing-wall"] = res.wall
        case = f"{n:,} files"
        peer_parts = split(entry.get("peer-listing"))
        sessions, how = _sessions(ctx, n, peer_parts[2] if peer_parts else None)
        for key, tool in (("ours", "ours: xnat-update --reckless fast"),
                          ("peer-listing", "datalad-xnat 0.2.1: its listing (update loop "
                                           "without addurls)")):
            fig_total = sec.add(Figure(case, tool, "listing + auth requests", "requests"))
            if key == "ours" and ctx.ours_reason:
                fig_total.error = f"not run: {ctx.ours_reason}"
                continue
            if key != "ours" and ctx.peer_reason:
                fig_total.error = f"not run: {ctx.peer_reason}"
                continue
            counts = entry.get(key) or {}
            parts = split(counts)
            if parts is None:
                fig_total.error = counts.get("error") or "failed: no counters from the emulator"
                continue
            listing, per_file, routes = parts
            fig_total.runs = [listing]
            fig_total.extra = {"by_route": routes}
            fig_total.note = (f"{sessions:,} sessions ({how}); "
                              + ", ".join(f"{k}: {v:,}" for k, v in sorted(routes.items())
                                          if not _is_file_route(k)))[:400]
            if key == "ours":
                fig_file = sec.add(Figure(case, tool, "per-file requests", "requests",
                                          runs=[per_file]))
                fig_file.note = "HEAD/GET of single files during the update"
                if sessions:
                    sec.ratios.append(Ratio(
                        case, "ours: listing + auth requests per session", listing / sessions,
                        "≈ 1 per session + a handful (≤ sessions + 10)", listing <= sessions + 10,
                        note=f"{listing:,} requests for {sessions:,} sessions "
                             f"(= sessions {listing - sessions:+,})"))
            elif entry.get("peer-listing-wall"):
                fig_total.note = f"listing took {entry['peer-listing-wall']:.1f} s; " + fig_total.note
    # the peer's per-file requests, from its full update at the sample size
    sample = ctx.sizes.peer_sample
    full = shared.get(sample, {}).get("peer-update")
    parts = split(full)
    if parts:
        listing, per_file, routes = parts
        fig = sec.add(Figure(f"{sample:,} files", "datalad-xnat 0.2.1: xnat-update --reckless fast",
                             "all requests", "requests", runs=[listing + per_file]))
        fig.note = (f"{per_file:,} per-file requests ({per_file / sample:.2f} per file); "
                    + ", ".join(f"{k}: {v:,}" for k, v in sorted(routes.items())))[:500]
        fig.extra = {"by_route": routes}
    # datalad-xnat's whole update at each size: its measured listing plus its measured per-file
    # requests per file (from the sample run) times N
    if parts:
        per_file_ratio = per_file / sample
        for n in ctx.sizes.register:
            lparts = split(shared.get(n, {}).get("peer-listing"))
            if lparts is None:
                continue
            total = lparts[0] + per_file_ratio * n
            sec.add(Figure(f"{n:,} files", "datalad-xnat 0.2.1: xnat-update --reckless fast "
                           "(derived)", "all requests", "requests", runs=[round(total)],
                           note=f"its listing at this size ({lparts[0]:,}) + {per_file_ratio:.2f} "
                                f"requests per file as measured at {sample:,} files"))
    sec.notes.append("Routes are the emulator's route templates; 'listing + auth' is everything "
                     "except single-file GET/HEAD.")
    sec.seconds = time.perf_counter() - t0
    return sec
