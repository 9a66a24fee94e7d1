"""The `small` preset: a fixed, fast test fixture (~90 files of 1-4 KiB).

Site id `XNAT`. Users: admin/admin-pass (site admin), alice/alice-pass (member of PUBLIC1 and
PROT1), bob/bob-pass (owner of PRIV1).

```
PUBLIC1 (public)             project resource `protocol`: README.txt, scanner/settings.json
  XNAT_S00001 SUBJ01         subject resource `notes`: intake.txt
    XNAT_E00001 SUBJ01_MR1   xnat:mrSessionData, 2024-01-15
      scan 1      Localizer  DICOM (3 files)
      scan 2      T1w        DICOM (5), NIFTI (.nii.gz + .json), SNAPSHOTS (_qc.gif, _qc_t.gif)
      scan 501    DTI        DICOM (4), NIFTI, SNAPSHOTS
      scan BOLD_1 bold       DICOM (6), NIFTI, SNAPSHOTS,
                             MAT: "bold xfm+run #1.mat" (space, plus, hash in the name)
                                  "motion.par"          (digest "": the file without digest)
      session resource BIDS: sub-01/anat/sub-01_T1w.nii.gz, sub-01/anat/sub-01_T1w.json,
                             sub-01/func/sub-01_task-rest_bold.nii.gz, ..._bold.json,
                             dataset_description.json
      assessor XNAT_E00003 SUBJ01_MR1_QC (xnat:qcAssessmentData), out resource QC:
                             qc_report.txt, metrics/metrics.json
  XNAT_S00002 SUBJ02
    XNAT_E00002 SUBJ02_MR1   scans 1, 2, 501, BOLD_1 as above (no MAT), BIDS sub-02/...
SHARED2 (public)
  XNAT_S00003 SH2_01 -> XNAT_E00004 SH2_01_MR1, scan 1 T1w DICOM (3)
  XNAT_S00001 shared in as label SHR_SUBJ01; XNAT_E00001 shared in as SHR_SUBJ01_MR1
PROT1 (protected; alice is a member)
  XNAT_S00004 PROT_01 -> XNAT_E00005 PROT_01_MR1, scan 1 T1w DICOM (3)
PRIV1 (private; bob is the owner)
  XNAT_S00005 PRIV_01 -> XNAT_E00006 PRIV_01_MR1, scan 1 T1w DICOM (3)
```
IDs follow creation order (the assessor takes XNAT_E00003).
`files`/`file_size` are ignored.
"""

from __future__ import annotations

import json

from ..model import FileEntry, Project, Site, text_blob
from .common import (BASE_MTIME, add_dicom, add_nifti, add_snapshots, bids_files,
                     readme_project, scanner_kw, vsize)


