"""A clean `spectra train` console: known-harmless import lines filtered by logger (stderr still shown),
one progress-bar line per step, and an end-of-train summary."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import yaml
from train_fixtures import cli_env, config_dict, make_tiny_model, spectra_cmd, write_text

from spectra_core.console import KNOWN_HARMLESS, quiet_known_noise

NOISE = ("Failed to load CPU gemm_4bit_forward from kernels-community", "_C_mxfp8")


def test_the_libraries_do_print_the_noise_without_the_filters():
    """The control: importing bitsandbytes' CPU backend and torchao prints the lines spectra filters."""
    done = subprocess.run([sys.executable, "-c", "import bitsandbytes, torchao"], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert "_C_mxfp8" in done.stderr
    if "avx512_bf16" in open("/proc/cpuinfo").read():
        assert NOISE[0] in done.stderr


def test_filters_drop_only_the_known_messages(caplog):
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "x")
        logger.warning("a real problem")
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: missing")
        logging.getLogger("torchao").warning("torchao: something else")
    assert [r.getMessage() for r in caplog.records] == ["a real problem", "torchao: something else"]
    assert set(KNOWN_HARMLESS) >= {"bitsandbytes.backends.cpu.ops", "torchao"}


def test_train_console_is_clean_with_one_bar_line_per_step_and_a_summary(tmp_path):
    cfg = config_dict(make_tiny_model(tmp_path / "model"), write_text(tmp_path / "d.txt", 120), tmp_path / "run",
                      max_steps=3, report_to=[])
    cfg["quantizer"] = {"name": "bnb-nf4"}  # imports bitsandbytes' CPU backend
    cfg["exporters"] = [{"name": "peft-adapter"}, {"name": "axolotl"}]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(spectra_cmd("train", str(path)), capture_output=True, text=True, env=cli_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(n in done.stderr for n in NOISE), done.stderr[-3000:]
    renders = [r for r in re.split(r"[\r\n]", done.stderr) if r.startswith("train:")]
    for step in (1, 2):  # at most once (tqdm may skip a fast step); step 3 is drawn again when the bar closes
        assert sum(f"| {step}/3 [" in r for r in renders) <= 1, renders
    assert renders[0].startswith("train:   0%") and "| 3/3 [" in renders[-1]
    out = done.stdout
    assert re.search(r"trained: \d+ of 14 target modules \(LoRA on \d+\), [\d,]+ trainable parameters", out), out
    assert re.search(r"held-out loss: [\d.]+ \(step 0\) -> [\d.]+ \(step 3\)", out)
    assert re.search(r"wall time: \d+s; peak memory: [\d.]+ GiB RSS", out)
    assert f"export peft-adapter: {tmp_path / 'run' / 'exports' / 'adapter'}" in out
    assert f"export axolotl: {tmp_path / 'run' / 'exports' / 'axolotl.yaml'}" in out
