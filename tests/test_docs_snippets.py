"""Tutorial code cannot rot: every ```python or ```bash block preceded by ``<!-- test -->`` (or
``<!-- test slow -->``, marked slow) in docs/ or README.md runs as written, in its own interpreter (or
``bash -e``, with this interpreter's ``spectra`` on PATH) from the repository root (one torch thread,
offline hub)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(REPO.glob("docs/**/*.md")) + [REPO / "README.md"]
BLOCK = re.compile(r"<!-- test( slow)? -->\s*\n```(python|bash)\n(.*?)\n```", re.S)


def runnable_blocks() -> list[tuple[str, Any]]:
    """(page:line, (language, code) as a pytest param, marked slow where asked) of each marked block."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            where = f"{page.relative_to(REPO)}:{text.count(chr(10), 0, m.start(3)) + 1}"
            found.append((where, pytest.param(m.group(2), m.group(3), id=where,
                                              marks=[pytest.mark.slow] if m.group(1) else [])))
    return found


BLOCKS = runnable_blocks()


def test_the_tutorials_mark_their_examples():
    pages = {where.split(":")[0] for where, _ in BLOCKS}
    assert {"docs/architecture.md", "docs/scan.md", "docs/scorers.md", "docs/getting-started.md",
            "docs/methods/hybrid.md", "docs/methods/alors.md", "docs/methods/sgm.md"} <= pages, pages


@pytest.mark.parametrize(("language", "code"), [c for _, c in BLOCKS])
def test_marked_block_runs(language, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-ec", code]
    res = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
