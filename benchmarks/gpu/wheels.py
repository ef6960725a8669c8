"""The wheels the GPU check carries to a bare CUDA machine, in ``.whl/`` (git-ignored).

Here (with the project's venv, network or local index available)::

    .venv/bin/python benchmarks/gpu/wheels.py          # download + build into .whl/, print sizes, check the limit

There (standard library only; ``benchmarks/gpu/run.sh`` calls it)::

    python3 benchmarks/gpu/wheels.py --verify          # .whl/ matches this checkout's sources

The machine's image has torch (CUDA 13), accelerate, safetensors, tokenizers, pluggy, typer, rich,
tqdm, pyyaml, numpy, pyarrow and pandas, but not bitsandbytes, pydantic or datasets, and an older
transformers; peft is replaced by the pinned one. Versions are the development pins
(``requirements-dev.txt``), or for dependencies not pinned there, the ones installed in this venv;
torchao (the optional ``torchao-nf4`` quantizer) comes too, so its CUDA test runs.
bitsandbytes is slimmed to its CPU and CUDA 13 libraries (the image's torch is cu130): the full
wheel alone (43 MB) nearly fills the 64 MiB a run may carry.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
DIGEST = WHEELS / "SOURCES.sha256"
LIMIT = 64 << 20  # what one device run may carry: working tree + carried paths
PINNED = ("bitsandbytes", "transformers", "peft", "pydantic", "datasets", "torchao")
UNPINNED = ("pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "dill", "multiprocess")
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[a for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                            "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
              for a in ("--platform", tag)]]
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
SOURCES = ("pyproject.toml", "spectra_core", "plugins")


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the package sources (what the project wheels are built from)."""
    h = hashlib.sha256()
    for top in SOURCES:
        base = root / top
        files = [base] if base.is_file() else sorted(
            p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and not any(part.endswith(".egg-info") for part in p.parts) and p.suffix != ".pyc")
        for path in files:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def pins() -> list[str]:
    """``name==version`` for every carried third-party distribution."""
    from importlib.metadata import version

    dev = {}
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        name, sep, ver = line.split("#")[0].strip().partition("==")
        if sep:
            dev[name.split("[")[0].lower()] = ver
    return [f"{n}=={dev[n]}" for n in PINNED] + [f"{n}=={version(n)}" for n in UNPINNED]


def slim_bitsandbytes(wheel: Path) -> None:
    """Rewrite the wheel without the native libraries the CUDA 13 machine never loads (RECORD updated)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        def dropped(name: str) -> bool:
            base = name.rsplit("/", 1)[-1]
            return base.startswith("libbitsandbytes_") and base not in BNB_KEEP

        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [ln for ln in data.decode().splitlines() if not dropped(ln.split(",")[0])]
                data = ("\n".join(lines) + "\n").encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)


def tree_bytes() -> int:
    """Bytes of what a device run sends besides carried paths: tracked + untracked, not ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return sum((ROOT / p).stat().st_size for p in out.split("\0") if p and (ROOT / p).is_file())


def build() -> int:
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "--no-deps", *PLATFORM, "-d", str(WHEELS), *pins()], check=True)
    slim_bitsandbytes(next(WHEELS.glob("bitsandbytes-*.whl")))
    projects = [str(ROOT), *sorted(str(p) for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(WHEELS), *projects],
                   check=True)
    DIGEST.write_text(source_digest() + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(WHEELS.glob("*.whl"))}
    for name, size in sizes.items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    carried, tree = sum(sizes.values()), tree_bytes()
    total = carried + tree
    print(f"{carried / 2**20:8.2f} MiB  wheels ({len(sizes)})\n{tree / 2**20:8.2f} MiB  working tree\n"
          f"{total / 2**20:8.2f} MiB  total of the {LIMIT >> 20} MiB a run may carry")
    if total > LIMIT:
        print("over the limit: slim a wheel further or leave one out", file=sys.stderr)
        return 1
    return 0


def verify() -> int:
    """Exit 2 with a clear message when .whl/ is missing, stale or holds two versions of a package."""
    if not DIGEST.is_file():
        print(f"{DIGEST} is missing: run `.venv/bin/python benchmarks/gpu/wheels.py` on the dev machine "
              "and carry .whl", file=sys.stderr)
        return 2
    if DIGEST.read_text().strip() != source_digest():
        print("the wheels in .whl/ were built from other sources than this checkout: rebuild them with "
              "`.venv/bin/python benchmarks/gpu/wheels.py`", file=sys.stderr)
        return 2
    names = [p.name.split("-")[0].lower() for p in WHEELS.glob("*.whl")]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        print(f".whl/ holds two versions of {', '.join(twice)}: rebuild it", file=sys.stderr)
        return 2
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verify", action="store_true", help="only check .whl/ against this checkout (stdlib only)")
    args = ap.parse_args()
    return verify() if args.verify else build()


if __name__ == "__main__":
    sys.exit(main())
