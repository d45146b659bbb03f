"""A short Markdown summary of a build, for the reports folder and the Prefect run's artifacts."""

from __future__ import annotations

from typing import Any

import pandas as pd


def summary_markdown(summary: dict[str, Any], findings: pd.DataFrame) -> str:
    """Counts in and out, the splits, and findings by check."""
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
    return "\n".join(lines) + "\n"
