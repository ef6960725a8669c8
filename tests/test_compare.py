"""`spectra compare` on a tiny random Llama: 2 arms × 2 LRs × 2 seeds, real subprocesses, real files.

Arms: ``half`` (spectrum-top on half of each module type, rank 4) and ``all-lower`` (every module,
its rank solved so its trainable parameters match ``half``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from spectra_core.compare import Cell, Compare, load_compare
from spectra_core.compare.config import SplitConfig
from spectra_core.compare.solve import PlanCounter
from spectra_core.compare.splits import make_splits
from spectra_core.compare.store import ResultStore, job_key
from spectra_core.config import DataConfig
from spectra_core.errors import ConfigError
from spectra_core.pipeline import Pipeline
from train_fixtures import ROOT, cli_env, config_dict, spectra_cmd, tiny_model_dir, write_text  # noqa: F401


def compare_yaml(tmp: Path, model_dir: Path, name: str = "compare") -> Path:
    data = write_text(tmp / "corpus.txt", n=160)
    base = config_dict(model_dir, data, tmp / "unused", max_steps=3, batch_size=2, eval_batches=2)
    base["data"]["max_length"] = 24
    cfg = {"base": base, "reference": "half", "output_dir": str(tmp / name),
           "split": {"validation_fraction": 0.15, "heldout_fraction": 0.1},
           "budget": {"steps": 3, "seeds": [0, 1], "learning_rates": [1e-3, 2e-2], "tune_seeds": [0]},
           "arms": {"half": {},
                    "all-lower": {"allocator": {"name": "spectrum-top", "options": {"top_fraction": 1.0, "rank": 1,
                                                                                    "alpha": 2}},
                                  "match": "half"}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def table_body(out: Path) -> list[list[str]]:
    """The table rows without the measured columns (memory, step time) that differ between processes."""
    rows = [ln for ln in (out / "table.md").read_text().splitlines() if ln.startswith("| ")][1:]
    return [[c.strip() for c in row.split("|")[1:7]] for row in rows]


def cell_records(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["job"] == "cell" and "result" in r]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("compare")
    path = compare_yaml(tmp, tiny_model_dir)
    res = subprocess.run(spectra_cmd("compare", str(path)), env=cli_env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return path, tmp / "compare", res


def test_compare_writes_table_plot_and_json(finished):
    path, out, res = finished
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and [r["arm"] for r in summary["rows"]] == ["half", "all-lower"]
    for row in summary["rows"]:
        assert row["seeds"] == [0, 1] and row["loss"] < row["start"]
        assert row["step_time_s"] > 0 and row["peak_rss_mib"] > row["above_model_mib"] > 0
        grid = row["validation_by_lr"]
        assert row["lr"] == float(min(grid, key=grid.get))  # chosen on the validation loss
    lower = summary["rows"][1]
    assert lower["vs_reference"][2] == 2  # paired over both seeds
    pairs = summary["paired"]  # every arm against every other, the same pairing as the reference column
    assert pairs["all-lower"]["half"] == pytest.approx(lower["vs_reference"])
    assert pairs["half"]["all-lower"][0] == pytest.approx(-lower["vs_reference"][0])
    assert len(cell_records(out)) == 6  # (2 LRs on seed 0 + seed 1 at the chosen LR) × 2 arms
    table = (out / "table.md").read_text()
    assert "| half |" in table and "| all-lower |" in table and "Δ vs half (paired)" in table
    assert "| row − column | half | all-lower |" in table
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "| half |" in res.stdout


def test_equal_budget_solver_lands_within_5_percent(finished):
    _, out, _ = finished
    rows = {r["arm"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    half, lower = rows["half"]["trainable_parameters"], rows["all-lower"]["trainable_parameters"]
    assert abs(lower - half) <= 0.05 * half
    solved = rows["all-lower"]["solved"]
    assert solved["knob"] == "allocator.options.rank" and solved["value"] > 1 and solved["target"] == half


def test_an_arm_that_trains_off_budget_is_flagged(finished):
    """The solver counts the plan; what trains can differ (EVA redistributes ranks at init): the report
    then marks the arm's parameters as off budget instead of presenting an unequal comparison as equal."""
    from spectra_core.compare.report import markdown, summarize

    path, out, _ = finished
    compare = Compare(load_compare(path), out, report_only=True)
    compare.prepare()
    for arm in compare.config.arms:
        compare.resolve_budget(arm)
    rows = {r["arm"]: r for r in summarize(compare)}
    assert rows["all-lower"]["budget_miss"] is None and "off budget" not in markdown(list(rows.values()), "half")
    compare.solved["all-lower"]["target"] *= 2  # as if the arm trained half the parameters it was solved for
    rows = {r["arm"]: r for r in summarize(compare)}
    assert rows["all-lower"]["budget_miss"] == pytest.approx(-0.5, abs=0.03)
    assert "off budget**" in markdown(list(rows.values()), "half").split("| all-lower |")[1].splitlines()[0]


