"""The `gpr` command line. Bad input exits 2 with one line naming file, row and field."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gpr.config import GprConfig, load_config
from gpr.errors import GprInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GPR: one generative model for ad recommendation.",
)
world_app = typer.Typer(no_args_is_help=True, help="The simulated ad world.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: import and inspect.")
import_app = typer.Typer(
    no_args_is_help=True, help="Import public datasets into the common schema."
)
app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
console = Console(stderr=True)

PresetOpt = Annotated[str | None, typer.Option("--preset", help="tiny | small | base | large")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of config fields")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: section.field=value")]
SeedOpt = Annotated[int | None, typer.Option("--seed")]


def _config(
    preset: str | None, config: Path | None, sets: list[str] | None, seed: int | None
) -> GprConfig:
    return load_config(preset=preset, file=config, overrides=sets, seed=seed)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


@world_app.command("generate")
def world_generate(
    out: Annotated[Path, typer.Option("--out", help="output directory")],
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Generate users, items (organic + ads), events and the hidden truth into OUT."""
    from gpr.world import generate_world

    cfg = _config(preset, config, sets, seed)

    def progress(day: int, s: dict[str, Any]) -> None:
        console.print(
            f"day {day:>3}: {s['requests']:>8} requests, {s['clicks']:>6} clicks, "
            f"{s['conversions']:>5} conversions"
        )

    m = generate_world(cfg.world, cfg.seed, out, cfg.preset, progress=progress)
    rows, st = m["rows"], m["stats"]
    console.print(
        f"[bold]world[/] {cfg.preset} seed {cfg.seed}: {rows['users']} users, "
        f"{rows['organic']} organic, {rows['ads']} ads, {rows['events']} events, "
        f"{rows['requests']} requests in {m['seconds']} s; "
        f"logging CTR {st['ctr']:.2%}, CVR {st['cvr']:.2%}, CTCVR {st['ctcvr']:.3%} -> {out}"
    )


@world_app.command("calibrate")
def world_calibrate(data: Annotated[Path, typer.Option("--data")], n: int = 2000) -> None:
    """Random vs logging vs oracle under the hidden truth (WORLD.md's calibration check)."""
    from gpr.world.calibrate import calibrate

    _print_json(calibrate(data, n_requests=n))


def _imported(m: dict[str, Any], out: Path) -> None:
    r = m["rows"]
    n = f"{r['users']} users, {r['items']} items, {r['interactions']} interactions"
    console.print(f"imported {n} -> {out}")


@import_app.command("amazon")
def import_amazon_cmd(
    seq: Annotated[Path, typer.Option("--seq", help="sequence file: user item item ...")],
    meta: Annotated[Path, typer.Option("--meta", help="item_meta.tsv")],
    out: Annotated[Path, typer.Option("--out")],
    name: Annotated[str | None, typer.Option("--name")] = None,
) -> None:
    """Amazon 2014 5-core (Beauty, Sports) with the leave-one-out split."""
    from gpr.data.amazon import import_amazon

    m = import_amazon(seq, meta, out, name)
    _imported(m, out)


@import_app.command("ml100k")
def import_ml100k_cmd(
    out: Annotated[Path, typer.Option("--out")],
    data_dir: Annotated[
        Path, typer.Option("--dir", help="folder with u.data, u.item, u.user")
    ] = Path("../shared/data/movielens_100k"),
) -> None:
    """MovieLens-100K as implicit time-ordered sequences with the leave-one-out split."""
    from gpr.data.movielens import import_ml100k

    m = import_ml100k(data_dir, out)
    _imported(m, out)


@data_app.command("summary")
def data_summary(data: Annotated[Path, typer.Argument(help="dataset directory")]) -> None:
    """Validate a dataset directory and print its summary."""
    from gpr.data.summary import summarize

    s = summarize(data)
    table = Table(title=str(data))
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in s.items():
        table.add_row(k, str(v))
    Console().print(table)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out")] = Path("out/demo"),
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    shared: Annotated[Path, typer.Option("--shared", help="the shared data folder")] = Path(
        "../shared/data"
    ),
) -> None:
    """The whole pipeline that exists, on the default data, ending in a short report."""
    from gpr.demo import run_demo

    run_demo(_config(preset, config, sets, seed), out, shared)


def main() -> None:
    try:
        app(standalone_mode=False)
    except GprInputError as e:
        print(f"gpr: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
