"""The emulator in its own process, controlled over stdin/stdout (run by benchmarks.emulator).

    python -m benchmarks.emuserver --files N --file-size B [--delay S] [--download-rate B]

starts `xnat_emulator.Emulator(preset="files", ...)`, prints one JSON line `{"url": ..., "users": ...}`
and then answers one JSON line per command read from stdin:

    counters   -> {"total": n, "by_route": {...}}
    reset      -> {"ok": true}
    stop       -> {"ok": true}, then exit (EOF on stdin does the same)

It runs in a separate process so that the server's CPU time and memory are never counted with
the tool under test; the control channel only exists because the request counters live in the
emulator's memory.
"""

from __future__ import annotations

import argparse
import json
import sys


def _counters(emu) -> dict:
    counters = emu.counters
    if hasattr(counters, "snapshot"):
        snap = counters.snapshot()
        return json.loads(json.dumps(snap, default=str))
    by_route = getattr(counters, "by_route", {}) or {}
    return {"total": int(getattr(counters, "total", 0)),
            "by_route": {str(k): int(v) for k, v in dict(by_route).items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, required=True)
    parser.add_argument("--file-size", type=int, default=1024)
    parser.add_argument("--port", type=int, default=0)
    # faults of xnat_emulator (see xnat_emulator/faults.py), as its own CLI names them
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added per response")
    parser.add_argument("--download-rate", type=int, default=0,
                        help="bytes per second for file bodies (0 = unlimited)")
    args = parser.parse_args(argv)

    from xnat_emulator import Emulator  # noqa: PLC0415 (import cost stays out of the parent)

    kwargs = dict(preset="files", files=args.files, file_size=args.file_size, require_login=True)
    if args.port:
        kwargs["port"] = args.port
    if args.delay:
        kwargs["delay"] = args.delay
    if args.download_rate:
        kwargs["download_rate"] = args.download_rate
    emu = Emulator(**kwargs)
    emu.start()
    out = sys.stdout
    out.write(json.dumps({"url": emu.url, "users": dict(getattr(emu, "users", {}))}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "counters":
                reply = _counters(emu)
            elif cmd == "reset":
                emu.counters.reset()
                reply = {"ok": True}
            elif cmd == "stop":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                break
            else:
                reply = {"error": f"unknown command {cmd!r}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
