"""Every torchvision classification model: prune 30 %, save, reload, same outputs, fewer MACs.

For each name in ``torchvision.models.list_models(module=torchvision.models)`` (random init,
eval mode, the input shape ``edgeprune.models.build`` gives: 299 for inception_v3, else 224), in a
fresh process with a time limit: prune 30 % of the channels (``criterion="l2"``), write the
checkpoint with ``save_checkpoint``, read it back with ``load_model``, and run the reloaded and the
in-memory pruned model on one random input. A row is

- ``ok``: the outputs agree (``allclose``, rtol 1e-4, atol 1e-5) and the MACs went down;
- ``refused``: pruning stopped with one clear :class:`EdgepruneError` line (kept as the reason);
- ``failed``: anything else (an exception, a crash, a time-out, different outputs, no MACs cut).

Not a test (all 80 models take minutes): run it by hand. It prints a Markdown table and writes
the rows as JSON (``--json``, default ``benchmarks/results/zoo_sweep.json``) and the table, with
the command and the total time, next to it (same name, ``.md``).

    .venv/bin/python benchmarks/zoo_sweep.py [--models resnet18 vit_b_16 ...] [--timeout 300] [--threads 1]
                                             [--json benchmarks/results/zoo_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RATIO = 0.3
RTOL, ATOL = 1e-4, 1e-5
MARK = "ZOO_SWEEP_ROW "
DEFAULT_JSON = Path(__file__).parent / "results" / "zoo_sweep.json"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:300]


def worker(name: str, threads: int, workdir: str) -> dict:
    """Runs inside the fresh process: one model, start to end."""
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    from edgeprune.api import prune
    from edgeprune.checkpoint import load_model, save_checkpoint
    from edgeprune.errors import EdgepruneError
    from edgeprune.models import build

    row: dict = {"model": name, "status": "failed", "reason": "", "input_shape": None, "macs_before": None,
                 "macs_after": None, "params_before": None, "params_after": None, "max_diff": None,
                 "warnings": None, "first_warning": "", "stage": "build"}
    start = time.perf_counter()
    try:
        built = build(f"torchvision:{name}", pretrained=False)  # random init, on purpose
        row["input_shape"] = list(built.input_shape)
        row["stage"] = "prune"
        try:
            result = prune(built.model, built.input_shape, criterion="l2", ratio=RATIO, inplace=True)
        except EdgepruneError as exc:  # a clear refusal is an answer
            row.update(status="refused", reason=str(exc).splitlines()[0][:300])
            return row
        row.update(macs_before=result.before.macs, macs_after=result.after.macs, params_before=result.before.params,
                   params_after=result.after.params, warnings=len(result.warnings),
                   first_warning=result.warnings[0][:200] if result.warnings else "")
        row["stage"] = "save"
        path = save_checkpoint(result.model, Path(workdir) / f"{name}.pt", spec=built.spec,
                               input_shape=built.input_shape, kwargs=built.kwargs, preprocess=built.preprocess)
        del built
        row["stage"] = "reload"
        loaded = load_model(str(path))
        row["stage"] = "forward"
        x = torch.randn(tuple(loaded.input_shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = result.model.eval()(x)
            got = loaded.model.eval()(x)
        row["max_diff"] = float((got - expected).abs().max())
        row["stage"] = "check"
        if not torch.allclose(got, expected, rtol=RTOL, atol=ATOL):
            row["reason"] = f"reloaded outputs differ: max abs diff {row['max_diff']:.3g}"
        elif not result.after.macs < result.before.macs:
            row["reason"] = f"MACs not cut: {result.before.macs} -> {result.after.macs}"
        else:
            row.update(status="ok", stage="done")
    except Exception as exc:  # anything else is a failure to look at
        row["reason"] = f"{row['stage']}: {_first_line(exc)}"
    finally:
        row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def measure(name: str, threads: int, timeout: float, workdir: str) -> dict:
    """One model in a fresh process (memory; crashes and hangs stay there)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import zoo_sweep as b; "
            f"print({MARK!r} + json.dumps(b.worker({name!r}, {threads}, {workdir!r})))")
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "failed", "reason": f"timed out after {timeout:.0f} s",
                "seconds": round(time.perf_counter() - start, 2)}
    finally:
        for leftover in Path(workdir).glob("*"):  # the checkpoint (or a partial one) of this model
            leftover.unlink()
    rows = [line[len(MARK):] for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not rows:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        why = tail[-1][:300] if tail else f"exit code {proc.returncode}"
        return {"model": name, "status": "failed", "reason": f"process died (exit {proc.returncode}): {why}",
                "seconds": round(time.perf_counter() - start, 2)}
    row = json.loads(rows[-1])
    row["wall_seconds"] = round(time.perf_counter() - start, 2)  # with the process start and imports
    return row


def _mega(value) -> str:
    return f"{value / 1e6:,.1f}" if value is not None else "-"


def markdown(rows: list[dict]) -> str:
    out = ["| model | status | input | MACs before (M) | MACs after (M) | MACs cut | params after (M) | max diff | warnings | s | reason |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        before, after = r.get("macs_before"), r.get("macs_after")
        cut = f"{1 - after / before:.1%}" if before and after is not None else "-"
        diff = f"{r['max_diff']:.1e}" if r.get("max_diff") is not None else "-"
        shape = "x".join(map(str, r["input_shape"][1:])) if r.get("input_shape") else "-"
        params = f"{r['params_after'] / 1e6:,.2f}" if r.get("params_after") is not None else "-"
        warnings = r.get("warnings") if r.get("warnings") is not None else "-"
        reason = (r.get("reason") or "").replace("|", "\\|")
        out.append(f"| {r['model']} | {r['status']} | {shape} | {_mega(before)} | {_mega(after)} | {cut} | {params} "
                   f"| {diff} | {warnings} | {r.get('seconds', 0):.1f} | {reason} |")
    return "\n".join(out)


def markdown_report(report: dict) -> str:
    """The table with what produced it: command, versions, total time, counts, and each failure."""
    c = report["counts"]
    lines = [f"# torchvision zoo sweep: prune {report['ratio']:.0%}, save, reload", "",
             f"Command: `{report['command']}` ({report['threads']} torch thread(s) per model, "
             f"{report['timeout_s']:.0f} s limit per model; torch {report['torch']}, torchvision {report['torchvision']}).",
             f"Total time: {report['total_seconds']:.0f} s ({report['total_seconds'] / 60:.1f} min) for "
             f"{len(report['rows'])} models, each in its own process.", "",
             f"**{c['ok']} ok, {c['refused']} refused, {c['failed']} failed.** ok: the reloaded checkpoint's output equals "
             f"the in-memory pruned model's (allclose, rtol {report['rtol']:g}, atol {report['atol']:g}) and MACs went down. "
             "`s` is the time in the model's process after imports (build, prune, save, reload, two forwards); "
             "`warnings` counts the graph's warnings (channels it pins or layers it leaves alone).", "",
             markdown(report["rows"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    import tempfile

    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", metavar="NAME", help="only these (default: every classification model)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model (default 1)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"write the results here (default {DEFAULT_JSON})")
    args = parser.parse_args()
    names = torchvision.models.list_models(module=torchvision.models)
    unknown = sorted(set(args.models or []) - set(names))
    if unknown:
        parser.error(f"not torchvision classification models: {', '.join(unknown)}")
    names = [n for n in names if n in args.models] if args.models else names
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo_sweep.") as workdir:
        for i, name in enumerate(names, 1):
            row = measure(name, args.threads, args.timeout, workdir)
            rows.append(row)
            print(f"[{i}/{len(names)}] {name:<22} {row['status']:<8} {row.get('seconds', 0):7.1f} s  {row.get('reason', '')}",
                  flush=True)
    total = time.perf_counter() - start
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "refused", "failed")}
    print()
    print(markdown(rows))
    print(f"\n{len(rows)} models: {counts['ok']} ok, {counts['refused']} refused, {counts['failed']} failed; {total:.0f} s")
    import torch

    report = {"ratio": RATIO, "rtol": RTOL, "atol": ATOL, "threads": args.threads, "timeout_s": args.timeout,
              "torch": torch.__version__, "torchvision": torchvision.__version__,
              "command": " ".join([_relative(sys.executable), *sys.argv]), "total_seconds": round(total, 1),
              "counts": counts, "rows": rows}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    md = path.with_suffix(".md")
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(markdown_report(report))
    os.replace(tmp, md)
    print(f"wrote {path} and {md}")


def _relative(executable: str) -> str:
    relative = os.path.relpath(executable)
    return relative if not relative.startswith("..") else executable


if __name__ == "__main__":
    main()
