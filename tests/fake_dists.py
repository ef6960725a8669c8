"""Build real (uninstalled) distributions on disk: a module plus a ``*.dist-info`` with entry points.

Putting the folder on PYTHONPATH makes importlib.metadata discover them exactly as it discovers a
pip-installed plugin; nothing in spectra is patched.
"""

from __future__ import annotations

from pathlib import Path


def make_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "1.0") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for module, code in modules.items():
        (root / f"{module}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[spectra]\n{lines}\n")
    return root


SCORER_PLUGIN = '''
from spectra_core import ModuleScore, Scorer, Scores, hookimpl

class {cls}(Scorer):
    """A test scorer."""
    name = "{name}"
    def score(self, weights):
        return Scores(scorer=self.name, modules=[
            ModuleScore(name=n, type=n, score=float(w.abs().sum())) for n, w in weights])

@hookimpl
def spectra_scorers():
    return [{cls}]
'''
