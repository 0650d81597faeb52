"""The `gpr` command line. Bad input exits 2 with one line naming file, row and field."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from gpr.core.config import GprConfig, error_line, load_config
from gpr.core.errors import GprInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GPR: one generative model for ad recommendation.",
)
world_app = typer.Typer(no_args_is_help=True, help="The simulated ad world.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: import and inspect.")
run_app = typer.Typer(no_args_is_help=True, help="Run directories: convert earlier layouts.")
import_app = typer.Typer(
    no_args_is_help=True, help="Import public datasets into the common schema."
)
app.add_typer(world_app, name="world")
app.add_typer(run_app, name="run")
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")
console = Console(stderr=True)

ThreadsOpt = Annotated[
    int, typer.Option("--threads", min=0, help="torch and BLAS threads; 0 = their defaults")
]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="tiny | small | base | large")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of config fields")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: section.field=value")]
SeedOpt = Annotated[int | None, typer.Option("--seed")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="replace an existing, non-empty --out")
]


def _check_out(
    out: Path, inputs: list[Path | None], overwrite: bool = False, kind: str = "dir"
) -> None:
    """Refuse a bad --out before any work starts (core.io.check_out)."""
    from gpr.core.io import check_out

    check_out(out, [i for i in inputs if i is not None], overwrite, kind)


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
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate users, items (organic + ads), events and the hidden truth into OUT."""
    from gpr.world import generate_world

    _check_out(out, [], overwrite)
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
    overwrite: OverwriteOpt = False,
) -> None:
    """Amazon 2014 5-core (Beauty, Sports) with the leave-one-out split."""
    from gpr.data.amazon import import_amazon

    _check_out(out, [seq, meta], overwrite)
    m = import_amazon(seq, meta, out, name)
    _imported(m, out)


@import_app.command("ml100k")
def import_ml100k_cmd(
    out: Annotated[Path, typer.Option("--out")],
    data_dir: Annotated[
        Path, typer.Option("--dir", help="folder with u.data, u.item, u.user")
    ] = Path("../shared/data/movielens_100k"),
    overwrite: OverwriteOpt = False,
) -> None:
    """MovieLens-100K as implicit time-ordered sequences with the leave-one-out split."""
    from gpr.data.movielens import import_ml100k

    _check_out(out, [data_dir], overwrite)
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


@app.command("embed")
def embed_cmd(
    data: Annotated[Path, typer.Option("--data", help="dataset directory")],
    batch_size: int = 32,
    device: str = "cpu",
    force: Annotated[bool, typer.Option("--force", help="re-embed even if cached")] = False,
) -> None:
    """Item embeddings: the world's content embeddings, or MiniLM over item text (cached)."""
    from gpr.tokenizer.embed import embed_items

    res = embed_items(data, batch_size=batch_size, device=device, force=force)
    m = res.meta
    console.print(
        f"{m['n_items']} items x {m['dim']} ({m['source']}: {m['model']}) -> {data}/embeddings"
    )


