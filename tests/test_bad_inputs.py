"""Bad inputs against the real CLI (subprocesses, real files, no mocks): every case exits 2, names the
bad input, says the fix, prints no traceback, and leaves every file of the watched directories
byte-identical; an earlier finished run (shared by all cases) always survives.

One small run is trained once for the module (tiny random Llama, 2 steps); cases that need a changed
run work on a copy. Most cases fail before any model is loaded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from reliability_fixtures import Ctx, ctx, read_only, tiny_model_dir, tree  # noqa: F401
from safetensors.torch import load_file, save_file
from train_fixtures import instruction_rows


# ----- the call of one case ----------------------------------------------------------------------
@dataclass
class Call:
    args: list[Any]
    names: list[str]  # what the message must name (the bad input)
    watch: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    fix: bool = True  # a SpectraError prints "fix: ..." (click usage errors print "Usage" instead)
    around: Callable[[], contextlib.AbstractContextManager] | None = None


# ----- case builders ---------------------------------------------------------------------------------
def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def config_file(content: str | bytes, *names: str, watch_run: bool = True) -> Callable[[Ctx, Path], Call]:
    """`spectra train FILE --overwrite` on a config file with ``content`` (formatted with the run dir)."""
    def build(c: Ctx, tmp: Path) -> Call:
        text = content.format(run=c.run, model=c.model, data=c.data) if isinstance(content, str) else content
        path = _write(tmp / "bad.yaml", text)
        return Call(["train", path, "--overwrite"], [n.format(path=path) for n in names], [c.run])
    return build


def override(*items: str, names: list[str]) -> Callable[[Ctx, Path], Call]:
    def build(c: Ctx, tmp: Path) -> Call:
        return Call(["train", c.config(tmp), *items, "--overwrite"], names, [c.run])
    return build


def overwrite_with(names: list[str], **changes: Any) -> Callable[[Ctx, Path], Call]:
    """`train --overwrite` of the finished run with a broken config: the earlier run must survive."""
    def build(c: Ctx, tmp: Path) -> Call:
        resolved = {k: (v(c, tmp) if callable(v) else v) for k, v in changes.items()}
        path = c.config(tmp, **resolved)
        return Call(["train", path, "--overwrite"], [n.format(tmp=tmp) for n in names], [c.run])
    return build


def data_file(name: str, content: str | bytes) -> Callable[[Ctx, Path], str]:
    return lambda c, tmp: str(_write(tmp / name, content))


def model_variant(change: Callable[[Path], None]) -> Callable[[Ctx, Path], str]:
    def make(c: Ctx, tmp: Path) -> str:
        model = c.copy_model(tmp)
        change(model)
        return str(model)
    return make


def _tensors(model: Path, edit: Callable[[dict], dict]) -> None:
    tensors = load_file(model / "model.safetensors")
    save_file(edit(tensors), model / "model.safetensors", metadata={"format": "pt"})


def _nan_weight(model: Path) -> None:
    def edit(t: dict) -> dict:
        t["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
        return t
    _tensors(model, edit)


def _only_1d(model: Path) -> None:
    _tensors(model, lambda t: {k: v for k, v in t.items() if v.dim() == 1})


def _wrong_shape(model: Path) -> None:
    def edit(t: dict) -> dict:
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:-8].clone()
        return t
    _tensors(model, edit)


def _no_config(model: Path) -> None:
    (model / "config.json").unlink()


def _no_chat_template(model: Path) -> None:
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))


def run_variant(change: Callable[[Path], None], *extra: str, names: list[str],
                args: Callable[[Ctx, Path, Path], list[Any]] | None = None) -> Callable[[Ctx, Path], Call]:
    """A command on a changed copy of the finished run (default: `train CONFIG --resume` on it)."""
    def build(c: Ctx, tmp: Path) -> Call:
        run = c.copy_run(tmp)
        change(run)
        argv = args(c, tmp, run) if args else ["train", c.config(tmp, output_dir=str(run)), *extra]
        return Call(argv, [n.format(run=run) for n in names], [run])
    return build


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _stale_plan(run: Path) -> None:
    plan = json.loads((run / "plan.json").read_text())
    first = next(m for m in plan["modules"].values() if m["active"])
    first["rank"] = first["rank"] * 2
    (run / "plan.json").write_text(json.dumps(plan))


def export_of(change: Callable[[Path], None], *names: str, only: list[str] = ()) -> Callable[[Ctx, Path], Call]:
    extra = [a for o in only for a in ("--only", o)]
    return run_variant(change, names=list(names), args=lambda c, tmp, run: ["export", run, *extra])


def scan_call(args: Callable[[Ctx, Path], list[Any]], names: list[str], *, fix: bool = True,
              watch: Callable[[Ctx, Path], list[Path]] = lambda c, tmp: [c.scan]) -> Callable[[Ctx, Path], Call]:
    def build(c: Ctx, tmp: Path) -> Call:
        argv = [str(a) for a in args(c, tmp)]
        return Call(argv, [n.format(tmp=tmp, scan=c.scan) for n in names], watch(c, tmp),
                    env={"SPECTRA_SCAN_CACHE": str(c.cache)}, fix=fix)
    return build


def _foreign_dir(tmp: Path) -> Path:
    d = tmp / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my own notes")
    return d


def _ro_dir(tmp: Path) -> Path:
    d = tmp / "locked"
    d.mkdir(exist_ok=True)
    return d


def read_only_call(build_args: Callable[[Ctx, Path, Path], list[Any]], names: list[str]) -> Callable[[Ctx, Path], Call]:
    def build(c: Ctx, tmp: Path) -> Call:
        locked = _ro_dir(tmp)
        argv = build_args(c, tmp, locked)
        return Call(argv, [n.format(locked=locked) for n in names], [locked, c.scan],
                    env={"SPECTRA_SCAN_CACHE": str(c.cache)}, around=lambda: read_only(locked))
    return build


def _ckpt_safetensors(model: Path) -> Path:
    return model / "model.safetensors"


def _pickle_dir(tmp: Path) -> Path:
    d = tmp / "pickled"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return d


def _truncated_checkpoint(c: Ctx, tmp: Path) -> Path:
    model = c.copy_model(tmp)
    _truncate(model / "model.safetensors")
    return model


def _only_1d_checkpoint(c: Ctx, tmp: Path) -> Path:
    model = c.copy_model(tmp)
    _only_1d(model)
    return model


def _without_checkpoints(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")


def _unfinished_without_checkpoints(run: Path) -> None:
    for entry in ("checkpoints", "final", "exports"):
        shutil.rmtree(run / entry)


def _no_config_yaml(run: Path) -> None:
    (run / "config.yaml").unlink()


CHAT_ROWS = "".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                             {"role": "assistant", "content": f"hello {i}"}]}) + "\n"
                    for i in range(20))
INSTRUCTION_ROWS = "".join(json.dumps(r) + "\n" for r in instruction_rows(20))
BASE_CFG = "model: {{source: {model}}}\nquantizer: {{name: none}}\nscorer: {{name: random}}\n" \
           "allocator: {{name: spectrum-top}}\ndata: {{path: {data}}}\noutput_dir: {run}\n"

CASES: dict[str, Callable[[Ctx, Path], Call]] = {
    # --- the config file itself
    "config-missing": lambda c, tmp: Call(["train", tmp / "nope.yaml", "--overwrite"], ["nope.yaml"], [c.run]),
    "config-is-directory": lambda c, tmp: Call(["train", tmp, "--overwrite"], [f"{tmp} is a directory"], [c.run]),
    "config-not-utf8": config_file(b"model:\n  source: caf\xe9\n", "not UTF-8", "bad.yaml"),
    "config-empty": config_file("", "bad.yaml is empty"),
    "config-only-comments": config_file("# a config\n\n# to come\n", "bad.yaml is empty"),
    "config-yaml-syntax": config_file("model: [unclosed\n", "bad.yaml is not valid YAML", "line"),
    "config-top-level-list": config_file("- model\n- data\n", "top level must be a mapping"),
    "config-duplicate-top-key": config_file(BASE_CFG + "output_dir: elsewhere\n", "'output_dir' is given twice",
                                            "lines 6 and 7"),
    "config-duplicate-nested-key": config_file(BASE_CFG + "training:\n  max_steps: 3\n  seed: 1\n  max_steps: 4\n",
                                               "'max_steps' is given twice", "lines 8 and 10"),
    "config-unknown-key": config_file(BASE_CFG + "trainig: {{max_steps: 3}}\n", "trainig", "unknown key"),
    "config-unknown-method": config_file(BASE_CFG + "method: hybird\n", "unknown method 'hybird'", "available:"),
    "config-unknown-scorer": override("scorer.name=spectrumm", names=["unknown scorer 'spectrumm'", "available:"]),
    "config-wrong-type": override("training.max_steps=many", names=["training.max_steps", "integer"]),
    "config-negative-lr": override("training.learning_rate=-1", names=["training.learning_rate", "greater than 0"]),
    "config-model-path-missing": override("model.source=/no/such/model", names=["/no/such/model", "does not exist"]),
    "config-model-dir-without-config-json": overwrite_with(["has no config.json"],
                                                           model__source=model_variant(_no_config)),
    # --- methods and strategies of plugins that are installed but not loaded
    "method-of-autoload-disabled-plugin": lambda c, tmp: Call(
        ["train", _write(tmp / "m.yaml", BASE_CFG.format(model=c.model, data=c.data, run=c.run)
                         .replace("allocator: {name: spectrum-top}\n", "") + "method: hybrid\n"), "--overwrite"],
        ["'hybrid' is provided by plugin 'hybrid'", "SPECTRA_DISABLE_PLUGIN_AUTOLOAD"], [c.run],
        env={"SPECTRA_DISABLE_PLUGIN_AUTOLOAD": "1"}),
    "method-not-in-SPECTRA_PLUGINS": lambda c, tmp: Call(
        ["train", _write(tmp / "m.yaml", BASE_CFG.format(model=c.model, data=c.data, run=c.run)
                         .replace("allocator: {name: spectrum-top}\n", "") + "method: hybrid\n"), "--overwrite"],
        ["'hybrid' is provided by plugin 'hybrid'", "SPECTRA_PLUGINS=alors,hybrid"], [c.run],
        env={"SPECTRA_PLUGINS": "alors"}),
    "allocator-of-autoload-disabled-plugin": lambda c, tmp: Call(
        ["train", c.config(tmp), "--overwrite"], ["unknown allocator 'spectrum-top'", "plugin 'hybrid'"], [c.run],
        env={"SPECTRA_DISABLE_PLUGIN_AUTOLOAD": "1"}),
    # --- overrides
    "override-index-out-of-range": override("exporters.5.name=x", names=["exporters.5.name=x", "no index 5"]),
    "override-index-into-missing-list": override("rebalancer.3=x", names=["rebalancer.3=x", "no index 3"]),
    "override-yaml-syntax": override("training.max_steps=[1", names=["training.max_steps=[1", "not valid YAML"]),
    "override-without-equals": override("training.max_steps", names=["training.max_steps", "key.sub=value"]),
    "override-empty-key": override("=5", names=["'=5'", "key.sub=value"]),
    "override-empty-part": override("training..max_steps=5", names=["training..max_steps=5", "key.sub=value"]),
    "override-into-a-value": override("training.max_steps.x=1", names=["training.max_steps.x=1", "not a section"]),
    "override-list-by-name": override("exporters.first.name=x", names=["exporters.first.name=x", "not an index"]),
    # --- run directory and flags
    "resume-and-overwrite": lambda c, tmp: Call(["train", c.config(tmp), "--resume", "--overwrite"],
                                                ["--resume and --overwrite"], [c.run]),
    "existing-run-without-overwrite": lambda c, tmp: Call(["train", c.config(tmp)], ["already holds a run"], [c.run]),
    "resume-finished-run-without-checkpoints": run_variant(_without_checkpoints, "--resume",
                                                           names=["{run}", "finished and kept no checkpoint"]),
    "resume-run-without-any-checkpoint": run_variant(_unfinished_without_checkpoints, "--resume",
                                                     names=["{run}", "has no checkpoint"]),
    "resume-nothing-there": run_variant(_no_config_yaml, "--resume", names=["nothing to resume in {run}"]),
    "resume-changed-config": run_variant(lambda r: None, "training.max_steps=5", "--resume",
                                         names=["training.max_steps: 2 (run) -> 5 (now)"]),
    "output-dir-is-a-file": lambda c, tmp: Call(
        ["train", c.config(tmp, output_dir=str(_write(tmp / "afile", "x")))], [f"output_dir {tmp / 'afile'} is a file"],
        [tmp]),
    "output-dir-under-a-file": lambda c, tmp: Call(
        ["train", c.config(tmp, output_dir=str(_write(tmp / "afile", "x") / "run"))], [f"{tmp / 'afile'}", "is a file"],
        [tmp]),
    "output-dir-read-only": read_only_call(lambda c, tmp, locked: ["train", c.config(tmp, output_dir=str(locked / "run"))],
                                           ["output_dir", "{locked}", "not writable"]),
    # --- `train --overwrite` with bad data/model: checked before the earlier run is touched
    "overwrite-data-missing": overwrite_with(["data file not found", "nothing.txt"],
                                             data__path=lambda c, tmp: str(tmp / "nothing.txt")),
    "overwrite-data-empty": overwrite_with(["empty.txt is empty"], data__path=data_file("empty.txt", "")),
    "overwrite-data-whitespace": overwrite_with(["blank.txt is empty"], data__path=data_file("blank.txt", "\n \n\t\n")),
    "overwrite-data-binary-txt": overwrite_with(["blob.txt is binary"],
                                                data__path=data_file("blob.txt", bytes(range(256)) * 8)),
    "overwrite-data-not-utf8": overwrite_with(["latin.txt is not UTF-8"],
                                              data__path=data_file("latin.txt", "caf\xe9\n".encode("latin-1") * 50)),
    "overwrite-data-unsupported-type": overwrite_with(["notes.docx: unsupported data file type"],
                                                      data__path=data_file("notes.docx", "words")),
    "overwrite-data-is-directory": overwrite_with(["is a directory"], data__path=lambda c, tmp: str(tmp)),
    "overwrite-data-bad-jsonl": overwrite_with(["broken.jsonl", "one JSON object per line"],
                                               data__path=data_file("broken.jsonl", "{not json}\n{also not}\n")),
    "overwrite-data-missing-column": overwrite_with(
        ["no column 'body'", "data.text_field"], data__path=data_file("rows.jsonl", INSTRUCTION_ROWS),
        data__text_field="body"),
    "overwrite-instruction-missing-column": overwrite_with(
        ["no column 'question'"], data__path=data_file("rows.jsonl", INSTRUCTION_ROWS),
        data__format="instruction", data__prompt_field="question"),
    "overwrite-data-one-record": overwrite_with(["1 record(s)", "at least 2"],
                                                data__path=data_file("one.txt", "Only one line here.\n")),
    "overwrite-validation-file-missing": overwrite_with(["data file not found", "val.txt"],
                                                        data__validation_path=lambda c, tmp: str(tmp / "val.txt")),
    "overwrite-chat-without-template": overwrite_with(
        ["chat", "no chat template"], data__path=data_file("chat.jsonl", CHAT_ROWS), data__format="chat",
        model__source=model_variant(_no_chat_template)),
    "overwrite-model-shape-mismatch": overwrite_with(["model.layers.1.mlp.up_proj.weight", "config.json"],
                                                     model__source=model_variant(_wrong_shape)),
    "overwrite-model-only-1d-weights": overwrite_with(["no weight for", "only 1-D tensors"],
                                                      model__source=model_variant(_only_1d)),
    # --- failures after the earlier run was moved aside: it is restored byte for byte
    "overwrite-nan-base-weights": overwrite_with(["NaN/Inf", "model.layers.0.self_attn.q_proj.weight"],
                                                 model__source=model_variant(_nan_weight)),
    "fresh-run-nan-base-weights-leaves-no-run-dir": lambda c, tmp: Call(
        ["train", c.config(tmp, output_dir=str(tmp / "fresh"), model__source=model_variant(_nan_weight)(c, tmp))],
        ["NaN/Inf", "model.layers.0.self_attn.q_proj.weight"], [tmp]),
    # --- export
    "export-truncated-adapter": export_of(lambda r: _truncate(r / "final" / "adapter_model.safetensors"),
                                          "final/adapter_model.safetensors", "truncated"),
    "export-stale-adapter-names-final": export_of(_stale_plan, "{run}/final", "does not match plan.json"),
    "export-missing-final": export_of(lambda r: shutil.rmtree(r / "final"), "missing final"),
    "export-unknown-exporter": export_of(lambda r: None, "unknown exporter 'safetensorz'", only=["safetensorz"]),
    "export-not-a-run": lambda c, tmp: Call(["export", tmp], ["not a finished spectra run"], [tmp]),
    "export-read-only-exports": lambda c, tmp: (lambda run: Call(
        ["export", run], ["export directory", "not writable"], [run], around=lambda: read_only(run / "exports")))(
        c.copy_run(tmp)),
    # --- scan
    "scan-out-is-a-file": scan_call(lambda c, tmp: [c.model, "--out", _write(tmp / "out.json", "{}")],
                                    ["--out {tmp}/out.json is a file"], watch=lambda c, tmp: [tmp, c.scan]),
    "scan-out-holds-other-files": scan_call(lambda c, tmp: [c.model, "--out", _foreign_dir(tmp)],
                                            ["notes.txt", "not a scan's"], watch=lambda c, tmp: [tmp, c.scan]),
    "scan-out-read-only": read_only_call(lambda c, tmp, locked: ["scan", c.model, "--out", locked / "scan"],
                                         ["--out", "not writable"]),
    "scan-only-1d-checkpoint": scan_call(lambda c, tmp: [_only_1d_checkpoint(c, tmp), "--out", c.scan],
                                         ["no 2-D weight matrix"]),
    "scan-truncated-checkpoint": scan_call(lambda c, tmp: [_truncated_checkpoint(c, tmp), "--out", c.scan],
                                           ["model.safetensors", "truncated"]),
    "scan-pickle-only": scan_call(lambda c, tmp: [_pickle_dir(tmp), "--out", c.scan], ["pickle", "safetensors"]),
    "scan-model-missing": scan_call(lambda c, tmp: [tmp / "no-model", "--out", c.scan], ["no-model"]),
    "scan-top-percent-zero": scan_call(lambda c, tmp: [c.model, "--out", c.scan, "--top-percent", "0"],
                                       ["top-percent"]),
    "scan-option-not-key-value": scan_call(lambda c, tmp: [c.model, "--out", c.scan, "--option", "novalue"],
                                           ["'novalue' is not key=value"]),
    "scan-types-match-nothing": scan_call(lambda c, tmp: [c.model, "--out", c.scan, "--types", "conv9"],
                                          ["--types conv9", "available types"]),
    "scan-unknown-scorer": scan_call(lambda c, tmp: [c.model, "--out", c.scan, "--scorer", "snr9"], ["snr9"]),
    "scan-unknown-scorer-option": scan_call(lambda c, tmp: [c.model, "--out", c.scan, "--option", "colour=red"],
                                            ["colour"]),
    # --- select
    "select-input-missing": scan_call(lambda c, tmp: ["--top-percent", "50", tmp / "none.json"], ["none.json"]),
    "select-input-not-scores": scan_call(lambda c, tmp: [_write(tmp / "x.json", "[1, 2]"), "--top-percent", "50"],
                                         ["x.json"]),
    "select-percent-out-of-range": scan_call(lambda c, tmp: [c.scan / "scores.json", "--top-percent", "150"],
                                             ["top-percent"]),
    "select-out-under-a-file": scan_call(
        lambda c, tmp: [c.scan / "scores.json", "--top-percent", "50", "--out", _write(tmp / "f", "x") / "o.yaml"],
        ["{tmp}/f", "is a file"], watch=lambda c, tmp: [tmp, c.scan]),
    "select-out-read-only": read_only_call(
        lambda c, tmp, locked: ["select", c.scan / "scores.json", "--top-percent", "50", "--out", locked / "s.yaml"],
        ["--out", "not writable"]),
    # --- plan
    "plan-out-is-a-directory": lambda c, tmp: Call(["plan", c.config(tmp), "--out", tmp], [f"--out {tmp} is a directory"],
                                                   [tmp, c.run]),
    "plan-out-read-only": read_only_call(lambda c, tmp, locked: ["plan", c.config(tmp), "--out", locked / "plan.json"],
                                         ["--out", "not writable"]),
}
# select/scan builders give their arguments without the command name
for _name in [n for n in CASES if n.startswith(("scan-", "select-"))]:
    _build = CASES[_name]

    def _with_command(c: Ctx, tmp: Path, _build=_build, _cmd=_name.split("-")[0]) -> Call:
        call = _build(c, tmp)
        if call.args[:1] != [_cmd]:
            call.args = [_cmd, *call.args]
        return call

    CASES[_name] = _with_command


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ctx, run_cli, tmp_path):
    call = CASES[name](ctx, tmp_path)
    watched = list(dict.fromkeys([*call.watch, ctx.run, ctx.scan]))
    with call.around() if call.around else contextlib.nullcontext():
        before = {d: tree(d) for d in watched}
        res = run_cli(*call.args, env={"SPECTRA_SCAN_CACHE": str(ctx.cache), **call.env}, cwd=tmp_path)
        after = {d: tree(d) for d in watched}
    output = res.stdout + res.stderr
    assert res.returncode == call.code, output
    assert "Traceback" not in output, output
    for text in call.names:
        assert text in output, output
    assert ("fix:" if call.fix else "Usage") in output, output
    for d in watched:
        assert after[d] == before[d], f"{d} changed: {sorted(set(after[d].items()) ^ set(before[d].items()))[:6]}"


def test_there_are_enough_cases():
    assert len(CASES) >= 60
