"""`bloodsmear bench ...`: benchmark commands that print figures (never timed tests)."""

from __future__ import annotations

from typing import Optional

import typer

from bloodsmear.cli.common import App, TTA_HELP, emit_json, print_table, tta_option
from bloodsmear.config import parse_overrides
from bloodsmear.evaluation.stages_eval import evaluate_stages
from bloodsmear.experiments.bench_analyze import bench_analyze, bench_engines
from bloodsmear.experiments.bench_classify import bench_classify
from bloodsmear.experiments.bench_framing import bench_framing, measure_frame_k
from bloodsmear.experiments.bench_learn import DEFAULT_KS, bench_learn, parse_ints
from bloodsmear.experiments.domain_tables import summary
from bloodsmear.experiments.domains import run_domains
from bloodsmear.experiments.domains_config import load_domains_config
from bloodsmear.experiments.grid import load_grid_config, result_table, run_grid
from bloodsmear.experiments.lodo import mean_sd_text, run_lodo
from bloodsmear.experiments.lodo_config import load_lodo_config
from bloodsmear.experiments.rescore import rescore_domains
from bloodsmear.experiments.risk_coverage import bench_risk_coverage
from bloodsmear.inference.batch import WORKERS_HELP
from bloodsmear.inference.onnx_backend import check_backend
from bloodsmear.preprocess.crop_batch import bench_crop
from bloodsmear.review.bench import bench_review

app = App(help="Benchmarks that print figures (speed, accuracy).", no_args_is_help=True)

# Commands are added below by feature: crop, classify, grid, analyze, domains, lodo.


@app.command("analyze")
def bench_analyze_cmd(
    images_dir: str = typer.Argument(..., help="Folder of fields (e.g. BCCD JPEGImages)."),
    limit: int = typer.Option(None, "--limit", help="Use the first N images."),
    pipeline: str = typer.Option("default", "--pipeline", help="Pipeline config or shipped name to time."),
    compare: str = typer.Option("maskrcnn", "--compare", help="Pipeline to compare with ('' for none)."),
    compare_limit: int = typer.Option(None, "--compare-limit", help="Use only the first N images for the comparison "
                                                                  "(0: no comparison)."),
    photo: bool = typer.Option(False, "--photo", help="Also time a synthetic 4032x3024 photo (fresh process)."),
    photo_source: str = typer.Option(None, "--photo-source", help="Field the photo is made of (default: the first)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write overlays (part of end to end)."),
    workers: int = typer.Option(None, "--workers", help=WORKERS_HELP),
    scale: str = typer.Option(None, "--scale", help="As analyze --scale (default: the pipeline configs', auto)."),
    engine: str = typer.Option("local", "--engine", help="local: the pipelines compared; ray: the local and the "
                               "Ray engine side by side for 1..--workers workers (default 2), fresh processes."),
    rounds: int = typer.Option(1, "--rounds", help="With --engine ray: runs of each (interleaved; median kept)."),
    threads: int = typer.Option(1, "--threads-per-worker", help="With --engine ray: torch threads per worker of "
                                "both engines (Ray: CPUs per actor)."),
    repeat: int = typer.Option(1, "--repeat", help="With --engine ray: the fields K times, uniquely named (a "
                               "larger run: how Ray's fixed start amortises)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch or onnx: how the timed pipeline's networks "
                                          "run (default: its config's; onnx needs bloodsmear[onnx])."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object (last line)."),
) -> None:
    """End-to-end fields/s of the default pipeline and the Mask R-CNN pipeline on the same fields."""
    if backend is not None and engine == "ray":
        raise typer.BadParameter("--backend is for --engine local")
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"--engine must be local or ray, got {engine!r}")
    if engine == "ray":
        d = bench_engines(images_dir, limit=limit, pipeline=pipeline, max_workers=workers or 2, overlays=overlays,
                          scale=scale, rounds=rounds, threads=threads, repeat=repeat)
        cols = ["engine", "workers", "threads", "fields_per_s", "steady_fields_per_s", "startup_s", "ray_init_s",
                "scale_pass_s", "ms_per_field", "peak_rss_mb", "overhead_pct", "steady_overhead_pct", "fields_15pct"]
        print_table(f"bench analyze --engine ray ({d['n_fields']} fields)", cols,
                    [[(round(r[c], 1) if isinstance(r.get(c), float) else ("" if r.get(c) is None else r[c]))
                      for c in cols]
                     for r in d["rows"]])
        if json_out:
            emit_json(d)
        return
    d = bench_analyze(images_dir, limit=limit, pipeline=pipeline, compare=compare or None,
                      compare_limit=compare_limit, photo=photo, overlays=overlays,
                      workers=workers, photo_source=photo_source, scale=scale,
                      backend=backend and check_backend(backend, "--backend"))
    print_table("bench analyze", ["figure", "value"], [(k, v) for k, v in d.items() if not isinstance(v, dict)])
    if json_out:
        emit_json(d)