@app.command("tokenize")
def tokenize_cmd(
    data: Annotated[Path, typer.Option("--data", help="dataset directory")],
    out: Annotated[Path, typer.Option("--out", help="output directory (TOK)")],
    method: Annotated[
        str | None, typer.Option("--method", help="rq_kmeans | rq_vae | rq_kmeans_plus")
    ] = None,
    compare: Annotated[bool, typer.Option("--compare", help="run all three methods")] = False,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Semantic IDs for every item (sids.parquet, tokenizer weights, metrics.json)."""
    from gpr.tokenizer.pipeline import compare_table, run_compare, run_tokenize

    _check_out(out, [data], overwrite)
    extra = [f"tokenizer.method={method}"] if method is not None else []
    cfg = _config(preset, config, [*(sets or []), *extra], seed)
    if compare:
        rows = run_compare(data, cfg, out)
        typer.echo(compare_table(rows))
    else:
        _print_json(run_tokenize(data, cfg, out))


@app.command("train")
def train_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="run directory")] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="continue the interrupted MTP training whose --out was RUN"),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="dataset directory")] = None,
    model: Annotated[str, typer.Option("--model", help="gpr | hstu | cascade")] = "gpr",
    sids: Annotated[Path | None, typer.Option("--sids", help="tokenizer output (TOK)")] = None,
    stage: Annotated[str, typer.Option("--stage", help="mtp | vaft | dpo | hepo | hte")] = "mtp",
    init: Annotated[Path | None, typer.Option("--init", help="run to start from")] = None,
    simulator: Annotated[
        Path | None, typer.Option("--simulator", help="cascade run whose models score ads")
    ] = None,
    arr: Annotated[bool, typer.Option("--arr", help="HEPO: mix in ARR requests")] = False,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="DPO/HEPO: the KL reference run (default: --init)"),
    ] = None,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a model; periodic validation, early stopping, safetensors checkpoints, loss plot.

    Stages after MTP start from --init RUN and score ads with --simulator CASCADE_RUN. MTP
    checkpoints to RUN.ckpt every train.checkpoint_every steps; --resume RUN continues it.
    """
    if resume is not None:
        given = [data, sids, init, simulator, reference, preset, seed, config, sets, out]
        if any(v is not None for v in given) or stage != "mtp" or model != "gpr" or arr:
            raise GprInputError(
                "--resume RUN takes no other option (the checkpoint holds the command)",
                field="resume",
            )
        _print_json(_resume(resume))
        return
    if out is None:
        raise GprInputError("--out RUN is required", field="out")
    cfg = _config(preset, config, sets, seed)
    _check_out(out, [data, sids, init, simulator, reference], overwrite)
    if stage != "mtp":
        _print_json(_train_stage(stage, init, simulator, cfg, out, arr, reference))
        return
    if init is not None or simulator is not None or arr or reference is not None:
        raise GprInputError(
            "--init, --simulator, --arr and --reference need --stage vaft|dpo|hepo|hte",
            field="stage",
        )
    if data is None:
        raise GprInputError("--data DIR is required", field="data")
    if model == "cascade":
        from gpr.cascade.train import train_cascade

        _print_json(train_cascade(data, cfg.cascade, cfg.seed, out, threads=cfg.runtime.threads))
        return
    from gpr.model.registry import MODELS
    from gpr.train.mtp import train

    if model not in MODELS:
        raise GprInputError(
            f"unknown model '{model}' (choose from {', '.join((*MODELS, 'cascade'))})",
            field="model",
        )
    if sids is None:
        raise GprInputError("--sids TOK is required for generative models", field="sids")
    summary = train(data, sids, cfg, out, model)
    _print_json({k: summary[k] for k in ("model", "best", "epochs_run", "seconds", "parameters")})


def _resume(run: Path) -> dict[str, Any]:
    from gpr.train.checkpoint import read_command
    from gpr.train.mtp import train

    cmd = read_command(run)
    try:
        cfg = GprConfig.model_validate(cmd["config"])
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(["config", *(str(p) for p in err["loc"])])
        raise GprInputError(error_line(err), file=run, field=loc) from None
    summary = train(cmd["data"], cmd["sids"], cfg, run, cmd["model"], resume=True)
    return {k: summary[k] for k in ("model", "best", "epochs_run", "seconds", "parameters")}


STAGE_KEYS = ("stage", "best", "seconds", "first_reward", "last_reward", "epochs_run")


def _train_stage(
    stage: str,
    init: Path | None,
    simulator: Path | None,
    cfg: GprConfig,
    out: Path,
    arr: bool,
    reference: Path | None = None,
) -> dict[str, Any]:
    if stage not in ("vaft", "dpo", "hepo", "hte"):
        raise GprInputError(
            f"unknown stage '{stage}' (mtp | vaft | dpo | hepo | hte)", field="stage"
        )
    if init is None or not (init / "run.json").exists():
        raise GprInputError("--init RUN (a trained run) is required", file=init, field="init")
    from gpr.core.run import Run
    from gpr.model.registry import MODELS

    if (kind := Run.load(init, verify=False).model) not in MODELS:
        raise GprInputError(
            f"--init needs a generative run, not a {kind} run", file=init, field="init"
        )
    if simulator is None:
        raise GprInputError("--simulator CASCADE_RUN is required", field="simulator")
    if arr and stage != "hepo":
        raise GprInputError("--arr applies to --stage hepo only", field="arr")
    if reference is not None and stage not in ("dpo", "hepo"):
        raise GprInputError("--reference applies to --stage dpo|hepo only", field="reference")
    if reference is not None and not (reference / "run.json").exists():
        raise GprInputError("not a trained run (no run.json)", file=reference, field="reference")
    if stage == "vaft":
        from gpr.train.vaft import train_vaft

        res = train_vaft(init, simulator, cfg, out)
    elif stage == "hte":
        from gpr.train.hte_distill import distill_hte

        res = distill_hte(init, simulator, cfg, out)
    else:
        from gpr.train.align import align

        res = align(stage, init, simulator, cfg, out, arr, reference=reference)
    return {k: res[k] for k in STAGE_KEYS if k in res}


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Option("--run", help="run directory")],
    out: Annotated[Path | None, typer.Option("--out", help="write the metrics JSON here")] = None,
    split: str = "test",
    beam: Annotated[int | None, typer.Option("--beam", min=1)] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="evaluate at most N predictions")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="dataset (default: the run's)")
    ] = None,
    value: Annotated[
        bool, typer.Option("--value", help="ad world: nDCG / OPR / final_value over K candidates")
    ] = False,
    k: Annotated[int, typer.Option("--k", min=1, help="--value: candidates per request")] = 40,
    threads: ThreadsOpt = 1,
) -> None:
    """Generative runs: Recall/NDCG@5,10, HitRate@100. Cascade runs: ranking AUC / GAUC."""
    from gpr.core.io import write_json
    from gpr.core.run import Run
    from gpr.core.runtime import set_threads

    if out is not None:
        _check_out(out, [run, data], kind="file")
    set_threads(threads or None)
    info = Run.load(run, verify=False).info  # which kind of run; its loader checks the hashes
    if value:
        from gpr.eval.value import value_eval

        res = value_eval(run, split, k, limit if limit is not None else 2000, data_dir=data)
    elif info.get("model") == "cascade":
        from gpr.cascade.train import evaluate_ranking

        res = evaluate_ranking(run, data or Path(info["data"]), split)
    else:
        from gpr.eval.retrieval import evaluate_run

        res = evaluate_run(run, split, beam=beam, limit=limit, data=data)
    if out is not None:
        write_json(out, res)
    _print_json(res)


