"""Reports: every stage's trade-off as markdown and as one self-contained HTML page.

``gather`` reads a run folder (metrics, bundles, the machine), ``plot`` draws the trade-off as
SVG, ``html`` lays out the page, ``write`` writes both files.
"""

from slimfuse.report.write import render_html, render_markdown, write_report

__all__ = ["render_html", "render_markdown", "write_report"]
