"""``delfi eval revisitop``, ``delfi eval vpr`` and ``delfi eval vpr-sweep``: retrieval benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from delfi.cli.common import (
    EXIT_FAILED,
    ProgressBar,
    fail,
    load_model,
    report_failures,
    refuse_output_among_inputs,
    stderr_console,
)


# Options shared by `eval revisitop` and `eval vpr`.
INDEX_OPTION = typer.Option("exact", "--index", help="exact | flat | ivfpq (global descriptors) | asmk (local descriptors).")
INDEX_PARAM_OPTION = typer.Option(None, "--index-param", help="Index setting key=value, repeatable (e.g. codebook_size=4096).")
RERANK_K_OPTION = typer.Option(100, "--rerank-k", help="Rerank the top K by spatial verification (0: off).")
FUSION_OPTION = typer.Option("lexicographic", "--fusion", help="lexicographic (inliers, global) | weighted | min_inliers.")
GEOMETRY_OPTION = typer.Option("affine", "--geometry", help="affine | homography | fundamental.")
THRESHOLD_OPTION = typer.Option(20.0, "--ransac-threshold", help="RANSAC residual threshold (px).")
MAX_DISTANCE_OPTION = typer.Option(None, "--max-distance", help="Putative matches: descriptor L2 distance below this (default: 1.0 for DELF/DELG, none with mutual NN otherwise).")
WORKERS_OPTION = typer.Option(0, "--workers", help="Reranking threads (0: one per core).")
REPORT_OPTION = typer.Option(True, "--report/--no-report", help="Write report.html (queries, results, match pictures).")
REUSE_OPTION = typer.Option(False, "--reuse-features", help="Use the feature stores already in --out (no model).")
DEVICE_OPTION = typer.Option("cpu", "--device")
OVERRIDES_OPTION = typer.Argument(None, help="Config overrides key=value.")


def _settings(index: str, rerank_k: int, fusion: str, geometry: str, threshold: float, max_distance: Optional[float],
              workers: int, keep_matches: bool, family: Optional[str], index_params: Optional[List[str]] = None):
    """Retrieval settings; the putative-matching rule follows the model family (TF rule for
    DELF / DELG, mutual nearest neighbours otherwise), ``max_distance`` overrides its bound."""
    from dataclasses import replace

    from delfi.eval.retrieval_run import RetrievalSettings
    from delfi.retrieval.rerank import RerankConfig, matching_for

    base = matching_for(family)
    try:
        rerank = None if rerank_k <= 0 else RerankConfig(
            top_k=rerank_k, fusion=fusion, workers=workers,
            matching=replace(base, max_distance=base.max_distance if max_distance is None else max_distance,
                             geometry=geometry, threshold=threshold))
    except ValueError as exc:
        raise fail(str(exc)) from None
    from delfi.cli.retrieve import KINDS, _params

    if index not in (*KINDS, "asmk"):
        raise fail(f"--index must be one of {', '.join((*KINDS, 'asmk'))}, got {index!r}")
    return RetrievalSettings(index=index, index_params=_params(index_params), rerank=rerank, keep_matches=keep_matches)


def _family(config: Optional[dict], out: Path) -> Optional[str]:
    """The model family: from the loaded config, else from the query store already in ``out``."""
    if config:
        return str(config.get("model"))
    store = out / "queries.h5"
    if store.exists():
        from delfi.io.features import FeatureStore

        with FeatureStore(store) as s:
            return str(s.attrs.get("model", ""))
    return None


def _model(preset: str, weights: Optional[str], overrides: Optional[List[str]], device: str, skip: bool):
    from delfi.cli.eval import method_name
    from delfi.config import config_to_dict

    if skip:
        return None, None, None
    model, config = load_model(preset, weights, list(overrides or []), device)
    return model, config_to_dict(config), method_name(preset, config, getattr(model, "weights_sha256", None))


def _check_out(out: Optional[Path], root: Path, benchmark: str, products: tuple[str, ...], layout=None) -> None:
    """Exit 2 (nothing done) for data missing from ``root`` (``layout()`` raises), or an --out that is
    the data root, inside it, or holds files delfi did not write (a results.json that is not this
    benchmark's delfi results, or its products without one)."""
    from delfi.eval.results import ResultsConflictError, check_outside, claim_run_dir

    if layout is not None:
        try:
            layout()
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from None
    if out is None:
        return
    refuse_output_among_inputs(out, [root])
    try:
        check_outside(out, root)
        claim_run_dir(out, benchmark, products)
    except ResultsConflictError as exc:
        raise fail(str(exc)) from None


def revisitop(
    dataset: str = typer.Option("roxford5k", "--dataset", "-d", help="roxford5k | rparis6k."),
    root: Path = typer.Option(..., "--root", help="Data root: <root>/<dataset>/jpg and gnd_<dataset>.pkl."),
    preset: str = typer.Option("delg", "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default results/<dataset>/<method>)."),
    index: str = INDEX_OPTION,
    index_param: Optional[List[str]] = INDEX_PARAM_OPTION,
    rerank_k: int = RERANK_K_OPTION,
    fusion: str = FUSION_OPTION,
    geometry: str = GEOMETRY_OPTION,
    threshold: float = THRESHOLD_OPTION,
    max_distance: Optional[float] = MAX_DISTANCE_OPTION,
    workers: int = WORKERS_OPTION,
    rerank_junk: str = typer.Option("protocol", "--rerank-junk", help="protocol (TF: each protocol reranks without its own junk) | common (one pass, common junk)."),
    report: bool = REPORT_OPTION,
    reuse: bool = REUSE_OPTION,
    device: str = DEVICE_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Revisited Oxford / Paris: mAP and mP@1/5/10 for Easy, Medium, Hard, before and after reranking."""
    from delfi.eval.revisitop_run import BENCHMARK, PRODUCTS, dataset_layout, run_revisitop

    _check_out(out, root, BENCHMARK, PRODUCTS, layout=lambda: dataset_layout(root, dataset))
    model, config, method = _model(preset, weights, overrides, device, reuse)
    if out is None:
        out = Path("results") / dataset / (method or "features")
        _check_out(out, root, BENCHMARK, PRODUCTS)
    settings = _settings(index, rerank_k, fusion, geometry, threshold, max_distance, workers, report, _family(config, out),
                         index_param)
    result = _run_with_progress(run_revisitop, root, dataset, out, model=model, config=config,
                                settings=settings, rerank_junk=rerank_junk)
    Console().print(revisitop_table(result))
    if report:
        _report_revisitop(root, dataset, out, result)
    stderr_console().print(f"results -> {out}/ (results.json, ranking.txt, reranked.txt{', report.html' if report else ''})")
    _exit_on_failures(result.extraction, result.missing, result.reasons, out)


def _run_with_progress(runner, *args, **kwargs):
    """Call a benchmark runner under one progress bar (images extracted, queries reranked); bad input
    (missing files, wrong values incl. ground-truth errors, a missing extra) becomes a one-line failure."""
    try:
        with ProgressBar(None, "extracting / reranking") as bar:
            return runner(*args, **kwargs, on_image=lambda e, s: bar.advance(e.name, s),
                          on_query=lambda q: bar.advance(q, "done"))
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise fail(str(exc)) from None


def _exit_on_failures(extraction: dict, missing: list[str], reasons: dict[str, str] | None = None,
                      out: Path | None = None) -> None:
    """List images that failed or have no usable features, and exit 1 (the results cover the rest);
    the first few on screen, all of them in ``<out>/results.json`` and ``<out>/failures.tsv``."""
    rows = [(name, reason) for part in ("queries", "database") for name, reason in extraction.get(part, {}).get("failures", [])]
    failed = {name for name, _ in rows}
    reasons = reasons or {}
    rows += [(name, reasons.get(name, "no features in the store")) for name in missing if name not in failed]
    if rows:
        list_file = Path(out) / "failures.tsv" if out is not None else None
        report_failures(stderr_console(), "images left out (counted as misses)", ["image", "reason"], rows, list_file)
        raise typer.Exit(EXIT_FAILED)


def revisitop_table(result) -> Table:
    """mAP and mP@k (%) per protocol, for the global ranking and after reranking."""
    kappas = list(result.before["easy"]["mp@k"])
    stages = [("global", result.before)] + ([("reranked", result.after)] if result.after else [])
    table = Table(title=f"{result.dataset} (%)", title_justify="left")
    for name in ("protocol", "ranking", "mAP", *(f"mP@{k}" for k in kappas)):
        table.add_column(name, justify="left" if name in ("protocol", "ranking") else "right")
    for protocol in ("easy", "medium", "hard"):
        for n, (label, res) in enumerate(stages):
            table.add_row(protocol if n == 0 else "", label, f"{res[protocol]['map']:.2f}",
                          *(f"{res[protocol]['mp@k'][k]:.1f}" for k in kappas),
                          end_section=n == len(stages) - 1)
    return table


def _report_revisitop(root: Path, dataset: str, out: Path, result) -> None:
    from delfi.cli.report import write_run_report
    from delfi.datasets.revisitop import load_ground_truth
    from delfi.eval.revisitop_run import dataset_layout, relevance

    images, gnd_path = dataset_layout(root, dataset)
    summary = {f"mAP {p} {when}": res[p]["map"] for when, res in (("before", result.before), ("after", result.after))
               if res for p in ("medium", "hard")}
    write_run_report(out, lambda name: images / f"{name}.jpg", relevance(load_ground_truth(gnd_path)), summary,
                     title=f"delfi: {dataset}")


def vpr(
    root: Path = typer.Option(..., "--root", help="sf-xs style root: <root>/<split>/{database,queries}."),
    split: str = typer.Option("test", "--split"),
    preset: str = typer.Option("vpr-delg", "--preset", "-p"),
    weights: Optional[str] = typer.Option(None, "--weights", "-w"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default results/vpr/<method>)."),
    index: str = INDEX_OPTION,
    index_param: Optional[List[str]] = INDEX_PARAM_OPTION,
    rerank_k: int = RERANK_K_OPTION,
    fusion: str = FUSION_OPTION,
    geometry: str = GEOMETRY_OPTION,
    threshold: float = THRESHOLD_OPTION,
    max_distance: Optional[float] = MAX_DISTANCE_OPTION,
    radius: float = typer.Option(25.0, "--radius", help="Positives: database images within this many metres."),
    workers: int = WORKERS_OPTION,
    report: bool = REPORT_OPTION,
    reuse: bool = REUSE_OPTION,
    device: str = DEVICE_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_OPTION,
) -> None:
    """Place recognition: recall@1/5/10/20 before and after reranking, positive rank changes."""
    from delfi.eval.vpr_run import BENCHMARK, PRODUCTS, run_vpr, vpr_layout

    _check_out(out, root, BENCHMARK, PRODUCTS, layout=lambda: vpr_layout(root, split))
    model, config, method = _model(preset, weights, overrides, device, reuse)
    if out is None:
        out = Path("results") / "vpr" / (method or "features")
        _check_out(out, root, BENCHMARK, PRODUCTS)
    settings = _settings(index, rerank_k, fusion, geometry, threshold, max_distance, workers, report, _family(config, out),
                         index_param)
    result = _run_with_progress(run_vpr, root, out, split=split, model=model, config=config, settings=settings,
                                radius=radius)
    table = Table(title="recall@N (%)", title_justify="left")
    table.add_column("ranking")
    for n in result.recall_before:
        table.add_column(f"R@{n}", justify="right")
    table.add_row("global", *(f"{v:.1f}" for v in result.recall_before.values()))
    if result.recall_after is not None:
        table.add_row(f"reranked top {rerank_k}", *(f"{v:.1f}" for v in result.recall_after.values()))
    console = Console()
    console.print(table)
    if result.recall_after is not None:
        s = result.summary()
        console.print(f"first positive moved up for {s['improved']} queries, down for {s['worse']}, "
                      f"unchanged for {s['unchanged']} ({s['undefined']} without a positive in the list)")
    if report:
        _report_vpr(root, split, out, radius, result)
    stderr_console().print(f"results -> {out}/")
    _exit_on_failures(result.extraction, result.missing, result.reasons, out)


def _report_vpr(root: Path, split: str, out: Path, radius: float, result) -> None:
    from delfi.cli.report import write_run_report
    from delfi.eval.vpr_run import ground_truth, store_names, vpr_layout

    base, db_paths, q_paths = vpr_layout(root, split)
    database, queries = store_names(base, db_paths), store_names(base, q_paths)
    positives = ground_truth(base, db_paths, q_paths, radius)
    rel = {q: {"positive": {database[i] for i in p}, "junk": set()} for q, p in zip(queries, positives)}
    summary = {f"R@{n} before": v for n, v in result.recall_before.items()}
    summary.update({f"R@{n} after": v for n, v in (result.recall_after or {}).items()})
    write_run_report(out, lambda name: base / name, rel, summary, title="delfi: place recognition")


def vpr_sweep(
    root: Path = typer.Option(..., "--root"),
    out: Path = typer.Option(..., "--out", "-o", help="A folder written by `delfi eval vpr` (stores + ranking.txt)."),
    split: str = typer.Option("test", "--split"),
    top_k: List[int] = typer.Option([10, 20, 50, 100], "--k", help="K values (repeatable)."),
    max_distance: List[float] = typer.Option([0.8, 1.0, 1.2], "--max-distance", help="Matching thresholds (repeatable)."),
    threshold: List[float] = typer.Option([10.0, 20.0, 40.0], "--ransac-threshold", help="RANSAC residuals (repeatable)."),
    geometry: str = GEOMETRY_OPTION,
    radius: float = typer.Option(25.0, "--radius"),
    workers: int = WORKERS_OPTION,
) -> None:
    """Sweep K x matching threshold x RANSAC residual on a finished `delfi eval vpr` run: table + plot."""
    from dataclasses import replace

    from delfi.eval.results import ResultsConflictError
    from delfi.eval.vpr_run import claim_sweep_dir, plot_sweep, sweep_rerank
    from delfi.retrieval.rerank import RerankConfig, matching_for

    try:
        claim_sweep_dir(out)
    except ResultsConflictError as exc:
        raise fail(str(exc)) from None
    base_config = RerankConfig(workers=workers, matching=replace(matching_for(_family(None, out)), geometry=geometry))
    steps = len(top_k) * len(max_distance) * len(threshold)
    try:
        with ProgressBar(steps, "sweeping", unit="settings") as bar:
            sweep = sweep_rerank(root, out, split=split, top_ks=top_k, max_distances=max_distance, thresholds=threshold,
                                 base_config=base_config, radius=radius, on_step=lambda s: bar.advance(s, "done"))
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    before = sweep.recall_before
    table = Table(title=f"reranking sweep (global: R@1 {before[1]:.1f}, R@5 {before[5]:.1f})", title_justify="left")
    for col in ("K", "match d <", "residual px", "R@1", "R@5", "R@10", "R@20", "s / query"):
        table.add_column(col, justify="right")
    for r in sweep.rows:
        table.add_row(str(r.top_k), str(r.max_distance), f"{r.threshold:g}",
                      *(f"{r.recall[n]:.1f}" for n in (1, 5, 10, 20)), f"{r.seconds_per_query:.2f}",
                      style="bold green" if r is sweep.best else None)
    Console().print(table)
    picture = plot_sweep(sweep.rows, out / "sweep.png", n=1, before=before[1])
    stderr_console().print(f"sweep -> {out / 'sweep.json'}, {picture}")
