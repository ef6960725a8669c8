"""mkdocs hook: fill generated reference pages (config schema, CLI help) at build time."""

from __future__ import annotations

import json
from typing import Any

import typer
import typer.core
import typer.main

MARK_CONFIG = "<!-- generated:config -->"
MARK_CLI = "<!-- generated:cli -->"


def _config_reference() -> str:
    from spectra_core.config import config_model

    schema = config_model().model_json_schema()
    defs = schema.get("$defs", {})
    out = []
    for key, prop in schema["properties"].items():
        out.append(f"### `{key}`\n")
        if "description" in prop:
            out.append(prop["description"] + "\n")
        refs = _refs(prop)
        for ref in refs:
            d = defs[ref]
            title = d.get("title", ref)
            out.append(f"**{title}**" + (f" — {d['description']}" if d.get("description") else "") + "\n")
            rows = _rows(d, defs)
            if rows:
                out.append("| key | type | default | description |\n|---|---|---|---|")
                out.extend(rows)
                out.append("")
    out.append("\n??? note \"Full JSON schema (`spectra config schema`)\"\n")
    out.append("    ```json\n" + "\n".join("    " + line for line in json.dumps(schema, indent=2).splitlines())
               + "\n    ```\n")
    return "\n".join(out)


def _refs(prop: dict[str, Any]) -> list[str]:
    found: list[str] = []
    if "$ref" in prop:
        found.append(prop["$ref"].split("/")[-1])
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in prop.get(key, []):
            found.extend(_refs(sub))
    if "items" in prop:
        found.extend(_refs(prop["items"]))
    return found


def _rows(d: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    rows = []
    for name, p in d.get("properties", {}).items():
        if name == "options":
            for ref in _refs(p):
                rows.extend(_rows(defs[ref], defs))
            continue
        typ = p.get("type") or " | ".join(str(x.get("type", x.get("const", "…"))) for x in p.get("anyOf", []))
        if "enum" in p:
            typ = " \\| ".join(map(str, p["enum"]))
        if "const" in p:
            typ = f"`{p['const']}`"
        default = json.dumps(p["default"]) if "default" in p else ""
        desc = p.get("description", "").replace("\n", " ")
        rows.append(f"| `{name}` | {typ.replace('|', chr(92) + '|')} | {default} | {desc} |")
    return rows


def _cli_reference() -> str:
    from spectra_core.cli import _register, app

    _register()
    typer.core.HAS_RICH = False  # plain-text help for the page
    root = typer.main.get_command(app)
    out: list[str] = []

    def walk(cmd: Any, path: list[str]) -> None:
        ctx = typer.Context(cmd, info_name=" ".join(path))
        out.append(f"### `{' '.join(path)}`\n\n```text\n{cmd.get_help(ctx)}\n```\n")
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])

    walk(root, ["spectra"])
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARK_CONFIG in markdown:
        markdown = markdown.replace(MARK_CONFIG, _config_reference())
    if MARK_CLI in markdown:
        markdown = markdown.replace(MARK_CLI, _cli_reference())
    return markdown
