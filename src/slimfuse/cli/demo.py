"""``slimfuse demo``: train an ensemble, fuse it, and let ``slimfuse compress`` find the smallest
model within an accuracy budget; one run folder with every stage's bundle, ``metrics.json``,
the report and ``model.onnx`` (the deployable result)::

    slimfuse demo --out runs/demo            # what `make demo` runs
    slimfuse demo --out runs/demo --resume   # an interrupted demo goes on

The recipe (``recipes/demo.yaml``: members -> ensemble) runs into ``out``; the search
(``recipes/demo_compress.yaml``: its settings) into ``out/compress``; the chosen model is copied
to ``out/compressed`` (a bundle) and ``out/model.onnx``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from slimfuse.autocompress.config import CompressConfig
from slimfuse.config import validate
from slimfuse.errors import ConfigError

RECIPES = Path(__file__).parents[1] / "recipes"
DEMO_RECIPE = RECIPES / "demo.yaml"
DEMO_SEARCH = RECIPES / "demo_compress.yaml"
log = logging.getLogger("slimfuse.demo")


def search_settings(source: str | Path | dict[str, Any] = DEMO_SEARCH) -> CompressConfig:
    """The demo's search settings (a YAML file of :class:`CompressConfig` keys, or a mapping)."""
    import yaml

    values = yaml.safe_load(Path(source).read_text()) if not isinstance(source, dict) else source
    return validate(CompressConfig, values, str(source) if not isinstance(source, dict) else "")


def run_demo(
    out: str | Path,
    *,
    recipe: str | Path = DEMO_RECIPE,
    search: str | Path | dict[str, Any] = DEMO_SEARCH,
    quiet: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the recipe into ``out`` (its last stage: the reference), then the search into
    ``out/compress``; returns ``{"stages": rows, "search": CompressResult, "seconds",
    "cpu_seconds"}`` (rows: the recipe's and the chosen model's, test split). Torch trains and
    measures on the recipe's ``threads`` (the demo's: one)."""
    from slimfuse.measuring import _Threads
    from slimfuse.pipeline.recipe import load_recipe, parse_recipe

    wall, cpu = time.perf_counter(), time.process_time()
    out = Path(out)
    parsed = (
        load_recipe(recipe)[0]
        if isinstance(recipe, Path) or "\n" not in str(recipe)
        else parse_recipe(str(recipe))
    )
    cfg = search_settings(search)  # bad settings stop before anything trains
    with _Threads(parsed.threads):  # training too: 2 threads on 2 busy cores crawl
        return _run(out, recipe, parsed, cfg, quiet, resume, wall, cpu)


def _run(
    out: Path,
    recipe: str | Path,
    parsed: Any,
    cfg: CompressConfig,
    quiet: bool,
    resume: bool,
    wall: float,
    cpu: float,
) -> dict[str, Any]:
    from slimfuse.autocompress.search import compress
    from slimfuse.measuring import write_metrics
    from slimfuse.pipeline.run import run_recipe
    from slimfuse.report import write_report

    result = run_recipe(recipe, out, quiet=quiet, resume=resume)
    reference = out / parsed.stages[-1].name
    folder = out / "compress"
    again = resume and (folder / "search.db").is_file()
    if not again:
        shutil.rmtree(folder, ignore_errors=True)  # the demo's own folder: a new run starts over
    found = compress(
        str(reference),
        parsed.data,
        out=folder,
        split_seed=parsed.split_seed,
        data_kwargs=dict(parsed.data_kwargs),
        resume=again,
        **cfg.to_dict(),
    )
    rows = list(result["stages"])
    if found.chosen is None:
        raise ConfigError(
            f"no model within max_drop {cfg.max_drop} of the reference; see {folder / 'pareto.md'}"
        )
    chosen = out / "compressed"
    shutil.rmtree(chosen, ignore_errors=True)
    shutil.copytree(folder / "chosen", chosen)
    shutil.copyfile(folder / "model.onnx", out / "model.onnx")
    for r in json.loads((folder / "metrics.json").read_text())["stages"]:
        if r["stage"] == "chosen":
            rows.append({**r, "stage": "compressed", "bundle": str(chosen)})
    task, metric = result["task"], result["metric"]
    write_metrics(out / "metrics.json", rows, task, metric)
    write_report(out, {"task": task, "metric": metric, "stages": rows})
    return {
        "stages": rows,
        "search": found,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }
