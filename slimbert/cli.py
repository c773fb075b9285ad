"""The `slimbert` command: parse, call the API, print with rich, map user errors to exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress BERT-family encoders into MobileBERT-style students.")
console = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the slimbert version."""
    console.print(f"slimbert {__version__}")


@app.command()
def count(
    model: str = typer.Argument(..., help="A preset name (e.g. mobilebert, bert_base) or a saved model directory."),
    seq: int = typer.Option(128, "--seq", min=1, help="Sequence length for FLOPs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameters and FLOPs per component, and the attention/FFN parameter ratio."""
    from .models import PRESETS, SlimBertConfig, count as count_fn, preset

    if model in PRESETS:
        config = preset(model)
    elif (Path(model) / "config.json").is_file():
        try:
            config = SlimBertConfig.from_pretrained(model)
        except (ValueError, OSError) as e:
            fail(f"{model}/config.json is not a slimbert config: {e}")
    else:
        fail(f"{model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a directory with config.json")
    c = count_fn(config, seq_len=seq)
    if as_json:
        print(json.dumps(c.as_dict(), indent=2))
        return
    table = Table(title=f"{model} @ seq {seq}")
    table.add_column("component")
    table.add_column("params", justify="right")
    table.add_column("GFLOPs", justify="right")
    for k in c.params:
        table.add_row(k, f"{c.params[k]:,}", f"{c.flops[k] / 1e9:.3f}")
    table.add_row("total", f"{c.total_params:,}", f"{c.total_flops / 1e9:.3f}", style="bold")
    console.print(table)
    console.print(f"attention/FFN parameter ratio: {c.attention_ffn_ratio:.3f} (paper's best range 0.4-0.6)")


if __name__ == "__main__":
    app()
