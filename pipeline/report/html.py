"""The QA report as one self-contained HTML file that opens offline."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

import pandas as pd

from pipeline.stages.ingest import load_oriented

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;
min-width:9rem}.card b{display:block;font-size:1.4rem}table{border-collapse:collapse;margin:.5rem 0;width:100%}
th,td{border:1px solid #e3e3e3;padding:.25rem .5rem;text-align:left}th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}.error{color:#b00020}.warning{color:#a15c00}
.info{color:#555}.pairs{display:flex;flex-wrap:wrap;gap:1rem}.pair{border:1px solid #ddd;padding:.4rem}
.pair figure{display:inline-block;margin:0 .3rem;text-align:center}.pair img{max-height:160px}
.ok{color:#1b7f3b}.swatch{display:inline-block;width:.9rem;height:.9rem;border:1px solid #999;
vertical-align:middle;margin-right:.3rem}details{margin:.4rem 0}.scroll{overflow-x:auto}
"""


def table(df: pd.DataFrame, limit: int = 500, table_id: str = "") -> str:
    """An HTML table of at most ``limit`` rows, numbers right-aligned."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    body = []
    for rec in df.head(limit).itertuples(index=False):
        cells = []
        for v in rec:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(f'<td class="num">{escape(text)}</td>' if num else f"<td>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>{len(df) - limit} more rows in the CSV.</p>" if len(df) > limit else ""
    attr = f' id="{escape(table_id)}"' if table_id else ""
    return (f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table></div>{more}")


def thumbnail_uri(path: str, side: int = 160) -> str:
    """A small JPEG of a photo as a data URI, so the report needs no other file."""
    im = load_oriented(path)
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def duplicate_examples(duplicates: pd.DataFrame, paths: dict[str, str], n: int = 12) -> list[dict[str, Any]]:
    """Up to n duplicates with a photo on each side, taking the kinds in turn so every kind is shown."""
    rows = duplicates[(duplicates["photo_id"] != duplicates["cluster"]) & duplicates["photo_id"].isin(paths)
                      & duplicates["cluster"].isin(paths)].sort_values(["kind", "distance", "photo_id"])
    by_kind = [g.to_dict("records") for _, g in rows.groupby("kind", sort=True)]
    picked: list[dict[str, Any]] = []
    while len(picked) < n and any(by_kind):
        for g in by_kind:
            if g and len(picked) < n:
                picked.append(g.pop(0))
    return picked


def _pair(example: dict[str, Any], paths: dict[str, str]) -> str:
    figs = "".join(f'<figure><img alt="{escape(pid)}" src="{thumbnail_uri(paths[pid])}"><figcaption>{escape(pid)}'
                   "</figcaption></figure>" for pid in (example["cluster"], example["photo_id"]))
    note = f'{example["kind"]}, distance {example["distance"]}: {example["action"]}'
    return f'<div class="pair">{figs}<p>{escape(note)}</p></div>'


def render_report(summary: dict[str, Any], tables: dict[str, pd.DataFrame], paths: dict[str, str]) -> str:
    """The QA report page; ``paths`` maps photo ids to files, for the duplicate examples."""
    ledger = summary["ledger"]
    findings, rejections, duplicates = tables["findings"], tables["rejections"], tables["duplicates"]
    cards = "".join(f'<div class="card"><b>{v}</b>{escape(k.replace("_", " "))}</div>' for k, v in ledger.items())
    splits = pd.DataFrame([{"split": s, **v} for s, v in summary["splits"].items()])
    examples = "".join(_pair(e, paths) for e in duplicate_examples(duplicates, paths))
    sections = [
        f"<h1>QA report: {escape(summary['spec'])}</h1>",
        f"<p>Build of {ledger['photos_in']} photos and {ledger['assignments_in']} assignments. Every input is "
        "published, rejected, deduplicated or held back; the counts below balance.</p>",
        f'<div class="cards" id="ledger">{cards}</div>',
        "<h2>Splits</h2>", table(splits, table_id="splits"),
        "<h2>Classes</h2>", table(tables["classes"], table_id="classes"),
        "<h2>Findings</h2>", table(counts(findings, ["level", "check", "severity"]), table_id="findings-summary"),
        "<details><summary>All findings</summary>" + table(findings, table_id="findings") + "</details>",
        "<h2>Duplicates</h2>", table(counts(duplicates, ["kind", "action"]), table_id="duplicates-summary"),
        f'<div class="pairs" id="duplicate-examples">{examples}</div>',
        "<details><summary>All duplicate clusters</summary>" + table(duplicates, table_id="duplicates")
        + "</details>",
        "<h2>Annotators</h2>", table(tables["annotators"], table_id="annotators"),
        "<h2>Rejections</h2>", table(counts(rejections, ["stage", "item", "reason"]), table_id="rejections-summary"),
        "<details><summary>All rejections</summary>" + table(rejections, table_id="rejections") + "</details>",
    ]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>crowdseg QA report</title>"
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")


def counts(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Row counts per combination of ``by``, for summary tables."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "count"])
    return df.groupby(by, dropna=False).size().rename("count").reset_index()
