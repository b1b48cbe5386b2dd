"""Reports: the trade-off of every stage as markdown and as one self-contained HTML page."""

from slimfuse.report.write import render_html, render_markdown, write_report

__all__ = ["render_html", "render_markdown", "write_report"]
