"""A short Markdown summary of a build, for the reports folder and the Prefect run's artifacts."""

from __future__ import annotations

from typing import Any

import pandas as pd


def summary_markdown(summary: dict[str, Any], findings: pd.DataFrame) -> str:
    """Counts in and out, the splits, findings by check, and the reviewer decisions applied."""
    ledger = summary["ledger"]
    lines = [f"# crowdseg build: {summary['spec']}", "", "| | count |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in ledger.items()]
    lines += ["", "## Splits", "", "| split | photos | users | target | actual |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {v['photos']} | {v['users']} | {v['target']:.1%} | {v['actual']:.1%} |"
              for s, v in summary["splits"].items()]
    lines += ["", "## Findings", "", "| level | check | severity | count |", "|---|---|---|---:|"]
    if len(findings):
        counts = findings.groupby(["level", "check", "severity"]).size()
        lines += [f"| {lv} | {ck} | {sv} | {n} |" for (lv, ck, sv), n in counts.items()]
    if summary.get("decisions"):
        lines += ["", "## Reviewer decisions", "", "| decision | status | count |", "|---|---|---:|"]
        lines += [f"| {k.split('/')[0]} | {k.split('/')[1]} | {n} |" for k, n in summary["decisions"].items()]
    return "\n".join(lines) + "\n"
