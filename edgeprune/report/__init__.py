"""Reports of a compress run: ``report.json``, ``report.md`` and ``report.png``. Computes nothing.

A report is a plain dict made by :func:`edgeprune.api.compress`; its ``variants`` list holds one
row per model measured (dense, pruned, and their INT8 versions), with the figures measured.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

COLUMNS = [
    ("variant", "name", "{}"), ("accuracy", "accuracy", "{:.2%}"), ("MACs (M)", "macs", lambda v: f"{v / 1e6:.2f}"),
    ("params (M)", "params", lambda v: f"{v / 1e6:.3f}"), ("file (MB)", "size_bytes", lambda v: f"{v / 1e6:.2f}"),
    ("p50 ms", "p50_ms", "{:.3f}"), ("p90 ms", "p90_ms", "{:.3f}"), ("peak MB", "peak_memory_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("speedup", "speedup", "{:.2f}x"), ("MACs ratio", "macs_ratio", "{:.2f}x"),
]


def _cell(value: Any, fmt) -> str:
    if value is None:
        return "-"
    return fmt(value) if callable(fmt) else fmt.format(value)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    header = [c[0] for c in COLUMNS]
    return [header] + [[_cell(v.get(key), fmt) for _, key, fmt in COLUMNS] for v in report["variants"]]


def format_table(report: dict[str, Any]) -> str:
    """The console table: one row per variant, columns aligned."""
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def markdown(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    lines = [f"# edgeprune report: {report['model']} for {report['target']['name']}", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "Speedup is the dense model's p50 latency over this one's; MACs ratio is dense MACs over these.",
              f"Latency measured with onnxruntime on {report['host']['machine']} ({report['host']['cpus']} CPUs) "
              f"under the target's settings: {json.dumps(report['bench_settings'])}.", ""]
    lines += _pruning_section(report["pruning"])
    lines += _latency_section(report["pruning"].get("plan", {}))
    lines += ["## Export check", "", "```json", json.dumps(report.get("export"), indent=2, default=str), "```", ""]
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["![channels and latency](report.png)", ""]
    return "\n".join(lines)


def _pruning_section(pruning: dict[str, Any]) -> list[str]:
    before = pruning.get("accuracy_before_finetune")
    tuned = pruning.get("finetune")
    lines = ["## Pruning", "",
             f"Criterion `{pruning['criterion']}` ({pruning['recipe']} recipe): {pruning['macs_cut']:.1%} of MACs and "
             f"{1 - pruning['params_after'] / pruning['params_before']:.1%} of params removed"
             + (f"; top-1 right after the cut {before:.2%}" if before is not None else "")
             + (f"; then fine-tuned {tuned['epochs']} epochs at lr {tuned['lr']}" if tuned else "; not fine-tuned") + ".", "",
             "| layer | in | out | MACs (M) |", "|---|---|---|---|"]
    for row in pruning.get("layers", []):
        lines.append(f"| {row['layer']} | {row['in_before']} → {row['in_after']} | {row['out_before']} → {row['out_after']} "
                     f"| {row['macs_before'] / 1e6:.2f} → {row['macs_after'] / 1e6:.2f} |")
    return lines + [""]


def _latency_section(plan: dict[str, Any]) -> list[str]:
    """Predicted against measured latency, when a latency budget chose the widths."""
    if "budget_ms" not in plan:
        return []
    asked = f"{plan['budget']['ms']} ms asked" if plan["budget"]["ms"] is not None else \
        f"{plan['budget']['speedup']}x the dense model's speed"
    measured = plan["measured_ms"]
    final = plan.get("final", {})
    lines = ["## Latency budget", "", f"Budget {plan['budget_ms']:.3f} ms ({asked}); widths chosen from the latency "
             f"table `{plan['table']}`.", "", "| | dense ms | pruned ms |", "|---|---|---|",
             f"| predicted by the table | {plan['dense_ms_measured']:.3f} (its start) | {plan['predicted_ms']:.3f} |"]
    if measured is not None:
        lines.append(f"| measured while planning | {plan['rounds'][-1]['dense_ms']:.3f} | {measured:.3f} |")
    if final:
        lines.append(f"| measured in this report (this host) | {final['dense_ms']:.3f} | {final['pruned_ms']:.3f} |")
    lines.append("")
    lines.append(f"Prediction error against the measurement: {plan['predicted_ms'] / measured - 1:+.1%}; "
                 f"{len(plan['rounds'])} confirmation round(s)." if measured is not None else
                 "The table came from another machine: the plan rests on its prediction, not confirmed here.")
    lines += ["", "| group | units before | units after |", "|---|---|---|"]
    lines += [f"| {name} | {before} | {after} |" for name, (before, after) in plan["widths"].items()]
    return lines + [""]


def plot(report: dict[str, Any], path: Path) -> None:
    """Channels per layer before/after, and latency and MACs of each variant relative to dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["pruning"]["layers"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    x = range(len(layers))
    left.bar(x, [l["out_before"] for l in layers], color="#c8c8c8", label="before")
    left.bar(x, [l["out_after"] for l in layers], color="#3b7dd8", label="after")
    left.set(title="output channels per layer", xlabel="conv / linear layer (in order)", ylabel="channels")
    left.legend()
    names = [v["name"] for v in report["variants"]]
    dense = report["variants"][0]
    width = 0.38
    right.bar([i - width / 2 for i in range(len(names))], [v["p50_ms"] / dense["p50_ms"] for v in report["variants"]],
              width, label="p50 latency", color="#e07b39")
    right.bar([i + width / 2 for i in range(len(names))], [v["macs"] / dense["macs"] for v in report["variants"]],
              width, label="MACs", color="#3b7dd8")
    right.set_xticks(range(len(names)), names, rotation=20)
    right.set(title="relative to dense", ylim=(0, 1.15))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the three report files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = [out / "report.json", out / "report.md", out / "report.png"]
    _write_text(paths[0], json.dumps(report, indent=2, default=str))
    _write_text(paths[1], markdown(report))
    tmp = out / ".report.tmp.png"
    plot(report, tmp)
    os.replace(tmp, paths[2])
    return paths
