"""Plugin discovery through the `spectra` entry-point group, and its failure modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_dists import SCORER_PLUGIN, make_distribution

REPO = Path(__file__).resolve().parents[1]


def _env(path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]), **extra}


def _plugins_json(run_cli, **env) -> list[dict]:
    res = run_cli("plugins", "--json", env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_builtins_and_method_plugins_are_listed(run_cli):
    rows = {r["name"]: r for r in _plugins_json(run_cli)}
    assert rows["core"]["distribution"] == "spectra-qlora"
    assert "spectra_quantizers" in rows["core"]["hooks"]
    assert "bnb-nf4" in rows["core"]["provides"]["quantizer"]
    assert rows["hybrid"]["distribution"] == "spectra-hybrid"
    assert rows["hybrid"]["provides"]["method"] == ["hybrid"]


def test_disable_autoload_keeps_only_core(run_cli):
    rows = _plugins_json(run_cli, SPECTRA_DISABLE_PLUGIN_AUTOLOAD="1")
    assert [r["name"] for r in rows] == ["core"]


def test_spectra_plugins_env_selects(run_cli, tmp_path):
    make_distribution(tmp_path, "extra-scorer", {"extra": "extra_scorer"},
                      {"extra_scorer": SCORER_PLUGIN.format(cls="Extra", name="extra")})
    rows = _plugins_json(run_cli, **_env(tmp_path, SPECTRA_PLUGINS="extra"))
    assert sorted(r["name"] for r in rows) == ["core", "extra"]


def test_unknown_plugin_in_env_is_an_error(run_cli):
    res = run_cli("plugins", env={"SPECTRA_PLUGINS": "nope"})
    assert res.returncode == 2
    assert "nope" in res.stderr and "installed:" in res.stderr


def test_duplicate_strategy_names_name_both_distributions(run_cli, tmp_path):
    make_distribution(tmp_path, "dup-one", {"dup1": "dup_one"},
                      {"dup_one": SCORER_PLUGIN.format(cls="A", name="same-name")})
    make_distribution(tmp_path, "dup-two", {"dup2": "dup_two"},
                      {"dup_two": SCORER_PLUGIN.format(cls="B", name="same-name")})
    res = run_cli("plugins", env=_env(tmp_path))
    assert res.returncode == 2
    assert "duplicate scorer name 'same-name'" in res.stderr
    assert "dup-one" in res.stderr and "dup-two" in res.stderr
    assert "Traceback" not in res.stderr


def test_plugin_raising_on_import_names_distribution_and_entry_point(run_cli, tmp_path):
    make_distribution(tmp_path, "broken-plugin", {"broken": "broken_mod"},
                      {"broken_mod": "raise RuntimeError('boom at import')\n"})
    res = run_cli("plugins", env=_env(tmp_path))
    assert res.returncode == 2
    assert "broken-plugin" in res.stderr and "broken = broken_mod" in res.stderr
    assert "boom at import" in res.stderr and "Traceback" not in res.stderr


def test_hook_returning_wrong_type(run_cli, tmp_path):
    code = "from spectra_core import hookimpl\n@hookimpl\ndef spectra_scorers():\n    return ['not a class']\n"
    make_distribution(tmp_path, "wrong-type", {"wrong": "wrong_mod"}, {"wrong_mod": code})
    res = run_cli("plugins", env=_env(tmp_path))
    assert res.returncode == 2
    assert "wrong-type" in res.stderr and "expected a subclass of spectra_core.strategies.Scorer" in res.stderr


def test_hook_returning_non_list(run_cli, tmp_path):
    code = "from spectra_core import hookimpl\n@hookimpl\ndef spectra_methods():\n    return None\n"
    make_distribution(tmp_path, "none-ret", {"noneret": "none_ret"}, {"none_ret": code})
    res = run_cli("methods", env=_env(tmp_path))
    assert res.returncode == 2 and "expected a list" in res.stderr


MISTAKES = {
    "misspelt-hook": ("from spectra_core import hookimpl\n@hookimpl\ndef spectra_scorer():\n    return []\n",
                      ["plugin 'mistake'", "mistake-dist", "unknown hook(s) spectra_scorer", "spectra_scorers"]),
    "forgotten-hookimpl": ("def spectra_scorers():\n    return []\n",
                           ["plugin 'mistake'", "mistake-dist", "spectra_scorers() without @hookimpl"]),
    "abstract": ("from spectra_core import Scorer, hookimpl\nclass Half(Scorer):\n    name = 'half'\n"
                 "@hookimpl\ndef spectra_scorers():\n    return [Half]\n",
                 ["mistake-dist", "scorer 'half' (Half) does not implement score"]),
    "plain-options": ("from pydantic import BaseModel\nfrom spectra_core import Scores, Scorer, hookimpl\n"
                      "class Loose(Scorer):\n    name = 'loose'\n    class Options(BaseModel):\n"
                      "        k: int = 1\n    def score(self, weights):\n        return Scores(scorer='loose')\n"
                      "@hookimpl\ndef spectra_scorers():\n    return [Loose]\n",
                      ["mistake-dist", "scorer 'loose'", "silently drop unknown keys", "StrategyOptions"]),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_plugin_author_mistakes_are_refused_at_load(run_cli, tmp_path, mistake):
    code, expected = MISTAKES[mistake]
    make_distribution(tmp_path, "mistake-dist", {"mistake": "mistake_mod"}, {"mistake_mod": code})
    res = run_cli("plugins", env=_env(tmp_path))
    assert res.returncode == 2, res.stdout
    assert all(e in res.stderr for e in expected), res.stderr
    assert "Traceback" not in res.stderr


def test_a_scorer_returning_the_wrong_type_is_named(run_cli, tmp_path):
    from train_fixtures import make_tiny_model

    code = ("from spectra_core import Scorer, hookimpl\nclass Bad(Scorer):\n    name = 'bad'\n"
            "    def score(self, weights):\n        return [1.0 for _ in weights]\n"
            "@hookimpl\ndef spectra_scorers():\n    return [Bad]\n")
    make_distribution(tmp_path / "site", "bad-scorer", {"bad": "bad_mod"}, {"bad_mod": code})
    model = make_tiny_model(tmp_path / "model", layers=1)
    res = run_cli("scan", model, "--scorer", "bad", "--no-cache", "--quiet", "--out", tmp_path / "scan",
                  env=_env(tmp_path / "site"))
    assert res.returncode == 2
    assert "scorer 'bad' from distribution bad-scorer" in res.stderr and "returned list" in res.stderr
    assert "expected spectra_core.Scores" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "scan").exists()


def test_example_plugin_installs_and_is_usable_by_name(run_cli, tmp_path):
    """The examples/ plugin, pip-installed into its own target dir, is found and used from a config."""
    target, source = tmp_path / "site", tmp_path / "src"
    shutil.copytree(REPO / "examples" / "spectra-stable-rank", source)  # pip builds in the source tree
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)],
                   check=True, capture_output=True)
    rows = {r["name"]: r for r in _plugins_json(run_cli, **_env(target))}
    assert rows["stable-rank"]["distribution"] == "spectra-stable-rank"
    assert rows["stable-rank"]["provides"] == {"scorer": ["stable-rank"]}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: hybrid\nmodel: {{source: {tmp_path}}}\nscorer: {{name: stable-rank}}\n"
                   "exporters: []\n")
    ok = run_cli("config", "validate", cfg, env=_env(target))
    assert ok.returncode == 0, ok.stderr
    cfg.write_text(cfg.read_text().replace("stable-rank", "stable-rnak"))
    bad = run_cli("config", "validate", cfg, env=_env(target))
    assert bad.returncode == 2 and "unknown scorer 'stable-rnak'" in bad.stderr
    assert "random" in bad.stderr and "stable-rank" in bad.stderr


def test_core_never_imports_plugins():
    """spectra_core must not import hybrid/alors/sgm or anything under plugins/ (a plugin is found only by entry point)."""
    import ast

    forbidden = {"spectra_hybrid", "spectra_alors", "spectra_sgm", "plugins"}
    for path in (REPO / "spectra_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path} imports {n}"
