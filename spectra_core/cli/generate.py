"""`spectra generate RUN_DIR|MODEL_DIR [PROMPT]`: stream a completion; without a prompt, chat interactively."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from .app import app


@app.command("generate")
def generate_cmd(
    target: Path = typer.Argument(..., help="A finished run directory, or a model directory (e.g. a merged export)."),
    prompt: str = typer.Argument(None, help="The prompt; leave out for an interactive session (one prompt a line)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Tokens to generate per reply."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="Sampling temperature; 0: greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the same seed and prompt give the same text)."),
    system: str = typer.Option(None, "--system", help="A system message (chat template only)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the tokenizer's chat template."),
) -> None:
    """Stream a completion from the trained adapter on its base (groups re-tied) or from a model directory.

    The tokenizer's chat template is used when it has one (unless --raw); the interactive session keeps
    the conversation. Type an empty line or press Ctrl-D to leave it.
    """
    from transformers import set_seed

    from spectra_core.loading import load_for_inference

    loaded = load_for_inference(target)
    typer.secho(f"loaded {loaded.description}", err=True, fg=typer.colors.CYAN)
    chat = bool(getattr(loaded.tokenizer, "chat_template", None)) and not raw
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    set_seed(seed)
    if prompt is not None:
        messages = _start(system) if chat else None
        complete(loaded.model, loaded.tokenizer, prompt, messages, **options)
        return
    interactive = sys.stdin.isatty()
    messages = _start(system) if chat else None
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            break
        complete(loaded.model, loaded.tokenizer, line, messages, **options)


def _start(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


def complete(model: Any, tokenizer: Any, prompt: str, messages: list[dict[str, str]] | None, *,
             max_new_tokens: int, temperature: float, top_p: float) -> str:
    """Generate one reply, streamed to stdout; with ``messages`` (chat), the turn is appended to it."""
    import torch
    from transformers import TextStreamer

    from spectra_core.automodel import is_seq2seq

    if messages is not None:
        messages.append({"role": "user", "content": prompt})
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
    else:
        inputs = tokenizer(prompt, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False}
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, pad_token_id=pad,
                             use_cache=True, **sampling)
    reply = tokenizer.decode(out[0] if is_seq2seq(model.config) else out[0, inputs["input_ids"].shape[1]:],
                             skip_special_tokens=True)  # an encoder-decoder returns only the decoder's tokens
    if messages is not None:
        messages.append({"role": "assistant", "content": reply})
    sys.stdout.flush()
    return reply