def build(seed: int = 0, files: int | None = None, file_size: int | None = None) -> Site:
    site = Site(seed)
    public = site.add_project(Project(
        "PUBLIC1", name="Public test project", description="Open data for tests",
        accessibility="public", pi_firstname="Ada", pi_lastname="Lovelace",
        members={"alice": "member", "admin": "owner"}, insert_date="2024-01-02 09:00:00.000"))
    shared = site.add_project(Project(
        "SHARED2", name="Shared test project", description="Holds a subject shared from PUBLIC1",
        accessibility="public", pi_firstname="Alan", pi_lastname="Turing",
        members={"admin": "owner"}, insert_date="2024-01-03 09:00:00.000"))
    prot = site.add_project(Project(
        "PROT1", name="Protected test project", description="Visible, but data only to members",
        accessibility="protected", pi_firstname="Grace", pi_lastname="Hopper",
        members={"alice": "member", "admin": "owner"}, insert_date="2024-01-04 09:00:00.000"))
    priv = site.add_project(Project(
        "PRIV1", name="Private test project", description="Bob's private project",
        accessibility="private", pi_firstname="Bob", pi_lastname="Builder",
        members={"bob": "owner"}, insert_date="2024-01-05 09:00:00.000"))

    readme_project(site, public, "PUBLIC1 protocol\n================\n\nT1w, DTI and resting-state BOLD.\n")

    sessions = []
    for n, (sub, day) in enumerate((("01", "15"), ("02", "16")), start=1):
        subj = site.add_subject(public, f"SUBJ{sub}", insert_date=f"2024-01-{day} 08:00:00.000",
                                gender="female" if n == 1 else "male", yob=str(1980 + n))
        exp = site.add_session(subj, f"SUBJ{sub}_MR1", date=f"2024-01-{day}", time_="09:30:00",
                               insert_date=f"2024-01-{day} 11:33:11.835",
                               uid=f"1.2.826.0.1.3680043.8.498.{seed}{n}", **scanner_kw())
        sessions.append(exp)
        sc = site.add_scan(exp, "1", type="Localizer", series_description="localizer", frames=3)
        add_dicom(site, sc, 3)
        for scan_id, typ, desc, ndcm in (("2", "T1w", "T1w MPRAGE", 5),
                                         ("501", "DTI", "DTI 64 directions", 4),
                                         ("BOLD_1", "bold", "BOLD resting state", 6)):
            sc = site.add_scan(exp, scan_id, type=typ, series_description=desc, frames=ndcm)
            add_dicom(site, sc, ndcm)
            add_nifti(site, sc)
            add_snapshots(site, sc)
            if n == 1 and scan_id == "BOLD_1":
                ident = f"{seed}/{exp.id}/BOLD_1/MAT"
                mat = [
                    FileEntry("bold xfm+run #1.mat",
                              site.gen(ident + "/xfm", "bold xfm+run #1.mat", 405),
                              mtime=BASE_MTIME),
                    FileEntry("motion.par", site.gen(ident + "/par", "motion.par",
                                                     vsize(ident + "/par")),
                              digest="", mtime=BASE_MTIME),
                ]
                sc.add_resource(site.resource("MAT", "scans", fmt="MAT", cat_id=sc.id,
                                              cat_desc=sc.type, files=mat))
        exp.add_resource(site.resource("BIDS", "resources", fmt="BIDS",
                                       files=bids_files(site, exp, sub)))
        if n == 1:
            subj.add_resource(site.resource("notes", "resources", fmt="TXT", files=[
                FileEntry("intake.txt", text_blob("Subject SUBJ01 intake notes.\n"),
                          fmt="TXT", mtime=BASE_MTIME)]))
    exp = sessions[0]
    qc = site.add_assessor(exp, "SUBJ01_MR1_QC", date="2024-01-15",
                           insert_date="2024-01-15 12:00:00.000")
    qc.add_resource(site.resource("QC", "assessors", fmt="TXT", files=[
        FileEntry("qc_report.txt", text_blob("QC passed for SUBJ01_MR1.\n"),
                  fmt="TXT", mtime=BASE_MTIME),
        FileEntry("metrics/metrics.json", text_blob(json.dumps(
            {"snr": 41.7, "motion_mm": 0.21}) + "\n"), fmt="JSON", mtime=BASE_MTIME),
    ]))

    def tiny(project: Project, label: str, day: str) -> None:
        subj = site.add_subject(project, label, insert_date=f"2024-01-{day} 08:00:00.000")
        exp = site.add_session(subj, f"{label}_MR1", date=f"2024-01-{day}", time_="10:00:00",
                               insert_date=f"2024-01-{day} 11:00:00.000", **scanner_kw())
        sc = site.add_scan(exp, "1", type="T1w", series_description="T1w MPRAGE", frames=3)
        add_dicom(site, sc, 3)

    tiny(shared, "SH2_01", "20")
    tiny(prot, "PROT_01", "21")
    tiny(priv, "PRIV_01", "22")
    site.share_subject(site.subjects["XNAT_S00001"], shared, "SHR_SUBJ01")
    site.share_experiment(site.experiments["XNAT_E00001"], shared, "SHR_SUBJ01_MR1")
    return site
