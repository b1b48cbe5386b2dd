"""The report of a real recipe run (an ensemble of 3 MLPs, fusion, distillation, pruning, int8),
read as a person would: in headless Chromium at laptop and phone widths.

The browser tests skip (one line) only where no chromium binary exists; `.ci/run` installs one.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from slimfuse.pipeline.run import run_recipe
from slimfuse.report import write_report
from slimfuse.report.gather import gather
from slimfuse.report.plot import Point, pareto
from tests.browser import Chromium, find_chromium

RECIPE = """
data: digits
seed: 0
stages:
  - stage: train-members
    name: members
    model: mlp
    model_kwargs: {hidden: [32]}
    n: 3
    epochs: 2
  - stage: fuse
    name: ensemble
    method: weighted
  - stage: distill
    name: student
    teachers: [ensemble]
    student: mlp
    student_kwargs: {hidden: [16]}
    epochs: 3
  - stage: prune
    name: pruned
    sparsity: 0.5
    epochs: 1
  - stage: quantize
    name: int8
    mode: static
"""
STAGES = ["members", "ensemble", "student", "pruned", "int8"]
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"\'&'

CHROMIUM = find_chromium()
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium; or set CHROMIUM)"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_recipe(RECIPE, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def hostile(run, tmp_path_factory):
    """The run's report with a stage renamed to markup, as an attacker's metrics.json would."""
    out = tmp_path_factory.mktemp("hostile")
    result = json.loads((run / "metrics.json").read_text())
    for r in result["stages"]:
        if r["stage"] == "student":
            r["stage"] = HOSTILE
            r["engine"] = HOSTILE
    result["metric"] = HOSTILE
    (out / "metrics.json").write_text(json.dumps(result))
    return write_report(out)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Chromium(CHROMIUM, tmp_path_factory.mktemp("profile")) as b:
        yield b


def test_report_gathers_what_each_stage_did_from_the_bundles(run):
    rep = gather(json.loads((run / "metrics.json").read_text()), run)
    assert [s.name for s in rep.stages] == STAGES
    assert rep.engines == ["torch", "onnxruntime"]
    by = {s.name: s for s in rep.stages}
    assert by["members"].summary.startswith("3 mlp members (seeds), 2 epochs each")
    assert by["ensemble"].summary == "weighted fusion of 3 members"
    assert by["student"].summary.startswith("mlp distilled from ensemble (kd")
    assert by["pruned"].summary.startswith("50% of the weights zeroed (magnitude, global)")
    assert by["int8"].summary == "static int8 (QDQ) for ONNX Runtime: 2 of 2 weighted layers int8"
    # each member's own test accuracy, measured by the recipe, beside the fused model's
    members = by["ensemble"].members
    assert [m["name"] for m in members] == ["seed0", "seed1", "seed2"]
    assert all(0.3 < m["metric"] <= 1 and 0.3 < m["val"] <= 1 for m in members)
    assert abs(sum(m["weight"] for m in members) - 1) < 1e-5
    # per-layer views on the stage that made them
    (sparsity,) = by["pruned"].layers
    assert [r[0] for r in sparsity.rows] == ["net.0.weight", "net.2.weight"]
    zeros = [r[1]["bar"] for r in sparsity.rows]
    assert all(0 < z < 1 for z in zeros)
    assert [v.title for v in by["int8"].layers] == ["Precision per layer"]
    assert {r[2]["badge"] for r in by["int8"].layers[0].rows} == {"int8"}
    assert rep.machine["CPU"] and "torch" in rep.machine["libraries"]


def test_report_html_is_self_contained_and_escaped(run, hostile):
    page = (run / "report.html").read_text()
    assert "<svg" in page and "Content-Security-Policy" in page
    assert not re.search(r"<script|<link|<img|https?://(?!www\.w3\.org/2000/svg)", page)
    for name in STAGES:
        assert f"<b>{name}</b>" in page
    bad = hostile.read_text()
    assert "<script>window" not in bad and "<img src=x" not in bad
    assert "&lt;script&gt;window.pwned=2&lt;/script&gt;" in bad
    # the final bundle carries the same report, its details read from the run folder
    assert "Precision per layer" in (run / "int8" / "report.html").read_text()


def test_pareto_front_keeps_the_points_nothing_beats():
    pts = [Point("a", "e", 1, 0.9), Point("b", "e", 2, 0.95), Point("c", "e", 3, 0.94)]
    assert [p.label for p in pareto(pts, higher_is_better=True)] == ["a", "b"]
    assert [p.label for p in pareto(pts, higher_is_better=False)] == ["a"]


LABELS = """(() => {
  const out = [];
  for (const svg of document.querySelectorAll('svg.plot')) {
    const f = svg.getBoundingClientRect();
    if (f.width === 0) continue;  // the variant for the other width
    const boxes = [...svg.querySelectorAll('text.label')].map(t => t.getBoundingClientRect());
    out.push({frame: [f.left, f.top, f.right, f.bottom],
              boxes: boxes.map(b => [b.left, b.top, b.right, b.bottom])});
  }
  return out;
})()"""


def _overlap(a, b, tol=0.5):
    return a[0] + tol < b[2] and b[0] + tol < a[2] and a[1] + tol < b[3] and b[1] + tol < a[3]


@needs_browser
@pytest.mark.parametrize("width", [1280, 390])
def test_report_in_chromium(run, browser, width, tmp_path):
    t0 = time.perf_counter()
    page = browser.open((run / "report.html").as_uri(), width)
    assert page.errors() == []
    assert page.requests() == [(run / "report.html").as_uri()]  # nothing fetched
    shot = page.screenshot(tmp_path / f"report-{width}.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    plots = page.evaluate(LABELS)
    assert len(plots) == 2  # metric against latency and against size, one variant visible
    for plot in plots:
        boxes = plot["boxes"]
        assert len(boxes) == 2 * len(STAGES)  # one point per stage and engine, each labelled
        for i, a in enumerate(boxes):
            f = plot["frame"]
            assert f[0] <= a[0] and a[2] <= f[2] and f[1] <= a[1] and a[3] <= f[3], a
            for b in boxes[i + 1 :]:
                assert not _overlap(a, b), (a, b)
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )
    assert widths[0] <= widths[2] and widths[1] <= widths[2], widths
    text = page.evaluate("document.body.innerText")
    for needle in ("Stages", "Trade-off", "Ensembles", "Per layer", "Machine", "seed2", "int8"):
        assert needle in text
    rows = page.evaluate("document.querySelectorAll('table.stages tbody tr').length")
    assert rows == 2 * len(STAGES)
    assert time.perf_counter() - t0 < 60


@needs_browser
def test_a_hostile_stage_name_stays_text_in_chromium(hostile, browser):
    page = browser.open(hostile.as_uri(), 1280)
    assert page.errors() == []
    assert page.evaluate("document.scripts.length") == 0
    assert page.evaluate("document.images.length") == 0
    assert page.evaluate("window.pwned === undefined")
    assert HOSTILE in page.evaluate("document.body.innerText")


def test_layer_views_and_junk_from_files(tmp_path):
    """Sensitivity and ranks from a bundle's edits; wrong types anywhere are left out, never a
    crash; a bundle path outside the run folder is not followed."""
    spec = {
        "source": "mlp",
        "lineage": [{"stage": "quantize", "name": "q", "config": {"mode": "static"}, "seconds": 1}],
        "edits": [
            {"kind": "lowrank", "modules": {"fc": {"type": "linear", "rank": 4}}},
            {
                "kind": "quantized_graph",
                "info": {
                    "layers": [
                        {"layer": "fc", "type": "Linear", "precision": "fp32", "reason": "kept"},
                        {"layer": "out", "type": "Linear", "precision": "int8"},
                        "junk",
                    ],
                    "mixed_precision": {
                        "max_drop": 0.01,
                        "met": True,
                        "steps": [{}, {}],
                        "sensitivity": [{"layer": "fc", "drop": 0.03, "sqnr_db": 21.5}, 7],
                    },
                },
            },
        ],
    }
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "slimfuse.json").write_text(json.dumps({"model": spec}))
    low = {
        **spec,
        "lineage": [
            {
                "stage": "factorize",
                "name": "f",
                "config": {"method": "energy", "energy": 0.9},
                "seconds": 1,
            }
        ],
    }
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "slimfuse.json").write_text(json.dumps({"model": low}))
    rows = [
        {"stage": "q", "engine": "onnxruntime", "metric_value": 0.9, "onnx_bytes": 10},
        {"stage": "f", "engine": "onnxruntime", "metric_value": 0.8, "onnx_bytes": 5},
        {"stage": "../etc", "engine": 3, "metric_value": "x", "latency_ms_b64": float("nan")},
        {"stage": None},
        "junk",
    ]
    rep = gather({"task": "classification", "metric": "accuracy", "stages": rows}, tmp_path)
    q = rep.stages[0]
    assert q.summary == "static int8 (QDQ) for ONNX Runtime: 1 of 2 weighted layers int8"
    titles = [v.title for v in q.layers]
    assert titles == ["Precision per layer", "Sensitivity (each layer quantized alone)"]
    assert q.layers[1].rows[0][0] == "fc" and "met after 2 step(s)" in q.layers[1].note
    f = rep.stages[1]
    assert f.summary == "low-rank factorization (energy 0.9)"
    assert [v.title for v in f.layers] == ["Low-rank factorization: ranks"]
    assert f.layers[0].rows == [["fc", "linear", "4"]]
    assert rep.stages[2].name == "../etc" and rep.stages[2].summary == ""
    from slimfuse.report.html import render

    page = render(rep)
    assert "Sensitivity" in page and "../etc" in page
