"""Write spectra_core/tasks/kjv_proverbs_cloze.jsonl: a small multiple-choice task from the KJV (public domain).

Each item is a verse of Proverbs without its last word; the choices are that word and three last words of
other verses (seeded). Source: Debian's bible-kjv (`apt-get install bible-kjv`), read with
`bible -p /usr/lib "prov1:1-prov31:31"`. Proverbs is not in the bundled training text (Genesis, Exodus).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "spectra_core" / "tasks" / "kjv_proverbs_cloze.jsonl"
ITEMS = 100


def verses(text: str) -> list[str]:
    """Verse texts: a line starting with a verse number begins a verse, other lines continue it."""
    out: list[str] = []
    for line in text.splitlines():
        match = re.match(r"^\s+\d+ (.*)$", line)
        if match:
            out.append(match[1].strip())
        elif line.strip() and out and not line.startswith("Proverbs"):
            out[-1] += " " + line.strip()
    return out


def main() -> None:
    text = subprocess.run(["bible", "-p", "/usr/lib", "prov1:1-prov31:31"], capture_output=True, text=True,
                          check=True).stdout
    items = []
    for verse in verses(text):
        head, _, last = verse.rstrip(".;:,!?").rpartition(" ")
        if head and re.fullmatch(r"[a-z]{4,}", last):
            items.append((head, last))
    rng = random.Random(0)
    rng.shuffle(items)
    words = sorted({w for _, w in items})
    rows = []
    for head, answer in items[:ITEMS]:
        choices = [answer] + rng.sample([w for w in words if w != answer], 3)
        rng.shuffle(choices)
        rows.append({"context": head, "choices": choices, "label": choices.index(answer)})
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} items to {OUT}")


if __name__ == "__main__":
    main()
