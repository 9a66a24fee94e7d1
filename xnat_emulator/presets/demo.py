"""The `demo` preset: a realistic-looking project `DEMO` (800 files, about 13 MB).

```
DEMO (public; alice is a member)   project resource `protocol`: README.txt, scanner/settings.json
  XNAT_S00001 DEMO_001 .. XNAT_S00003 DEMO_003; DEMO_001 and DEMO_002 have two sessions
    <subject>_MR1 / _MR2 (xnat:mrSessionData, SIEMENS Prisma_fit 3T)
      scan 1       localizer      DICOM (12 files)
      scan 2       T1w            DICOM (40), NIFTI (<label>_2_T1w.nii.gz + .json), SNAPSHOTS
      scan 3       T2w            DICOM (32), NIFTI, SNAPSHOTS
      scan BOLD_1  bold           DICOM (30), NIFTI, SNAPSHOTS
      scan 5       dwi            DICOM (24), NIFTI, SNAPSHOTS
      session resource BIDS: sub-01/anat/sub-01_T1w.nii.gz, sub-01/anat/sub-01_T1w.json,
                             sub-01/func/sub-01_task-rest_bold.nii.gz, ..._bold.json,
                             dataset_description.json
  (sub-01 for DEMO_001, sub-02 for DEMO_002, sub-03 for DEMO_003)
  Sessions are XNAT_E00001..XNAT_E00005 in that order. DEMO_001 has a subject resource
  `notes` (intake notes.txt); DEMO_001_MR1 has an assessor DEMO_001_MR1_QC (XNAT_E00006)
  with an out resource QC.
```
DICOM files are named `<StudyUID>-<series>-<instance>-<hash>.dcm`, 16 KiB each (or
`file_size`); SNAPSHOTS are `<E>_<SC>_qc.gif` (ORIGINAL) and `<E>_<SC>_qc_t.gif` (THUMBNAIL).
The .json sidecars of DEMO_003 publish no digest. `files` is ignored.
"""

from __future__ import annotations

import json

from ..model import FileEntry, Project, Site, text_blob
from .common import (BASE_MTIME, add_dicom, add_nifti, add_snapshots, bids_files,
                     readme_project, scanner_kw)

SCANS = (("1", "localizer", "AAHead_Scout", 12, False),
         ("2", "T1w", "T1w MPRAGE 0.8mm", 40, True),
         ("3", "T2w", "T2w SPACE 0.8mm", 32, True),
         ("BOLD_1", "bold", "rfMRI REST AP", 30, True),
         ("5", "dwi", "dMRI dir98 AP", 24, True))


def build(seed: int = 0, files: int | None = None, file_size: int | None = None) -> Site:
    size = 16384 if file_size is None else int(file_size)
    site = Site(seed)
    demo = site.add_project(Project(
        "DEMO", name="Demo imaging study", description="A small MR study to try the tools on",
        accessibility="public", pi_firstname="Marie", pi_lastname="Curie",
        members={"alice": "member", "admin": "owner"}, insert_date="2024-01-02 09:00:00.000"))
    readme_project(site, demo, "DEMO study protocol\n===================\n\n"
                               "Per session: localizer, T1w, T2w, resting-state BOLD, DWI.\n")
    plan = (("001", 2), ("002", 2), ("003", 1))
    for n, (num, n_sessions) in enumerate(plan, start=1):
        subj = site.add_subject(demo, f"DEMO_{num}", insert_date=f"2024-02-0{n} 08:00:00.000",
                                gender=("female", "male", "female")[n - 1], yob=str(1975 + 7 * n))
        for k in range(1, n_sessions + 1):
            day = 10 * k + n
            exp = site.add_session(subj, f"DEMO_{num}_MR{k}", date=f"2024-02-{day:02d}",
                                   time_="14:05:00", insert_date=f"2024-02-{day:02d} 17:20:00.000",
                                   uid=f"1.2.826.0.1.3680043.8.498.{seed}.{n}.{k}", **scanner_kw())
            for scan_id, typ, desc, ndcm, derived in SCANS:
                sc = site.add_scan(exp, scan_id, type=typ, series_description=desc, frames=ndcm)
                add_dicom(site, sc, ndcm, size=size)
                if derived:
                    add_nifti(site, sc, json_digest="" if num == "003" else True,
                              size=max(2048, size * ndcm // 8))
                    add_snapshots(site, sc)
            exp.add_resource(site.resource("BIDS", "resources", fmt="BIDS",
                                           files=bids_files(site, exp, f"{n:02d}")))
            if n == 1 and k == 1:
                first = exp
        if n == 1:
            subj.add_resource(site.resource("notes", "resources", fmt="TXT", files=[
                FileEntry("intake notes.txt", text_blob("DEMO_001 intake notes.\n"), fmt="TXT",
                          mtime=BASE_MTIME)]))
    qc = site.add_assessor(first, f"{first.label}_QC", date=first.date,
                           insert_date=first.insert_date)
    qc.add_resource(site.resource("QC", "assessors", fmt="TXT", files=[
        FileEntry("qc_report.txt", text_blob(f"QC passed for {first.label}.\n"),
                  fmt="TXT", mtime=BASE_MTIME),
        FileEntry("metrics/metrics.json", text_blob(json.dumps(
            {"snr": 38.2, "motion_mm": 0.17}) + "\n"), fmt="JSON", mtime=BASE_MTIME)]))
    return site