@app.command("simulate")
def simulate_cmd(
    policy: Annotated[
        str, typer.Option("--policy", help="run dir | random-eligible | logging | oracle")
    ],
    data: Annotated[Path, typer.Option("--data", help="ad-world dataset directory")],
    out: Annotated[Path | None, typer.Option("--out", help="write sim.json here")] = None,
    split: str = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 512,
    max_requests: Annotated[int | None, typer.Option("--max-requests", min=1)] = None,
    seed: int = 0,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="serving override of a run: serve.field=value"),
    ] = None,
    threads: ThreadsOpt = 1,
) -> None:
    """Replay a split's requests: the policy chooses, the hidden truth scores (RPM, CTCVR...)."""
    from gpr.core.runtime import set_threads
    from gpr.eval.simulate import simulate_spec

    if out is not None:
        _check_out(out, [data, Path(policy)], kind="file")
    set_threads(threads or None)
    res = simulate_spec(policy, data, split, out, batch_size, max_requests, seed, sets)
    _print_json({k: v for k, v in res.items() if k != "segments"})


@app.command("serve")
def serve_cmd(
    run: Annotated[Path, typer.Option("--run", help="run directory (nothing else is read)")],
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8080,
    ads: Annotated[
        Path | None,
        typer.Option("--ads", help="an items.parquet whose ads replace the run's own"),
    ] = None,
    beam: Annotated[int | None, typer.Option("--beam", min=1)] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=4096, help="requests per engine call")
    ] = 32,
    max_wait_ms: Annotated[
        float,
        typer.Option("--max-wait-ms", min=0, max=10_000, help="wait for a batch to fill"),
    ] = 2.0,
    threads: ThreadsOpt = 1,
    day: Annotated[
        int | None, typer.Option("--day", min=0, help="catalogue day (default: the test day)")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="serving override of the run: serve.field=value"),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda | auto")] = "cpu",
) -> None:
    """Serve a run over HTTP until SIGTERM / Ctrl-C: POST /v1/recommend, POST /v1/ads,
    GET /v1/ads/{id}, /healthz, /readyz, /metrics, /docs. Logs are JSON lines on stderr."""
    from gpr.core.runtime import set_threads
    from gpr.serve.app import Settings, create_app, listen, run_server, setup_logging
    from gpr.serve.engine import Engine

    if not (run / "run.json").is_file():
        raise GprInputError("not a trained run (no run.json)", file=run, field="run")
    if ads is not None and not ads.is_file():
        raise GprInputError("no such file", file=ads, field="ads")
    sock = listen(host, port)  # before the model loads: a taken port fails at once
    try:
        set_threads(threads or None)
        setup_logging()
        engine = Engine.from_run(run, ads=ads, beam=beam, day=day, overrides=sets, device=device)
        settings = Settings(max_batch=max_batch, max_wait_ms=max_wait_ms)
        if not run_server(create_app(engine, settings), sock, settings):
            raise RuntimeError("the server did not start (see the log above)")
    finally:
        sock.close()


