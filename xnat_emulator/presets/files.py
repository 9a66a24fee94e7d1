"""The `files` preset: one project `BENCH` of exactly N files, for benchmarks.

Shape (derived arithmetically; nothing per file is held in memory):

```
BENCH (public; alice is a member)
  subjects  BENCH_S0001 ... (IDs XNAT_S00001 ...), 2 sessions each
    sessions  <subject>_MR1, <subject>_MR2 (xnat:mrSessionData, IDs XNAT_E00001 ...)
      scans   2 (T1w), 3 (T2w), 4 (bold); each with one DICOM resource of up to 150 files
              named <StudyUID>-<series>-<instance>-<hash>.dcm, `file_size` bytes each
```
* N = `files` (default 10,000): scans are filled in order with 150 files each, so a session
  holds 450 files and N=100,000 gives 223 sessions (112 subjects), N=1,000,000 gives 2,223.
  The last session may have fewer scans/files.
* `file_size` defaults to 4096 bytes.
* Files whose global index i satisfies i % 10007 == 5003 publish no digest (`digest: ""`):
  about one in ten thousand (10 of 100,000).
* No session, subject or project resources: every file is a scan file, so
  `/data/experiments/{E}/scans/ALL/files` enumerates the project one session at a time.
"""

from __future__ import annotations

from ..model import DicomSeries, Project, Site
from .common import BASE_MTIME, scanner_kw, study_uid

FILES_PER_SCAN = 150
SCANS = (("2", "T1w", "T1w MPRAGE"), ("3", "T2w", "T2w SPACE"), ("4", "bold", "BOLD rest"))
SESSIONS_PER_SUBJECT = 2
DEFAULT_FILES = 10_000
DEFAULT_SIZE = 4096
NO_DIGEST_MOD = 10007
NO_DIGEST_REM = 5003


def build(seed: int = 0, files: int | None = None, file_size: int | None = None) -> Site:
    n_files = DEFAULT_FILES if files is None else int(files)
    size = DEFAULT_SIZE if file_size is None else int(file_size)
    site = Site(seed)
    proj = site.add_project(Project(
        "BENCH", name="Benchmark project", description=f"{n_files} generated DICOM files",
        accessibility="public", pi_firstname="Bench", pi_lastname="Mark",
        members={"alice": "member", "admin": "owner"}, insert_date="2024-01-02 09:00:00.000"))
    per_session = FILES_PER_SCAN * len(SCANS)
    n_sessions = -(-n_files // per_session) if n_files > 0 else 0
    done = 0
    subj = None
    for k in range(n_sessions):
        if k % SESSIONS_PER_SUBJECT == 0:
            subj = site.add_subject(proj, f"BENCH_S{k // SESSIONS_PER_SUBJECT + 1:04d}",
                                    insert_date="2024-01-10 08:00:00.000")
        day = 1 + k % 28
        month = 1 + (k // 28) % 12
        exp = site.add_session(subj, f"{subj.labels[proj.id]}_MR{k % SESSIONS_PER_SUBJECT + 1}",
                               date=f"2023-{month:02d}-{day:02d}", time_="09:00:00",
                               insert_date=f"2024-01-10 10:{k % 60:02d}:00.000", **scanner_kw())
        uid = study_uid(site, exp.id)
        for scan_id, typ, desc in SCANS:
            count = min(FILES_PER_SCAN, n_files - done)
            if count <= 0:
                break
            sc = site.add_scan(exp, scan_id, type=typ, series_description=desc, frames=count)
            offset = done

            def no_digest(i: int, offset: int = offset) -> bool:
                return (offset + i) % NO_DIGEST_MOD == NO_DIGEST_REM
            src = DicomSeries(site.filler, f"{seed}/{exp.id}/{scan_id}/DICOM", uid,
                              int(scan_id), count, size, BASE_MTIME, no_digest=no_digest)
            sc.add_resource(site.resource("DICOM", "scans", fmt="DICOM", content="RAW",
                                          cat_id=scan_id, cat_desc=typ, source=src))
            done += count
    return site
