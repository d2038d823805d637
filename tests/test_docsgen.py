"""The documentation: the generated reference pages are current, and the site builds with no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtbert import docsgen
from mtbert.config import Recipe

ROOT = Path(__file__).resolve().parents[1]


def test_reference_pages_are_current():
    stale = docsgen.stale_pages()
    assert not stale, f"{', '.join(map(str, stale))} out of date: run `{docsgen.COMMAND}` to update"


def test_recipe_reference_has_every_key_with_its_docstring():
    rows = {key: (tp, default, bound, doc) for key, tp, default, bound, doc in docsgen.recipe_rows()}
    assert rows["train.lr"][3] == "Peak learning rate."
    assert rows["seed"][2] == "in [0, 4294967295]"
    assert rows["tasks.<name>.head.style"][0] == "one of 'act_dropout', 'ln_dropout_relu', 'gelu_dropout'"
    assert rows["model.sharing.layers[].range"][1] == "required"
    assert rows["stages[].max_steps"][1] == "`null`"
    assert all(doc for *_, doc in rows.values()), [k for k, v in rows.items() if not v[3]]
    assert len([k for k in rows if "." not in k and "[" not in k]) == len(Recipe.__dataclass_fields__)


def test_command_reference_lists_every_option():
    page = docsgen.command_page()
    assert "## `mtbert train`" in page and "## `mtbert init`" in page
    assert "| `--resume` | a string |  |" in page and "| `OVERRIDES ...` | key=value pairs |  |" in page
    assert "| `--text` | a string, repeatable |  |" in page
    assert "| `--memory` / `--no-memory` | flag | `--memory` |" in page
    assert "| `--steps` | an integer, at least 1 | `30` |" in page


def test_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docsgen, "PAGES", tmp_path)
    assert docsgen.main(["--check"]) == 1
    assert f"run `{docsgen.COMMAND}` to update" in capsys.readouterr().err
    assert docsgen.main([]) == 0
    assert docsgen.main(["--check"]) == 0


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "recipe" / "index.html").exists()


def test_readme_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(targets) >= 10
    assert not [t for t in targets if not (ROOT / t).is_file()]
