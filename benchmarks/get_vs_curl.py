"""`git annex get -J8` through git-annex-remote-xnat against parallel curl, same files, same server.

    python -m benchmarks.get_vs_curl [--files 1000] [--file-size 262144] [--jobs 8]

Starts the emulator (`files` preset), registers every file under its MD5E key with
`git annex fromkey --batch` + `registerurl --batch` (not timed), then times
1. `git annex get -J<jobs> .` in that dataset (git-annex verifies every MD5 after our remote did);
2. `curl --parallel --parallel-max <jobs>` fetching the same REST URLs (Basic auth from a netrc
   file, so no secret on a command line), one curl process for all files;
3. `xargs -P<jobs> curl`, one curl process per file (the naive shell loop).
and prints wall times and the ratio. Needs git-annex and curl on PATH.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from git_annex_remote_xnat.client import XnatClient
from git_annex_remote_xnat.credentials import Credential, env_var_names
from git_annex_remote_xnat.urls import file_url, rest_path
from xnat_emulator import Emulator


def sh(cmd: list[str], cwd: Path | None = None, input: str | None = None,
       env: dict | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, input=input, text=True, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


CPU: dict[str, float] = {}


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None,
          label: str = "") -> float:
    """Wall seconds of cmd; the CPU seconds of it and its children go to CPU[label]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    sh(cmd, cwd=cwd, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[label or cmd[0]] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--file-size", type=int, default=262144)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--floor", action="store_true",
                        help="also time the same keys from a git-annex directory remote")
    args = parser.parse_args()
    curl = shutil.which("curl") or "/usr/bin/curl"
    work = Path(tempfile.mkdtemp(prefix="get-vs-curl-"))
    env = dict(os.environ, HOME=str(work), GIT_CONFIG_NOSYSTEM="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    user_var, password_var = env_var_names("bench")
    env[user_var], env[password_var] = "admin", "admin-pass"
    (work / ".gitconfig").write_text("[user]\n\tname = bench\n\temail = bench@example.org\n")
    try:
        with Emulator(preset="files", files=args.files, file_size=args.file_size) as emu:
            with XnatClient(emu.url, Credential("bench", "admin", "admin-pass")) as client:
                project = next(p.id for p in client.projects())
                start = time.perf_counter()
                records = [r for r in client.iter_files(project) if r.md5]
                enumerate_s = time.perf_counter() - start
            repo = work / "ds"
            sh(["git", "init", "-q", str(repo)], env=env)
            sh(["git", "annex", "init", "-q"], cwd=repo, env=env)
            sh(["git", "annex", "initremote", "xnat", "type=external", "externaltype=xnat",
                f"url={emu.url}", "credential=bench", "encryption=none"], cwd=repo, env=env)
            lines_key, lines_url, urls = [], [], []
            for n, r in enumerate(records):
                ext = "." + r.path.rsplit(".", 1)[-1] if "." in r.path else ""
                key = f"MD5E-s{r.size}--{r.md5}{ext if len(ext) <= 5 else ''}"
                url = file_url(emu.url, r)
                lines_key.append(f"{key} f{n:06d}{ext}\n")
                lines_url.append(f"{key} {url}\n")
                urls.append(emu.url + rest_path(url, emu.url))
            sh(["git", "annex", "fromkey", "--force", "--batch"], cwd=repo, env=env,
               input="".join(lines_key))
            sh(["git", "annex", "registerurl", "--batch", "--remote=xnat"], cwd=repo, env=env,
               input="".join(lines_url))
            sh(["git", "commit", "-q", "-m", "register"], cwd=repo, env=env)

            get_s = timed(["git", "annex", "get", f"-J{args.jobs}", "-q", "."], cwd=repo, env=env,
                          label="get")
            floor_s = None
            if args.floor:
                # git-annex's own per-key cost: the same keys from a local directory remote
                (work / "dirremote").mkdir(exist_ok=True)
                sh(["git", "annex", "initremote", "dir", "type=directory",
                    f"directory={work / 'dirremote'}", "encryption=none"], cwd=repo, env=env)
                sh(["git", "annex", "copy", "-J4", "-q", "--to", "dir", "."], cwd=repo, env=env)
                sh(["git", "annex", "drop", "-q", "--force", "."], cwd=repo, env=env)
                floor_s = timed(["git", "annex", "get", f"-J{args.jobs}", "-q", "--from", "dir",
                                 "."], cwd=repo, env=env, label="floor")

            host = emu.url.split("//", 1)[1].split(":")[0]
            netrc = work / "netrc"
            netrc.write_text(f"machine {host} login admin password admin-pass\n")
            netrc.chmod(0o600)
            out_dir = work / "curl"
            out_dir.mkdir()
            config = work / "curl.cfg"
            config.write_text("".join(f'url = "{u}"\noutput = "{out_dir}/c{n:06d}"\n'
                                      for n, u in enumerate(urls)))
            curl_parallel_s = timed([curl, "-s", "-f", "--netrc-file", str(netrc), "--parallel",
                                     "--parallel-max", str(args.jobs), "-K", str(config)], env=env,
                                    label="curl")
            out_dir2 = work / "curl2"
            out_dir2.mkdir()
            listing = work / "urls.txt"
            listing.write_text("".join(f"x{n:06d} {u}\n" for n, u in enumerate(urls)))
            start = time.perf_counter()
            subprocess.run(
                ["xargs", "-P", str(args.jobs), "-n", "2", "sh", "-c",
                 f'{curl} -s -f --netrc-file {netrc} -o "{out_dir2}/$1" "$2"', "_"],
                stdin=listing.open(), check=True, env=env)
            curl_xargs_s = time.perf_counter() - start
            got = sum(1 for p in out_dir.iterdir() if p.stat().st_size == args.file_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_mib = len(records) * args.file_size / 2**20
    print(f"files: {len(records)} x {args.file_size} B = {total_mib:.0f} MiB, jobs {args.jobs}")
    print(f"enumerate (XnatClient.iter_files):            {enumerate_s:7.2f} s")
    print(f"git annex get -J{args.jobs} (git-annex-remote-xnat): {get_s:7.2f} s "
          f"(CPU {CPU['get']:.1f} s, all processes)")
    if floor_s is not None:
        print(f"git annex get -J{args.jobs} from a directory remote: {floor_s:7.2f} s "
              f"(CPU {CPU['floor']:.1f} s): git-annex's own per-key floor")
    print(f"curl --parallel --parallel-max {args.jobs}:           {curl_parallel_s:7.2f} s "
          f"(CPU {CPU['curl']:.1f} s; {got} complete files)")
    print(f"xargs -P{args.jobs} curl (one process per file):   {curl_xargs_s:7.2f} s")
    print(f"ratio get / curl --parallel: {get_s / curl_parallel_s:.2f}; "
          f"get / xargs curl: {get_s / curl_xargs_s:.2f}")


if __name__ == "__main__":
    main()
