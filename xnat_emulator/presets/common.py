"""Building blocks shared by the presets: users, standard scans, sidecars, snapshots."""

from __future__ import annotations

import json
import zlib

from ..model import DicomSeries, Experiment, FileEntry, Project, Scan, Site, text_blob

# Base time of every generated file (2024-02-01T10:11:12Z); Last-Modified derives from it.
BASE_MTIME = 1706782272.0

USERS = {"admin": "admin-pass", "alice": "alice-pass", "bob": "bob-pass"}
ADMINS = {"admin"}


def vsize(ident: str, lo: int = 1024, hi: int = 4096) -> int:
    """A deterministic size in [lo, hi)."""
    return lo + zlib.crc32(ident.encode("utf-8")) % (hi - lo)


def study_uid(site: Site, exp_id: str) -> str:
    n = zlib.crc32(f"{site.seed}/{exp_id}".encode()) % 10**9
    return f"1.3.12.2.1107.5.2.43.{67050 + site.seed % 1000}.{30000024010000000000000 + n}"


def add_dicom(site: Site, scan: Scan, count: int, size: int | None = None,
              no_digest=None) -> None:
    exp = scan.session
    ident = f"{exp.id}/{scan.id}/DICOM"
    if size is None:
        size = vsize(ident)
    series = scan.xnat_id % 1000 if not scan.id.isdigit() else int(scan.id)
    src = DicomSeries(site.filler, f"{site.seed}/{ident}", study_uid(site, exp.id), series,
                      count, size, BASE_MTIME, no_digest=no_digest)
    scan.add_resource(site.resource("DICOM", "scans", fmt="DICOM", content="RAW",
                                    cat_id=scan.id, cat_desc=scan.type, source=src))


def sidecar_json(scan: Scan) -> str:
    exp = scan.session
    return json.dumps({
        "Modality": exp.modality,
        "MagneticFieldStrength": float(exp.field_strength or 3),
        "Manufacturer": exp.scanner_manufacturer or "SIEMENS",
        "ManufacturersModelName": exp.scanner_model or "Prisma_fit",
        "SeriesDescription": scan.series_description,
        "SeriesNumber": scan.id,
        "ProtocolName": scan.type,
        "ConversionSoftware": "dcm2niix",
    }, indent=2) + "\n"


def add_nifti(site: Site, scan: Scan, base: str | None = None, size: int | None = None,
              json_digest: "bool | str" = True) -> None:
    exp = scan.session
    base = base or f"{exp.label}_{scan.id}_{scan.type or 'scan'}".replace(" ", "_")
    ident = f"{site.seed}/{exp.id}/{scan.id}/NIFTI"
    size = size or vsize(ident, 2048, 4096)
    files = [
        FileEntry(f"{base}.nii.gz", site.gen(ident, f"{base}.nii.gz", size), fmt="NIFTI",
                  mtime=BASE_MTIME),
        FileEntry(f"{base}.json", text_blob(sidecar_json(scan)), digest=json_digest,
                  fmt="JSON", mtime=BASE_MTIME),
    ]
    scan.add_resource(site.resource("NIFTI", "scans", fmt="NIFTI", cat_id=scan.id,
                                    cat_desc=scan.type, files=files))


def add_snapshots(site: Site, scan: Scan) -> None:
    exp = scan.session
    ident = f"{site.seed}/{exp.id}/{scan.id}/SNAPSHOTS"
    full = f"{exp.id}_{scan.id}_qc.gif"
    thumb = f"{exp.id}_{scan.id}_qc_t.gif"
    files = [
        FileEntry(full, site.gen(ident + "/full", full, vsize(ident + "/full", 2048, 4096)),
                  fmt="GIF", content="ORIGINAL", mtime=BASE_MTIME),
        FileEntry(thumb, site.gen(ident + "/thumb", thumb, vsize(ident + "/thumb", 1024, 1536)),
                  fmt="GIF", content="THUMBNAIL", mtime=BASE_MTIME),
    ]
    scan.add_resource(site.resource("SNAPSHOTS", "scans", fmt="GIF", cat_id=scan.id,
                                    cat_desc=scan.type, files=files))


def scanner_kw(seed: int = 0) -> dict:
    return dict(modality="MR", scanner_manufacturer="SIEMENS", scanner_model="Prisma_fit",
                field_strength="3.0")


def bids_files(site: Site, exp: Experiment, sub: str, with_func: bool = True) -> list[FileEntry]:
    ident = f"{site.seed}/{exp.id}/BIDS"
    out = []
    names = [f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", f"sub-{sub}/anat/sub-{sub}_T1w.json"]
    if with_func:
        names += [f"sub-{sub}/func/sub-{sub}_task-rest_bold.nii.gz",
                  f"sub-{sub}/func/sub-{sub}_task-rest_bold.json"]
    for name in names:
        if name.endswith(".json"):
            blob = text_blob(json.dumps({"Source": exp.label, "File": name}, indent=2) + "\n")
        else:
            blob = site.gen(f"{ident}/{name}", name, vsize(f"{ident}/{name}", 2048, 4096))
        out.append(FileEntry(name, blob, fmt="BIDS", mtime=BASE_MTIME))
    out.append(FileEntry("dataset_description.json", text_blob(json.dumps(
        {"Name": exp.project.name, "BIDSVersion": "1.8.0"}, indent=2) + "\n"),
        fmt="BIDS", mtime=BASE_MTIME))
    return out


def readme_project(site: Site, project: Project, text: str) -> None:
    files = [
        FileEntry("README.txt", text_blob(text), fmt="TXT", mtime=BASE_MTIME),
        FileEntry("scanner/settings.json", text_blob(json.dumps(
            {"project": project.id, "sequence": "MPRAGE", "TR": 2.3}, indent=2) + "\n"),
            fmt="JSON", mtime=BASE_MTIME),
    ]
    project.add_resource(site.resource("protocol", "resources", fmt="TXT", files=files))
