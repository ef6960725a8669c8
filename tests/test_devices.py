"""The device choices of the CUDA branches, as far as a CPU-only machine can check them."""

from __future__ import annotations

import pytest
import torch

from spectra_core.builtins.quantizers import device_map, resolve_compute_dtype
from spectra_core.devices import local_device
from spectra_core.errors import InputError
from spectra_core.spectral.scan import scan_device
from spectra_core.training.distributed import collective_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only branch")


@no_cuda
def test_cpu_only_machine_loads_scans_and_reduces_on_the_cpu():
    assert local_device() == torch.device("cpu")
    assert device_map() == "cpu" and resolve_compute_dtype("auto") == "float32"
    assert scan_device("auto") == torch.device("cpu") and collective_device() == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_scan_on_cuda_without_a_gpu_is_an_input_error(device):
    with pytest.raises(InputError, match="no CUDA GPU") as err:
        scan_device(device)
    assert "--device cpu" in err.value.hint


def test_unknown_scan_device_names_the_choices():
    with pytest.raises(InputError, match="unknown scan device 'gpu0'") as err:
        scan_device("gpu0")
    assert "cuda:N" in err.value.hint


@no_cuda
def test_cli_scan_device_cuda_fails_cleanly(run_cli, tmp_path):
    from train_fixtures import make_tiny_model

    model = make_tiny_model(tmp_path / "m", layers=1)
    proc = run_cli("scan", model, "--device", "cuda", "--out", tmp_path / "out", "--no-cache")
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA GPU" in proc.stderr and not (tmp_path / "out").exists()