@app.command("grid")
def bench_grid_cmd(
    config: str = typer.Argument(..., help="Grid config (YAML), e.g. configs/grid/small-cpu.yaml."),
    only: list[str] = typer.Option(None, "--only", help="Run only rows whose id contains this (repeatable)."),
    rerun: bool = typer.Option(False, "--rerun", help="Run every row again (default: skip rows already done)."),
    json_out: bool = typer.Option(False, "--json", help="Print the table as one JSON object (last line)."),
) -> None:
    """The paper's Tables 3/4: backbones x frozen/fine-tuned x datasets -> results.csv + results.md (resumable)."""
    res = run_grid(load_grid_config(config), only=only or None, rerun=rerun)
    cols, rows = result_table(res.rows)
    short = [cols.index(c) for c in ("dataset", "backbone", "weights", "mode", "accuracy", "macro_precision",
                                      "macro_recall", "macro_f1", "train_time_s")]
    print_table(f"grid {res.config.name} (test split, %; every setting in the CSV)", ["data", "backbone", "weights",
                "mode", "acc", "P", "R", "F1", "train s"], [[r[i] for i in short] for r in rows])
    failed = [s for s in res.skipped if ": failed:" in s]
    typer.echo(f"{len(res.rows)} row(s) in {res.csv_path} and {res.md_path}; {len(failed)} failed", err=True)
    if json_out:
        emit_json({"name": res.config.name, "columns": cols, "rows": rows, "skipped": res.skipped,
                   "csv": str(res.csv_path), "markdown": str(res.md_path)})
    if failed:
        raise typer.Exit(1)


@app.command("domains")
def bench_domains_cmd(
    config: str = typer.Argument(..., help="Domains config (YAML), e.g. configs/domains/pbc_lisc.yaml."),
    only: list[str] = typer.Option(None, "--only", help="Run only these run ids (repeatable), e.g. src_A dann_A_B."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config value, e.g. --set train.epochs=2 "
                                                       "--set device=cuda (repeatable)."),
    rescore: bool = typer.Option(False, "--rescore", help="No training: score the saved run models of out_dir again "
                                                          "(with --tta) -> out_dir/tta_<mode>/ tables."),
    tta: str = typer.Option("d8", "--tta", help="With --rescore: " + TTA_HELP, callback=tta_option),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as one JSON object (last line)."),
) -> None:
    """The paper's Tables 5/6 + stain normalisation across two domains -> CSV + Markdown tables (resumable)."""
    cfg = load_domains_config(config, parse_overrides(set_))
    res = rescore_domains(cfg, tta, only=only or None) if rescore else run_domains(cfg, only=only or None)
    cols = ("table", "run", "method", "trained_on", "tested_on", "macro_precision", "macro_recall", "macro_f1",
            "accuracy", "n")
    print_table(f"domains (test splits, %) -> {res.out_dir}", list(cols), [[r[c] for c in cols] for r in res.rows])
    if json_out:
        emit_json({"rows": res.rows, "macro_f1": summary(res.rows), "out_dir": str(res.out_dir), "files": res.files})


