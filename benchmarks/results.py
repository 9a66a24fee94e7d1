"""Result records and the RESULTS.md writer.

A scenario produces a Section: Figures (one measured quantity of one tool on one case, with all
repetitions and the median) and Ratios (two figures compared against a target). A figure that
could not be measured carries `error` ("not run: <reason>" or "failed: <reason>") instead of
numbers, so the table always shows every row. Raw data also goes to results.json next to the
Markdown file.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .measure import fmt_kib, fmt_seconds


@dataclass
class Figure:
    case: str  # "10,000 files"
    tool: str  # "ours: xnat-update --reckless fast"
    metric: str  # "time", "requests", "peak RSS"
    unit: str  # "s", "requests", "KiB"
    runs: list = field(default_factory=list)
    error: str = ""  # "not run: …" / "failed: …"
    note: str = ""
    extra: dict = field(default_factory=dict)  # e.g. RSS by process kind, request routes

    @property
    def value(self) -> float | None:
        return statistics.median(self.runs) if self.runs and not self.error else None

    def cell(self) -> str:
        if self.error:
            return self.error
        value = self.value
        if value is None:
            return "—"
        if self.unit == "s":
            return fmt_seconds(value)
        if self.unit == "KiB":
            return fmt_kib(value)
        if self.unit == "requests":
            return f"{value:,.0f}"
        if self.unit == "s/file":
            return f"{value * 1000:.1f} ms/file"
        return f"{value:,.3g} {self.unit}"

    def runs_cell(self) -> str:
        if self.error or not self.runs:
            return ""
        if self.unit == "s":
            return ", ".join(f"{v:.2f}" for v in self.runs)
        if self.unit == "KiB":
            return ", ".join(f"{v / 1024:.0f}" for v in self.runs) + " MiB"
        return ", ".join(f"{v:g}" for v in self.runs)


@dataclass
class Ratio:
    case: str
    label: str  # "peer / ours"
    value: float | None
    target: str  # "≥ 20"
    met: bool | None  # None when not computable
    note: str = ""
    unit: str = "×"

    def cell(self) -> str:
        if self.value is None:
            return "—"
        if self.unit == "s":
            return fmt_seconds(self.value)
        return f"{self.value:,.2f}{self.unit}"

    def verdict(self) -> str:
        return {True: "met", False: "**not met**", None: "n/a"}[self.met]


def ratio(case: str, label: str, num: Figure | None, den: Figure | None, target: str,
          predicate, note: str = "") -> Ratio:
    a = num.value if num else None
    b = den.value if den else None
    if a is None or b is None or b == 0:
        missing = [f.tool for f in (num, den) if f is not None and f.value is None]
        return Ratio(case, label, None, target, None,
                     note or ("missing: " + "; ".join(missing) if missing else ""))
    value = a / b
    return Ratio(case, label, value, target, bool(predicate(value)), note)


@dataclass
class Section:
    key: str  # "register"
    title: str
    figures: list = field(default_factory=list)
    ratios: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        return fig

    def find(self, case: str, tool_prefix: str, metric: str | None = None) -> Figure | None:
        for fig in self.figures:
            if fig.case == case and fig.tool.startswith(tool_prefix) \
                    and (metric is None or fig.metric == metric):
                return fig
        return None


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout.strip()
        return out.splitlines()[0] if out else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "os": _cmd(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]) or platform.platform(),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def render(meta: dict, sections: list[Section]) -> str:
    lines = ["# Benchmark results", "",
             "Generated by `make bench` (`python -m benchmarks.run`); do not edit by hand. "
             "Every figure is the median of the runs listed beside it unless the row says "
             "otherwise. All tools ran on this one machine in one run, against the XNAT emulator "
             "(`xnat_emulator`) started as a separate process on loopback, so its CPU and memory "
             "are not counted with the tool's. Scratch of earlier repetitions is moved aside and "
             "deleted only after the run: on this machine's journal-less ext4, files created "
             "right after a large delete cost several times more (`benchmarks/common.py`, "
             "`fresh_dir`).", ""]
    lines += [f"* run: `{meta.get('command', '')}` — started {meta.get('started', '')}, "
              f"took {fmt_seconds(meta.get('seconds'))}", ""]
    lines += ["## Machine and versions", ""]
    lines += _table(["", ""], [[k, v] for k, v in {**meta.get("machine", {}),
                                                   **meta.get("versions", {})}.items()])
    lines.append("")
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        if sec.started:
            lines += [f"_Section run {sec.started}, {fmt_seconds(sec.seconds)}._", ""]
        if sec.figures:
            rows = [[f.case, f.tool, f.metric, f.cell(), f.runs_cell(), f.note]
                    for f in sec.figures]
            lines += _table(["case", "tool", "metric", "median", "runs", "note"], rows)
            lines.append("")
        if sec.ratios:
            rows = [[r.case, r.label, r.cell(), r.target, r.verdict(), r.note] for r in sec.ratios]
            lines += _table(["case", "ratio", "value", "target", "verdict", "note"], rows)
            lines.append("")
        for note in sec.notes:
            lines += [f"* {note}"]
        if sec.notes:
            lines.append("")
        if sec.commands:
            lines += ["Commands (timed parts as shown; `ds` is a fresh dataset per run):", "", "```"]
            lines += sec.commands
            lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def save(path: Path, meta: dict, sections: list[Section]) -> None:
    """Write RESULTS.md and results.json; sections not run this time keep their previous data."""
    raw_path = path.with_name(path.stem.lower().replace("results", "results") + ".json")
    previous: dict = {}
    if raw_path.exists():
        try:
            previous = json.loads(raw_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
    merged = {s["key"]: s for s in previous.get("sections", [])}
    for sec in sections:
        merged[sec.key] = asdict(sec)
    order = ["register", "requests", "download", "memory", "rerun", "latency"]
    keys = sorted(merged, key=lambda k: order.index(k) if k in order else 99)
    all_sections = [_section_from_dict(merged[k]) for k in keys]
    if previous.get("meta") and set(merged) != {s.key for s in sections}:
        meta = dict(meta)
        meta["note"] = "some sections come from an earlier run (see each section's date)"
    raw_path.write_text(json.dumps({"meta": meta, "sections": [asdict(s) for s in all_sections]},
                                   indent=1, default=str))
    text = render(meta, all_sections)
    if meta.get("note"):
        text = text.replace("## Machine and versions", f"_Note: {meta['note']}._\n\n"
                            "## Machine and versions", 1)
    path.write_text(text)


def _section_from_dict(data: dict) -> Section:
    sec = Section(**{k: v for k, v in data.items() if k not in ("figures", "ratios")})
    sec.figures = [Figure(**f) for f in data.get("figures", [])]
    sec.ratios = [Ratio(**r) for r in data.get("ratios", [])]
    return sec


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
