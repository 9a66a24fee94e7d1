"""XNAT's representations: ResultSet tables, item documents and resource catalogs.

Route modules build plain rows and item dicts; this module applies XNAT's query options to
tables (columns, column filters, sortBy, limit/offset) and writes JSON, CSV, HTML or XML the
way XNAT does, so every listing answers with the same shapes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

from .model import Resource
from .wire import HTML, Request, Response

# query keys that are never column filters
RESERVED = {"format", "columns", "sortBy", "sortOrder", "limit", "offset", "xsiType",
            "accept-not-found", "all", "structure", "compression", "file_format",
            "file_content", "locator", "includeHistory", "CSRF", "recursive", "XNAT_CSRF",
            "handler", "concealHiddenFields", "event_reason", "listContents", "index"}


def like(pattern: str, value: str) -> bool:
    """XNAT filter matching: comma = OR, `*`/`%` wildcards, case-insensitive."""
    value = value.lower()
    for alt in pattern.split(","):
        alt = alt.strip().lower()
        if "*" in alt or "%" in alt:
            rx = "^" + ".*".join(re.escape(p) for p in re.split(r"[*%]", alt)) + "$"
            if re.match(rx, value, re.S):
                return True
        elif alt == value:
            return True
    return False


def table(req: Request, rows: list[dict], default_cols: list[str], *, legacy: bool,
          total: bool, title: str | None = None, columns_meta: list | None = None,
          paging: bool = False, all_columns: bool = False,
          skip_filters: set[str] = frozenset()) -> Response:
    """A ResultSet of `rows` as the request asks for it; `legacy` is an XNAT 1.6 site."""
    q = req.query
    # columns
    if "columns" in q and q["columns"] not in ("", "DEFAULT") and not all_columns:
        wanted = [c.strip() for c in q["columns"].split(",") if c.strip()]
        cols = ["ID"] if rows and "ID" in rows[0] else []
        known = set(rows[0]) if rows else set()
        for c in wanted:
            if c in ("URI",) or c in cols:
                continue
            if c in known or not rows:
                cols.append(c)
    else:
        cols = list(default_cols)
    # filters: any column alias as a query key
    for k, v in q.items():
        if k in RESERVED or k in skip_filters:
            continue
        if rows and k in rows[0]:
            rows = [r for r in rows if like(v, str(r.get(k, "")))]
    # sorting
    if "sortBy" in q:
        keys = [k for k in q["sortBy"].split(",") if k]
        rev = q.get("sortOrder", "ASC").upper() == "DESC"
        rows = sorted(rows, key=lambda r: [str(r.get(k, "")) for k in keys], reverse=rev)
    offset_given = "offset" in q
    if legacy:
        paging = offset_given = False           # limit/offset arrived with XNAT 1.8.9
    if paging and ("limit" in q or offset_given):
        try:
            off = int(q.get("offset", "0") or 0)
        except ValueError:
            off = 0
        lim = q.get("limit", "*")
        rows = rows[off:] if lim in ("*", "") else rows[off:off + int(lim)]
    out_cols = cols + (["URI"] if rows and "URI" in rows[0] and "URI" not in cols else [])
    if all_columns and rows and list(rows[0]) == out_cols:
        result = rows            # rows built with exactly these string columns
    else:
        result = [{c: str(r.get(c, "")) for c in out_cols} for r in rows]
    fmt = req.fmt or ("html" if legacy else "")
    if fmt == "json":
        rs: dict = {}
        if columns_meta is not None:
            rs["Columns"] = columns_meta
        rs["Result"] = result
        if total and not (paging and offset_given):
            rs["totalRecords"] = str(len(result))
        if title:
            rs["title"] = title
        return Response(200, json.dumps({"ResultSet": rs}).encode(),
                        "application/json;charset=UTF-8")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(out_cols)
        for r in result:
            w.writerow([r[c] for c in out_cols])
        return Response(200, buf.getvalue().encode(), "text/csv;charset=UTF-8")
    if fmt == "html":
        head = "".join(f"<th>{xml_escape(c)}</th>" for c in out_cols)
        body = "".join("<tr>" + "".join(f"<td>{xml_escape(r[c])}</td>" for c in out_cols)
                       + "</tr>" for r in result)
        page = (f"<html><head><title>{xml_escape(title or 'Results')}</title></head><body>"
                f"<table><tr>{head}</tr>{body}</table></body></html>")
        return Response(200, page.encode(), HTML)
    return Response(200, table_xml(out_cols, result, title).encode(), "text/xml;charset=UTF-8")


def table_xml(cols: list[str], rows: list[dict], title: str | None) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<ResultSet Result="{len(rows)}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
           + (f' title={quoteattr(title)}' if title else "") + ">",
           "<results>", "<columns>"]
    out += [f"<column>{xml_escape(c)}</column>" for c in cols]
    out += ["</columns>", "<rows>"]
    for r in rows:
        out.append("<row>" + "".join(f"<cell>{xml_escape(r[c])}</cell>" for c in cols) + "</row>")
    out += ["</rows>", "</results>", "</ResultSet>"]
    return "\n".join(out) + "\n"


def items_xml(items: list[dict]) -> str:
    def one(it: dict, depth: int) -> str:
        xsi = it.get("meta", {}).get("xsi:type", "xnat:item")
        attrs = "".join(f" {k.replace('/', '_')}={quoteattr(str(v))}"
                        for k, v in it.get("data_fields", {}).items())
        inner = "".join(one(c, depth + 1) for ch in it.get("children", []) for c in ch["items"])
        ns = ' xmlns:xnat="http://nrg.ccf.org/xnat"' if depth == 0 else ""
        return f"<{xsi}{attrs}{ns}>{inner}</{xsi}>"
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "".join(one(i, 0) for i in items) + "\n"



def items(req: Request, docs: list[dict]) -> Response:
    """Item documents (`{"items": [...]}`) as the request's format asks: JSON, HTML or XML."""
    fmt = req.fmt
    if fmt == "json":
        return Response(200, json.dumps({"items": docs}).encode(),
                        "application/json;charset=UTF-8")
    if fmt == "html":
        body = "<html><body>" + "".join(
            f"<h3>{xml_escape(str(it['data_fields'].get('ID', '')))}</h3>"
            for it in docs) + "</body></html>"
        return Response(200, body.encode(), HTML)
    return Response(200, items_xml(docs).encode(), "text/xml;charset=UTF-8")


def catalog_xml(r: Resource) -> Response:
    """A resource's catalog: what `GET .../resources/{R}` answers, whatever the format."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<cat:Catalog ID="{r.xnat_id}" xmlns:cat="http://nrg.wustl.edu/catalog" '
           f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
           "<cat:entries>"]
    for e in r.entries():
        dg = e.digest()
        dga = f" digest={quoteattr(dg)}" if dg else ""
        out.append(f"<cat:entry URI={quoteattr(e.path)} ID={quoteattr(e.path)} "
                   f"name={quoteattr(e.name)}{dga} xsi:type=\"cat:entry\"/>")
    out.append("</cat:entries>")
    out.append("</cat:Catalog>")
    return Response(200, ("\n".join(out) + "\n").encode(), "text/xml;charset=UTF-8")