@app.command("risk-coverage")
def bench_risk_coverage_cmd(
    config: str = typer.Argument(..., help="LODO config (YAML) naming the domains, e.g. configs/lodo/cpu.yaml."),
    model: str = typer.Option("pbc-screen-stain", "--model", help="Model folder or shipped name."),
    threshold: float = typer.Option(0.5, "--threshold", help="Review threshold: answers below it are flagged."),
    out: str = typer.Option(None, "--out", help="Folder for risk-coverage.png and risk-coverage.md."),
    card: bool = typer.Option(False, "--card", help="Also write the table into the model folder's card.md."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Accuracy against the share of cells flagged for review, on every LODO domain's test cells."""
    r = bench_risk_coverage(config, model=model, threshold=threshold, out=out, card=card)
    print_table(f"risk-coverage: {model}", ["domain", "n", "acc @100/90/80/70/50 %", f"flagged at {threshold}",
                                             "unflagged acc", "AURC"],
                [[x["domain"], x["n"], " / ".join(f"{x[f'acc_at_{c}']:.3f}" for c in (100, 90, 80, 70, 50)),
                  f"{100 * x['flagged_share']:.0f} %",
                  "-" if x["unflagged_accuracy"] is None else f"{x['unflagged_accuracy']:.3f}", f"{x['aurc']:.3f}"]
                 for x in r["rows"]])
    if json_out:
        emit_json({k: v for k, v in r.items() if k != "markdown"})


@app.command("lodo")
def bench_lodo_cmd(
    config: str = typer.Argument(..., help="LODO config (YAML), e.g. configs/lodo/cpu.yaml."),
    recipe: list[str] = typer.Option(None, "--recipe", help="Run only these recipes (repeatable)."),
    held_out: list[str] = typer.Option(None, "--held-out", help="Hold out only these domain keys (repeatable)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config value, e.g. --set seeds=[0] "
                                                       "--set device=cuda (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as one JSON object (last line)."),
) -> None:
    """Leave-one-domain-out: per held-out domain and recipe, accuracy and macro F1 (mean ± sd over seeds).

    Next to the shipped models' figures; writes out_dir/lodo.md, lodo.csv and results.json (resumable)."""
    cfg = load_lodo_config(config, parse_overrides(set_))
    res = run_lodo(cfg, recipes=recipe or None, held_out=held_out or None)
    print_table(f"LODO (held-out test splits) -> {res.out_dir}",
                ["held out", "recipe", "n", "accuracy", "macro F1", "seeds", "absent"],
                [[r["held_out"], r["recipe"] + ("" if r["held_out_ok"] else " *"), r["n"],
                  mean_sd_text(r["accuracy"], r["accuracy_sd"]), mean_sd_text(r["macro_f1"], r["macro_f1_sd"]),
                  r["seeds"] or "–",
                  " ".join(r["absent"]) or "–"] for r in res.rows], keep=(0, 1, 3, 4))
    typer.echo("* the model saw this domain in training (not a held-out figure)", err=True)
    if json_out:
        emit_json(res.to_dict())


@app.command("learn")
def bench_learn_cmd(
    config: str = typer.Argument(..., help="LODO config (YAML): its domains, classes and split, e.g. configs/lodo/cpu.yaml."),
    k: str = typer.Option(",".join(map(str, DEFAULT_KS)), "--k", help="Labelled cells per class, comma-separated."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds of the draws and of learn, comma-separated."),
    domains: str = typer.Option(None, "--domains", help="Domain keys, comma-separated (default: every domain)."),
    base: str = typer.Option("pbc-screen-stain", "--base", help="Base model learn fine-tunes (folder or shipped name)."),
    epochs: int = typer.Option(15, "--epochs", help="learn's epochs."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as one JSON object (last line)."),
) -> None:
    """Learning curve of `learn`: k cells per class of each domain's train split -> accuracy on its test split.

    Mean ± sd over seeds, next to k = 0 (the base as shipped); out_dir/learn_curve.md, .csv and .json (resumable)."""
    res = bench_learn(load_lodo_config(config), ks=parse_ints(k, "--k"), seeds=parse_ints(seeds, "--seeds"),
                      domains=[d.strip() for d in domains.split(",") if d.strip()] if domains else None,
                      base=base, epochs=epochs)
    print_table(f"learning curve (held-out test splits) -> {res.out_dir}",
                ["domain", "k", "k real", "n", "accuracy", "macro F1", "seeds", "learn s"],
                [[r["domain"], r["k"], r["k_real"], r["n"], mean_sd_text(r["accuracy"], r["accuracy_sd"]),
                  mean_sd_text(r["macro_f1"], r["macro_f1_sd"]), r["seeds"] or "–",
                  "–" if r["learn_seconds"] is None else r["learn_seconds"]] for r in res.rows], keep=(0, 1, 4, 5))
    if json_out:
        emit_json(res.to_dict())


@app.command("framing")
def bench_framing_cmd(
    dataset: str = typer.Argument("pbc224", help="PBC images (the model's split.json names them), e.g. pbc224."),
    limit: int = typer.Option(400, "--limit", help="Seeded sample of N test images of the WBC classes."),
    seed: int = typer.Option(0, "--seed"),
    measure_k: bool = typer.Option(False, "--measure-k", help="Instead: measure FRAME_CELL_K on N train images."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object (last line)."),
) -> None:
    """Accuracy of classify (cell, centre framing) and analyze on rescaled, padded and cut PBC test images.

    Scales 0.5-2x, padding / cutting by 30 %, and the largest drop from 1x (docs/framing.md)."""
    if measure_k:
        d = measure_frame_k(dataset, limit=limit, seed=seed)
        print_table("FRAME_CELL_K (image side / WBC equivalent diameter)", ["figure", "value"], list(d.items()))
    else:
        d = bench_framing(dataset, limit=limit, seed=seed)
        print_table(f"bench framing (n={d['n']}, accuracy %)", ["condition", *d["accuracy"]],
                    [[c, *[round(d["accuracy"][m][c], 1) for m in d["accuracy"]]] for c in d["conditions"]]
                    + [["largest drop from 1x", *[round(v, 1) for v in d["largest_drop"].values()]]])
    if json_out:
        emit_json(d)


@app.command("classify")
def classify_bench(
    model: str = typer.Option("default", "--model", "-m", help="Model folder or shipped name."),
    n: int = typer.Option(2000, "--n", help="Crops to classify (timed)."),
    batch_size: int = typer.Option(256, "--batch-size"),
    threads: int = typer.Option(2, "--threads", help="torch threads (the target is 2 cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Classifier throughput end to end from decoded 224 px crops, batched (figure: cells_per_s)."""
    r = bench_classify(model, n=n, batch_size=batch_size, threads=threads)
    print_table("bench classify", ["figure", "value"], list(r.items()))
    if as_json:
        emit_json(r)


@app.command("crop")
def bench_crop_cmd(
    images_dir: str = typer.Argument(..., help="Folder of single-cell images (e.g. pbc-original-sample)."),
    limit: int = typer.Option(None, "--limit", help="Use the first N images."),
    repeat: int = typer.Option(1, "--repeat", help="Runs per image and method; the fastest counts."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object (last line)."),
) -> None:
    """The paper's C-PBC crop vs the fast one on the same images: ms/image, ratio, crop-box IoU."""
    b = bench_crop(images_dir, limit=limit, repeat=repeat)
    print_table(f"bench crop ({b.images} images)", ["figure", "value"],
                [(k, v) for k, v in b.to_dict().items() if k != "skipped"] + [("skipped", len(b.skipped))])
    if json_out:
        emit_json(b.to_dict())


@app.command("stages")
def bench_stages_cmd(
    dataset: str = typer.Argument(..., help="Class-per-folder single-cell images, e.g. pbc224."),
    pipeline: str = typer.Option("default", "--pipeline", "-p", help="Pipeline config or shipped name."),
    manifest: str = typer.Option(None, "--manifest", help="Split manifest (e.g. a model folder's split.json)."),
    split: str = typer.Option(None, "--split", help="Part of the manifest / official split (default: test)."),
    limit: int = typer.Option(None, "--limit", help="Score a seeded sample of N images."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object (last line)."),
) -> None:
    """A pipeline's screening + refine stages on labelled single-cell images (what the routing costs/gains)."""
    ev = evaluate_stages(dataset, pipeline=pipeline, manifest=manifest, split=split, limit=limit)
    rep = ev.report
    print_table(f"{ev.pipeline} stages on {ev.split} (n={ev.n}, refined {ev.n_refined})",
                ["class", "precision", "recall", "f1", "support"],
                [(c, m.precision, m.recall, m.f1, m.support) for c, m in rep.per_class.items()]
                + [("macro", rep.macro_precision, rep.macro_recall, rep.macro_f1, rep.n)])
    if json_out:
        emit_json(ev.to_dict())


@app.command("review")
def bench_review_cmd(
    out_dir: str = typer.Argument(None, help="An analyze output folder (default: a synthetic 4032x3024 photo with "
                                  "--cells cells)."),
    cells: int = typer.Option(200, "--cells", help="Cells of the synthetic photo."),
    relabels: int = typer.Option(50, "--relabels", help="Relabel round trips to time."),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="Also time the slide view in headless Chromium."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
) -> None:
    """Review server: open a big field (cells, preview, full image; cold and warm), relabel round trip."""
    r = bench_review(out_dir, cells=cells, relabels=relabels, browser=browser)
    rows = [("field", f"{r['field']}, {r['cells']} cells")]
    for k in ("open_cold", "open_warm"):
        o = r[k]
        rows.append((f"{k}: cells JSON / +preview / +full image (ms)",
                     f"{o['cells_json_ms']} / {o['with_preview_ms']} / {o['with_full_image_ms']}"))
    b = r["browser_open_ms"]
    rows.append(("browser: slide view drawn, first / then (ms)",
                 f"{b[0]} / {', '.join(str(x) for x in b[1:])}" if b else "n/a (no Chromium or Playwright)"))
    rl = r["relabel_ms"]
    rows.append(("relabel round trip median / p95 / max (ms)", f"{rl['median']} / {rl['p95']} / {rl['max']}"))
    print_table("bloodsmear bench review", ["figure", "value"], rows)
    if as_json:
        emit_json(r)