@run_app.command("convert")
def run_convert(
    run: Annotated[Path, typer.Option("--run", help="a run of the earlier layout")],
    out: Annotated[Path, typer.Option("--out", help="the converted run (must not exist)")],
    data: Annotated[
        Path | None, typer.Option("--data", help="its dataset (default: the one it names)")
    ] = None,
    sids: Annotated[
        Path | None, typer.Option("--sids", help="its SIDs (default: the folder it names)")
    ] = None,
) -> None:
    """Convert a run saved before manifest.json and catalogue/ into the current layout."""
    from gpr.model.registry import convert_run

    _check_out(out, [run, data, sids])
    info = convert_run(run, out, data, sids)
    _print_json({k: info.get(k) for k in ("model", "stage", "format", "data", "sids")})


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
    beauty: Annotated[
        bool, typer.Option("--beauty", help="also MiniLM + semantic IDs of Amazon Beauty (~8 min)")
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """The whole pipeline that exists, on the default data, ending in OUT/report.md with plots."""
    from gpr.demo import run_demo

    _check_out(out, [shared], overwrite)
    run_demo(_config(preset, config, sets, seed), out, shared, beauty=beauty)


_signal: list[int] = []  # the signal that stopped the command, if one did


def _on_signal(signum: int, frame: object) -> None:
    """SIGINT / SIGTERM become a KeyboardInterrupt where the process is, so the temp outputs of
    `atomic_dir` are removed on the way out; typer turns it into exit code 130."""
    _signal.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    """Every failure ends as one line on stderr and a non-zero exit: 2 for bad input (usage,
    options, config, files), 130 / 143 for SIGINT / SIGTERM (partial outputs removed), 1 for an
    internal error. `--debug` anywhere shows the traceback instead."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    try:
        rc = app(standalone_mode=False)
    except GprInputError as e:
        _fail(f"error: {e}", 2, debug)
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's (typer's) errors
            if type(e).__name__ == "NoArgsIsHelpError":
                sys.exit(0)  # the help was printed
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _fail(f"error: {e.format_message()}{where}", 2, debug)
        if isinstance(e, typer.Exit):
            sys.exit(getattr(e, "exit_code", 0))
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug)", 1, debug)
    if rc == 130 or _signal:  # typer's code for an interrupt
        term = signal.SIGTERM in _signal
        name = "terminated (SIGTERM)" if term else "interrupted (Ctrl-C)"
        _fail(f"{name}; partial outputs were removed", 143 if term else 130, False)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def _fail(message: str, code: int, debug: bool) -> NoReturn:
    """Print one line and exit; with `debug`, re-raise the exception being handled instead."""
    if debug:
        raise
    print(f"gpr: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
