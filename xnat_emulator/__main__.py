"""Command line: `python -m xnat_emulator` / `xnat-emulator`.

Prints the URL (one line, `http://127.0.0.1:PORT`) on stdout and serves until killed.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .presets import PRESETS


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="xnat-emulator", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    ap.add_argument("--preset", choices=PRESETS, default="small")
    ap.add_argument("--demo", action="store_const", const="demo", dest="preset",
                    help="shorthand for --preset demo")
    ap.add_argument("--files", type=int, default=None, help="number of files (preset files)")
    ap.add_argument("--file-size", type=int, default=None, help="bytes per generated file")
    ap.add_argument("--seed", type=int, default=0)
    login = ap.add_mutually_exclusive_group()
    login.add_argument("--require-login", dest="require_login", action="store_true",
                       default=False, help="closed site: no guest access")
    login.add_argument("--open", dest="require_login", action="store_false",
                       help="open site: anonymous requests run as guest (the default)")
    ap.add_argument("--session-timeout", type=float, default=900.0, help="idle seconds")
    ap.add_argument("--context-path", default="", help='serve under a path, e.g. "/xnat"')
    ap.add_argument("--honor-range", action="store_true",
                    help="answer Range requests with 206 (XNAT itself ignores Range)")
    ap.add_argument("--max-sessions-per-user", type=int, default=0,
                    help="refuse logins beyond this many live sessions (0 = no cap)")
    ap.add_argument("--no-checksums", dest="checksums", action="store_false",
                    help="a site with checksums off: every listed digest is empty")
    ap.add_argument("--legacy", dest="version_mode", action="store_const", const="legacy",
                    default="modern", help="answer like XNAT 1.6 (/data/version, old tokens)")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    f = ap.add_argument_group("faults")
    f.add_argument("--error-rate", type=float, default=0.0)
    f.add_argument("--error-status", type=int, default=503)
    f.add_argument("--fail-every-nth-download", type=int, default=0)
    f.add_argument("--truncate-downloads", type=float, default=0.0,
                   help="probability (1 = every download)")
    f.add_argument("--corrupt-downloads", type=float, default=0.0,
                   help="probability (1 = every download)")
    f.add_argument("--delay", type=float, default=0.0, help="seconds added per response")
    f.add_argument("--listing-delay", type=float, default=0.0,
                   help="seconds added per response that is not a file download")
    f.add_argument("--download-rate", type=int, default=0,
                   help="bytes per second for file bodies (0 = unlimited)")
    f.add_argument("--expire-sessions-after", type=int, default=0,
                   help="a JSESSION dies after this many requests")
    f.add_argument("--drop-digests", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .emulator import Emulator
    emu = Emulator(args.preset, seed=args.seed, files=args.files, file_size=args.file_size,
                   require_login=args.require_login,
                   session_timeout=args.session_timeout, host=args.host, port=args.port,
                   context_path=args.context_path, honor_range=args.honor_range,
                   max_sessions_per_user=args.max_sessions_per_user,
                   checksums=args.checksums, version_mode=args.version_mode,
                   verbose=args.verbose,
                   error_rate=args.error_rate, error_status=args.error_status,
                   fail_every_nth_download=args.fail_every_nth_download,
                   truncate_downloads=args.truncate_downloads,
                   corrupt_downloads=args.corrupt_downloads, delay=args.delay,
                   listing_delay=args.listing_delay,
                   download_rate=args.download_rate,
                   expire_sessions_after=args.expire_sessions_after,
                   drop_digests=args.drop_digests)
    from .server import make_server
    emu._server = make_server(emu.app, emu.host, emu.port)
    emu.port = emu._server.server_address[1]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(emu.url, flush=True)
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