def test_solver_refuses_a_budget_it_cannot_reach(tiny_model_dir, tmp_path):
    cfg = config_dict(tiny_model_dir, write_text(tmp_path / "d.txt"), tmp_path / "r")
    cfg["allocator"]["options"].update(top_fraction=1.0, rank=2)
    counter = PlanCounter(Pipeline.from_dict(cfg), "allocator.options.rank")
    per_rank = counter.count(1)
    assert counter.solve(3 * per_rank, 0.05) == (3, 3 * per_rank)
    with pytest.raises(ConfigError, match="within ±5%"):
        counter.solve(int(2.5 * per_rank), 0.05)  # ranks 2 and 3 are both 20 % away
    fraction = PlanCounter(Pipeline.from_dict(cfg), "allocator.options.top_fraction")
    value, found = fraction.solve(per_rank, 0.5)
    assert 0 < value <= 1 and abs(found - per_rank) <= 0.5 * per_rank


def test_killed_parallel_compare_resumes_and_gives_the_same_table(finished, tiny_model_dir, tmp_path):
    """Two runs at once (``--jobs 2``), killed mid-run and resumed: the table equals the serial compare's."""
    _, reference_out, _ = finished
    path = compare_yaml(tmp_path, tiny_model_dir, name="killed")
    out = tmp_path / "killed"
    proc = subprocess.Popen(spectra_cmd("compare", str(path), "--jobs", "2"), env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not ((out / "results.jsonl").is_file() and len(cell_records(out)) >= 2):
        time.sleep(0.2)
    workers = []
    while time.time() < deadline and len(workers) < 2:  # two cells' subprocesses at once: kill mid-run
        workers = [p for p in Path("/proc").glob("[0-9]*") if _is_worker_of(p, proc.pid)]
        time.sleep(0.1)
    assert len(workers) == 2, "no two worker subprocesses running at once"
    os.kill(proc.pid, signal.SIGKILL)  # the compare process only: its workers must not train on for nobody
    proc.wait(timeout=60)
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    orphans = [p for p in workers if _alive(p)]
    if orphans:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not orphans, "worker subprocesses outlived their killed compare"
    finished_before = {r["key"] for r in cell_records(out)}
    assert 2 <= len(finished_before) < 6
    res = subprocess.run(spectra_cmd("compare", str(path), "-j", "2"), env=cli_env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    records = cell_records(out)
    assert len(records) == 6 and len({r["key"] for r in records}) == 6  # finished cells were not rerun
    assert table_body(out) == table_body(reference_out)  # same LRs, losses, Δ and parameters
    assert {r["parallel_jobs"] for r in records if r["key"] not in finished_before} == {2}


def _alive(proc_dir: Path) -> bool:
    try:
        return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_worker_of(proc_dir: Path, parent: int) -> bool:
    try:
        stat = (proc_dir / "stat").read_text()
        cmd = (proc_dir / "cmdline").read_bytes()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spectra_core.compare.worker" in cmd


def test_splits_are_disjoint_and_cover_the_data(tmp_path):
    data = write_text(tmp_path / "corpus.txt", n=200)
    for order in ("tail", "random"):
        s = make_splits(DataConfig(path=str(data), validation_fraction=0.1),
                        SplitConfig(validation_fraction=0.2, order=order), tmp_path / order)
        train, val, held = map(set, (s.train_records, s.validation_records, s.heldout_records))
        assert not (train & val) and not (train & held) and not (val & held)
        assert train | val | held == set(range(200)) and len(held) == 20 and len(val) == 36
        texts = {name: [json.loads(ln)["text"] for ln in Path(p).read_text().splitlines()]
                 for name, p in (("train", s.train), ("val", s.validation), ("held", s.heldout))}
        lines = data.read_text().splitlines()
        assert texts["held"] == [lines[i] for i in sorted(held)] and texts["val"] == [lines[i] for i in sorted(val)]
    assert s.heldout_records != list(range(180, 200))  # random order really shuffles
    tail = json.loads((tmp_path / "tail" / "splits.json").read_text())
    assert tail["heldout_records"] == list(range(180, 200))


def test_lr_is_chosen_on_validation_never_on_heldout(finished, tmp_path):
    """Cells train on the training split and report the held-out split; the LR choice reads only the
    validation loss: with results where validation and held-out disagree, validation wins."""
    path, out, _ = finished
    compare = Compare(load_compare(path), out)
    compare.prepare()
    for arm in compare.config.arms:
        compare.resolve_budget(arm)
    config = compare.cell_config(Cell("half", 1e-3, 0))
    assert config["data"]["path"] == compare.splits.train
    assert config["data"]["validation_path"] == compare.splits.heldout != compare.splits.validation
    store = ResultStore(tmp_path / "results.jsonl")
    compare.store = store
    for lr, val, held in ((1e-3, 2.0, 1.0), (2e-2, 1.5, 3.0)):  # held-out favours 1e-3, validation 2e-2
        key = job_key(compare._key_spec("cell", compare.cell_config(Cell("half", lr, 0))))
        store.append(key, {"job": "cell"}, {"validation_loss": val, "heldout_loss": held})
    assert compare.chosen_lr("half") == 2e-2


def test_store_ignores_a_torn_line(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append("a", {"job": "cell"}, {"x": 1})
    with open(tmp_path / "r.jsonl", "a") as fh:
        fh.write('{"key": "b", "job": "cell", "res')  # killed mid-write
    store = ResultStore(tmp_path / "r.jsonl")
    assert store.get("a") == {"x": 1} and store.get("b") is None
    store.append("b", {"job": "cell"}, {"x": 2})
    assert ResultStore(tmp_path / "r.jsonl").get("b") == {"x": 2}


def test_bad_compare_configs_are_refused_before_any_run(tmp_path, tiny_model_dir):
    path = compare_yaml(tmp_path, tiny_model_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["arms"]["all-lower"]["match"] = "nope"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match="match 'nope' is not an arm"):
        load_compare(path)
    cfg["arms"]["all-lower"]["match"] = "half"
    cfg["arms"]["half"] = {"file": "missing.yaml"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match="overlay file missing.yaml not found"):
        load_compare(path)
    cfg["arms"]["half"] = {"allocator": {"name": "no-such-allocator"}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = subprocess.run(spectra_cmd("compare", str(path), "--quick"), env=cli_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "--quick needs a `quick:` section" in res.stderr
    res = subprocess.run(spectra_cmd("compare", str(path)), env=cli_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and "arm half" in res.stderr and "no-such-allocator" in res.stderr
    assert not (tmp_path / "compare" / "results.jsonl").exists()  # nothing ran
