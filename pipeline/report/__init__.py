"""Rendering of build results for people: CSV tables, a JSON summary and a self-contained HTML QA report."""
