"""The README's quick starts run as written, every command it shows is exercised, the example
recipes are valid and run, and docs/cli.md is what the parsers give."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BIN = Path(sys.executable).parent


def blocks(section: str, lang: str) -> list[str]:
    """The ```lang blocks of the README section whose heading is ``## section``."""
    text = README.read_text(encoding="utf-8")
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", part, flags=re.S)


def bash_lines() -> list[str]:
    """Every command line of the README's bash blocks, comments stripped."""
    text = README.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln]


def quick_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # what `source .venv/bin/activate` does
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}


def test_readme_is_a_front_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_readme_python_quick_start_runs_verbatim(tmp_path):
    (code,) = blocks("Python quick start", "python")
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=quick_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "cnn" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "cnn.onnx").is_file()


def test_readme_cli_quick_start_runs_verbatim(tmp_path):
    (script,) = blocks("CLI quick start", "bash")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=quick_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy" in done.stdout
    for path in ("runs/cnn/slimfuse.json", "runs/cnn.onnx", "runs/exp/model.onnx"):
        assert (tmp_path / path).is_file(), path
    assert (tmp_path / "runs" / "exp" / "report.html").is_file()


def test_every_readme_command_is_exercised(tmp_path):
    """slimfuse lines run in the quick start; make targets exist; activation finds slimfuse."""
    (quick,) = blocks("CLI quick start", "bash")
    ran = {ln.split("#", 1)[0].strip() for ln in quick.splitlines()}
    for line in bash_lines():
        if line.startswith("slimfuse "):
            assert line in ran, f"README command not run by a test: {line}"
        elif line.startswith("make "):
            target = line.split()[1]
            assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M)
            if target in ("demo", "test"):  # the commands make runs (dry run: nothing runs)
                dry = subprocess.run(
                    ["make", "-n", "-C", str(ROOT), target, "STAMP=/dev/null"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert dry.returncode == 0, dry.stderr
        elif line.startswith("source "):
            activate = Path(sys.prefix) / "bin" / "activate"
            done = subprocess.run(
                ["bash", "-c", f"source {activate} && slimfuse --version"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PATH": "/usr/bin:/bin"},
            )
            assert done.returncode == 0 and done.stdout.startswith("slimfuse "), done.stderr
        else:
            pytest.fail(f"README command with no test: {line}")


def test_the_demo_recipe_validates():
    """`make demo` runs `slimfuse demo` on this recipe (the full run takes minutes)."""
    from slimfuse.pipeline.recipe import load_recipe

    recipe, _ = load_recipe(ROOT / "src" / "slimfuse" / "recipes" / "demo.yaml")
    assert recipe.stages


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_recipe_validates(path):
    from slimfuse.pipeline.recipe import load_recipe

    recipe, _ = load_recipe(path)
    assert recipe.stages


RUN_HERE = [p for p in EXAMPLES if p.name != "quickstart.yaml"]  # the CLI quick start runs that


@pytest.mark.parametrize("path", RUN_HERE, ids=[p.stem for p in RUN_HERE])
def test_example_recipe_runs_with_a_tiny_budget(path, tmp_path):
    """Each example runs with 1 epoch per stage, 2 members, 2 folds, torch rows only."""
    import slimfuse

    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec["measure_engines"] = ["torch"]
    for stage in spec["stages"]:
        for key, small in (("epochs", 1), ("n", 2), ("cv", 2)):
            if key in stage:
                stage[key] = small
    result = slimfuse.run(yaml.safe_dump(spec), tmp_path / "run", quiet=True)
    assert len(result["stages"]) >= 1
    assert (tmp_path / "run" / "model.onnx").is_file()


def test_a_missing_recipe_says_where_the_examples_are(tmp_path, capsys):
    from slimfuse.cli.main import main

    assert main(["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"slimfuse run: error: recipe '{tmp_path / 'recipe.yaml'}' not found "
        f"(example recipes: {ROOT / 'examples'})"
    )


def test_cli_reference_is_generated_from_the_parsers():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == gen.expected(), (
        "docs/cli.md is out of date: run make docs"
    )


@pytest.mark.skipif(shutil.which("mkdocs", path=str(BIN)) is None, reason="mkdocs not installed")
def test_docs_build_strict(tmp_path):
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "site" / "index.html").is_file()
