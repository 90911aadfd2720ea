"""Reports of a compress run: ``report.json``, ``report.md`` and ``report.png``. Computes nothing.

A report is a plain dict made by :func:`edgeprune.api.compress`; its ``variants`` list holds one
row per model measured (dense, pruned, and their INT8 versions), with the figures measured.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeprune.metrics import FLOOR_METRICS
from edgeprune.paths import replaced_on_success, write_atomic

COLUMNS = [
    ("variant", "name", "{}"), ("accuracy", "accuracy", "{:.2%}"), ("mAP50", "map50", "{:.4f}"),
    ("mAP50-95", "map50_95", "{:.4f}"), ("mIoU", "miou", "{:.4f}"), ("cosine", "cosine_min", "{:.4f}"),
    ("top-1 agree", "top1_agreement_min", "{:.2%}"), ("box IoU", "box_iou_min", "{:.4f}"), ("MACs (M)", "macs", lambda v: f"{v / 1e6:.2f}"),
    ("params (M)", "params", lambda v: f"{v / 1e6:.3f}"), ("file (MB)", "size_bytes", lambda v: f"{v / 1e6:.2f}"),
    ("p50 ms", "p50_ms", "{:.3f}"), ("p90 ms", "p90_ms", "{:.3f}"), ("peak MB", "peak_memory_bytes", lambda v: f"{v / 1e6:.1f}"),
    ("speedup", "speedup", None), ("MACs ratio", "macs_ratio", "{:.2f}x"),
]


def speed_text(found: dict[str, Any]) -> str:
    """A measured speedup with its 95 % interval over side-by-side rounds: ``1.52x [1.49-1.55]``."""
    if found.get("speedup") is None:
        return "-"
    interval = (f" [{found['ci_low']:.2f}-{found['ci_high']:.2f}]"
                if found.get("rounds", 0) > 1 and found.get("ci_low") is not None and found["ci_low"] != found["ci_high"]
                else "")
    return f"{found['speedup']:.2f}x{interval}"


VERDICT_WORDS = {"met": "met", "missed": "missed: its whole 95 % interval is below",
                 "undecided": "not decidable here: its 95 % interval spans the target (time the files on the device)"}


def budget_verdict(final: dict[str, Any]) -> str:
    """The shipped files' speedup against the speed asked of a latency plan, judged on the report's
    interval: ``1.39x [1.34-1.44] against 1.5x the dense model's speed: missed: ...``; '' without one."""
    if not final.get("speed_verdict"):
        return ""
    return f"{speed_text(final)} against {final['asked']}: {VERDICT_WORDS[final['speed_verdict']]}"


def _cell(value: Any, fmt) -> str:
    if value is None:
        return "-"
    return fmt(value) if callable(fmt) else fmt.format(value)


DETECTOR_ONLY = {"box_iou_min", "map50", "map50_95", "miou"}  # shown when a variant has it (a detector's decoded
# output, boxes or masks in the data)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    columns = [c for c in COLUMNS if c[1] not in DETECTOR_ONLY or any(v.get(c[1]) is not None for v in report["variants"])]
    header = [c[0] for c in columns]
    return [header] + [[_cell(v.get(key), fmt) if fmt is not None else speed_text(v) for _, key, fmt in columns]
                       for v in report["variants"]]


def format_table(report: dict[str, Any]) -> str:
    """The console table: one row per variant, columns aligned."""
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def _int8_cell(found: dict[str, Any]) -> str:
    int8 = found.get("int8")
    if int8 is None:
        return "-"
    return "none: " + int8["error"] if "error" in int8 else f"{speed_text(int8['pruned'])} ({int8['pruned']['file']})"


def _cosine_cell(found: dict[str, Any], key: str = "cosine_min") -> str:
    """The worst output's cosine with the dense model on held-out images (or another figure, ``key``):
    pruned, and pruned INT8."""
    int8 = found.get("int8", {}).get("pruned", {})
    cells = [f"{m[key]:.4f}" if m.get(key) is not None else "-" for m in (found["pruned"], int8)]
    return " / ".join(cells) if int8 else cells[0]


def shipped_files(report: dict[str, Any]) -> list[str]:
    """What a compress run wrote, as patterns: ``pruned.pt``, ``*.onnx``, each runtime's files, the reports."""
    runtimes = [found["pruned"]["file"] for found in report.get("runtimes", {}).values() if "error" not in found]
    return ["pruned.pt", "*.onnx", *("*" + name[len("pruned"):] for name in runtimes),
            "report.json", "report.md", "report.png"]


def runtime_lines(runtimes: dict[str, Any], markdown: bool = False) -> list[str]:
    """Dense and pruned latency on each runtime beside onnxruntime, with the files that ship."""
    if not runtimes:
        return []
    boxed = any(r.get("pruned", {}).get("map50_95") is not None for r in runtimes.values())
    header = ["runtime", "dense p50 ms", "pruned p50 ms", "speedup", "pruned INT8 speedup", "cosine pruned / INT8",
              *(["mAP50-95 pruned / INT8"] if boxed else []), "pruned files", "max abs diff vs PyTorch"]
    rows = [[name, f"{r['dense_p50_ms']:.3f}", f"{r['pruned_p50_ms']:.3f}", speed_text(r), _int8_cell(r),
             _cosine_cell(r), *([_cosine_cell(r, "map50_95")] if boxed else []), ", ".join(r["pruned"]["files"]),
             f"{max(r['dense']['max_abs'], r['pruned']['max_abs']):.2g}"]
            if "error" not in r else [name, "-", "-", "-", "-", "-", *(["-"] if boxed else []), "none", r["error"]]
            for name, r in runtimes.items()]
    if not markdown:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    threads = next((r["threads"] for r in runtimes.values() if "threads" in r), "-")
    return (["## Other runtimes", "", f"Each float file checked against PyTorch, then dense and pruned timed side by side; INT8 speedup "
             f"is against dense float; cosine is the worst output's against the dense model on the held-out images "
             f"({threads} threads, fresh worker per model, interleaved rounds).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def markdown(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    lines = [f"# edgeprune report: {report['model']} for {report['target']['name']}", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "Speedup is the geometric mean over side-by-side rounds (fresh processes each) of the dense model's "
              "p50 latency over this one's, its 95 % interval in brackets; MACs ratio is dense MACs over these. "
              "Cosine and top-1 agreement compare each variant's ONNX file with the dense one on held-out images: "
              "the lowest over the model's outputs (per output below).",
              *(_map_note(report) if any(v.get("map50_95") is not None for v in report["variants"]) else []),
              f"Latency measured with onnxruntime on {report['host']['machine']} ({report['host']['cpus']} CPUs) "
              f"under the target's settings: {json.dumps(report['bench_settings'])}.", ""]
    lines += promise_lines(report, markdown=True)
    lines += _inputs_section(report.get("inputs", {}))
    lines += _quality_section(report)
    lines += _pruning_section(report["pruning"])
    lines += _latency_section(report["pruning"].get("plan", {}))
    lines += _allocation_section(report["pruning"])
    lines += runtime_lines(report.get("runtimes", {}), markdown=True)
    lines += curve_lines(report, markdown=True)
    lines += ["## Export check", "", "```json", json.dumps(report.get("export"), indent=2, default=str), "```", ""]
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["![channels and latency](report.png)", ""]
    return "\n".join(lines)


def _map_note(report: dict[str, Any]) -> list[str]:
    options = report.get("options", {})
    return [f"mAP50 and mAP50-95 (COCO's, pycocotools) of each variant's file against the held-out images' boxes, "
            f"after NMS outside the model (scores above {options.get('conf', 0.001):g}, IoU {options.get('iou', 0.7):g})."]


def _inputs_section(inputs: dict[str, Any]) -> list[str]:
    if not inputs:
        return []
    outputs = ", ".join(f"`{o['name']}`" + (f" ({o['kind']}, {'x'.join(['N', *map(str, o['shape'])])})"
                                            if "kind" in o else "") for o in inputs["outputs"])
    lines = ["## Inputs and outputs", "", f"- input: {'x'.join(map(str, inputs['shape']))}; images become inputs as "
             f"{inputs['preprocess_text']} (npz model inputs are used as given)", f"- outputs: {outputs}"]
    if inputs.get("label_output"):
        lines.append(f"- labels belong to `{inputs['label_output']}`")
    return lines + [""]


def _quality_section(report: dict[str, Any]) -> list[str]:
    rows = [(v["name"], r) for v in report["variants"][1:] for r in v.get("fidelity", [])]
    if not rows:
        return []
    data = report["pruning"].get("eval_data", {})
    iou_header = " box IoU (top anchors) |" if any("box_iou" in r for _, r in rows) else ""
    lines = ["## Quality against the dense model, output by output", "",
             f"On {data.get('images')} held-out images of {data.get('source')} [{data.get('split')}], never used to "
             "fine-tune; each variant's ONNX file against the dense ONNX file.", "",
             "| variant | output | kind | relative L2 error | cosine | top-1 agreement |" + iou_header,
             "|---|---|---|---|---|---|" + "---|" * bool(iou_header)]
    for name, r in rows:
        agree = f"{r['top1_agreement']:.2%}" if "top1_agreement" in r else "-"
        iou = (f" {r['box_iou']:.4f} |" if "box_iou" in r else " - |") if iou_header else ""
        lines.append(f"| {name} | {r['output']} | {r['kind']} | {r['rel_l2']:.4f} | {r['cosine']:.4f} | {agree} |" + iou)
    return lines + [""]


def _after_cut(pruning: dict[str, Any]) -> str:
    after = pruning.get("after_cut") or {}
    figures = []
    if pruning.get("accuracy_before_finetune") is not None:
        figures.append(f"top-1 {pruning['accuracy_before_finetune']:.2%}")
    if after.get("cosine_min") is not None:
        figures.append(f"cosine {after['cosine_min']:.4f}")
    return f"; right after the cut: {', '.join(figures)}" if figures else ""


def _recovery(tuned: dict[str, Any] | None) -> str:
    if not tuned:
        return "; not fine-tuned"
    last = tuned["history"][-1] if tuned.get("history") else {}
    how = "distilled from the dense model" if "distill" in last else "fine-tuned on labels"
    held = last.get("held_out", {})
    after = f" (held-out cosine {held['cosine_min']:.4f} after the last epoch)" if "cosine_min" in held else ""
    return f"; then {how} for {tuned['epochs']} epochs at lr {tuned['lr']}{after}"


def _kept(kept: dict[str, Any] | None) -> str:
    if not kept:
        return ""
    states = "; ".join(f"{st['state']}: " + ", ".join(f"{k.replace('_min', '')} {v:.4f}" for k, v in st.items()
                                                      if k != "state") for st in kept["states"])
    return f"; kept the model {kept['kept']} (on {kept['images']} training images held out from recovery: {states})"


def _pruning_section(pruning: dict[str, Any]) -> list[str]:
    lines = ["## Pruning", "",
             f"Criterion `{pruning['criterion']}` ({pruning['recipe']} recipe): {pruning['macs_cut']:.1%} of MACs and "
             f"{1 - pruning['params_after'] / pruning['params_before']:.1%} of params removed"
             + _after_cut(pruning) + _recovery(pruning.get("finetune")) + _kept(pruning.get("kept")) + ".", "",
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
    runtime = plan.get("runtime", "onnxruntime")
    lines = ["## Latency budget", "", f"Budget {plan['budget_ms']:.3f} ms in {runtime} ({asked}); widths chosen "
             f"from its latency table `{plan['table']}`.", "", "| | dense ms | pruned ms |", "|---|---|---|",
             f"| predicted by the table | {plan['dense_ms_measured']:.3f} (its start) | {plan['predicted_ms']:.3f} |"]
    if measured is not None:
        lines.append(f"| measured while planning | {plan['rounds'][-1]['dense_ms']:.3f} | {measured:.3f} |")
    if final and final.get("pruned_ms") is not None:
        lines.append(f"| measured in this report (this host) | {final['dense_ms']:.3f} | {final['pruned_ms']:.3f} |")
    lines.append("")
    verdict = budget_verdict(final)
    if verdict:
        lines += [f"Speed of the shipped files in this report: {verdict}.", ""]
    lines.append(f"Prediction error against the measurement: {plan['predicted_ms'] / measured - 1:+.1%}; "
                 f"{len(plan['rounds'])} confirmation round(s)." if measured is not None else
                 "The table came from another machine: the plan rests on its prediction, not confirmed here.")
    lines += ["", "| group | units before | units after |", "|---|---|---|"]
    lines += [f"| {name} | {before} | {after} |" for name, (before, after) in plan["widths"].items()]
    return lines + [""]


def curve_lines(report: dict[str, Any], markdown: bool = False) -> list[str]:
    """The trade-off curve: each trial's speed in the runtime planned for against its fidelity after
    recovery, the chosen point marked; with a floor, what the search cost."""
    curve, search = report.get("curve"), report.get("search") or {}
    if not curve:
        return []
    boxed = any(p.get("map50_95") is not None for p in curve)
    header = ["plan", "MACs cut", "speedup [95 % interval]", "rounds", "worst cosine", "mAP50-95" if boxed else "top-1", "meets floor",
              "seconds", ""]
    rows = [[p["plan"], f"{p['macs_cut']:.1%}", speed_text(p), str(p.get("rounds") or len(p.get("speedup_rounds", []))),
             f"{p['cosine_min']:.4f}", _score_cell(p, boxed), {None: "-", True: "yes", False: "no"}[p["meets"]],
             f"{p['seconds']:.0f}", "chosen" if p["chosen"] else ""] for p in curve]
    floor = search.get("floor")
    cost = (f"{search['trials']} trials, each cut and recovered as this run recovers, "
            f"{search['seconds']:.0f} s in all" if search else "")
    title = (f"speed in {search.get('runtime', 'onnxruntime')} against fidelity after recovery"
             + (f"; floor: {_floor_text(floor)}" if floor else "") + (f"; {cost}" if cost else ""))
    if not markdown:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        return [f"trade-off curve: {title}"] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                                                for r in [header] + rows]
    return (["## Trade-off curve", "", title[0].upper() + title[1:] + " (held-out images; speedup: the geometric "
             "mean of side-by-side rounds against dense, with its 95 % interval, measured until the interval decides "
             "the speed target or is within +-3 %).", "", "| " + " | ".join(header[:-1]) + " | |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def _score_cell(point: dict[str, Any], boxed: bool) -> str:
    if boxed:
        return "-" if point.get("map50_95") is None else f"{point['map50_95']:.4f}"
    return "-" if point["top1"] is None else f"{point['top1']:.2%}"


def promise_lines(report: dict[str, Any], markdown: bool = False) -> list[str]:
    """What was asked (floor, speed) against what the search measured of the chosen point and what
    this report measured of the delivered files."""
    promise = report.get("promise")
    if not promise:
        return []
    found, here = promise["search"], promise["report"]

    def figures(measured: dict[str, Any]) -> str:
        speed = speed_text(measured) if measured["speedup"] is not None else ""
        rounds = f" ({measured['rounds']} rounds)" if measured.get("rounds") else ""
        top1 = f", top-1 {measured['top1']:.2%}" if measured.get("top1") is not None else ""
        top1 += f", mAP50-95 {measured['map50_95']:.4f}" if measured.get("map50_95") is not None else ""
        top1 += f", mIoU {measured['miou']:.4f}" if measured.get("miou") is not None else ""
        return f"{speed}{rounds}, worst cosine {measured['cosine_min']:.4f}{top1}".lstrip(", ")

    why = {"the floor": "the shipped file scores below the search's figures",
           "the speed": "its whole 95 % interval is below the target"}
    missed = [part for part, held in (("the floor", promise["floor_held"]), ("the speed", promise["speed_held"]))
              if held is False]
    undecided = promise.get("speed_verdict") == "undecided"
    verdict = ("kept" if promise["held"] and not undecided else "the floor kept" if promise["held"] else
               f"{' and '.join(missed)} not kept in this report's own measurement ({'; '.join(why[m] for m in missed)})")
    if undecided:
        verdict += ("; the speed not decidable here: its 95 % interval spans the target after the time allowed "
                    "(`--max-bench-seconds`); time the files on the device (`edgeprune bench`)")
    line = (f"promise in {promise['runtime']}: {promise['asked']}: {verdict}. The search measured "
            f"{figures(found)}; this report {figures(here)}.")
    return ["## Promise", "", line[0].upper() + line[1:], ""] if markdown else [line]


def _floor_text(floor: dict[str, Any]) -> str:
    parts = ([f"worst output cosine >= {floor['min_cosine']:g}"] if floor.get("min_cosine") is not None else []) + (
        [f"{FLOOR_METRICS[floor.get('metric', 'top1')]} within {floor['max_drop']:g} points of "
         "dense"] if floor.get("max_drop") is not None else [])
    return " and ".join(parts)


def _allocation_section(pruning: dict[str, Any]) -> list[str]:
    """Widths chosen from each group's sensitivity: the predicted loss beside the measured one."""
    plan = pruning.get("plan", {})
    if plan.get("allocation") != "sensitivity":
        return []
    after = (pruning.get("after_cut") or {}).get("cosine_min")
    measured = (f"; measured right after the cut (before fine-tuning): one minus the worst output's cosine "
                f"{1 - after:.4f}" if after is not None else "")
    lines = ["## Allocation by sensitivity", "",
             f"Each group's width was chosen from its own measured sensitivity ({plan['criterion']} order): predicted "
             f"loss (sum over groups of one minus the worst output's cosine, each measured alone) "
             f"{plan['predicted_loss']:.4f}{measured}.", "", "| group | units before | units after | predicted loss |",
             "|---|---|---|---|"]
    losses = plan.get("predicted_loss_by_group", {})
    lines += [f"| {name} | {before} | {after} | {losses.get(name, 0.0):.4f} |" for name, (before, after) in plan["widths"].items()]
    return lines + [""]


def plot(report: dict[str, Any], path: Path) -> None:
    """Channels per layer before/after; latency and MACs of each variant relative to dense; the
    relative L2 error of each output of each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    quality = [v for v in report["variants"][1:] if v.get("fidelity")]
    drawers = [lambda ax: _plot_layers(ax, report["pruning"]["layers"]), lambda ax: _plot_relative(ax, report["variants"])]
    ratios = [3, 1.3]
    if quality:
        drawers.append(lambda ax: _plot_quality(ax, quality))
        ratios.append(1.3)
    if any(v.get("map50_95") is not None for v in report["variants"]):
        drawers.append(lambda ax: _plot_map(ax, report["variants"]))
        ratios.append(1.3)
    if report.get("curve"):
        drawers.append(lambda ax: _plot_curve(ax, report))
        ratios.append(1.8)
    fig, axes = plt.subplots(1, len(drawers), figsize=(1 + 3.1 * sum(ratios), 4.5), gridspec_kw={"width_ratios": ratios})
    for ax, draw in zip(axes, drawers):
        draw(ax)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_layers(ax: Any, layers: list[dict[str, Any]]) -> None:
    x = range(len(layers))
    ax.bar(x, [l["out_before"] for l in layers], color="#c8c8c8", label="before")
    ax.bar(x, [l["out_after"] for l in layers], color="#3b7dd8", label="after")
    ax.set(title="output channels per layer", xlabel="conv / linear layer (in order)", ylabel="channels")
    ax.legend()


def _plot_relative(ax: Any, variants: list[dict[str, Any]]) -> None:
    names = [v["name"] for v in variants]
    dense, width = variants[0], 0.38
    latency = [v["p50_ms"] / dense["p50_ms"] for v in variants]
    macs = [v["macs"] / dense["macs"] for v in variants]
    bars = ax.bar([i - width / 2 for i in range(len(names))], latency, width, label="p50 latency", color="#e07b39")
    ax.bar([i + width / 2 for i in range(len(names))], macs, width, label="MACs", color="#3b7dd8")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in latency], fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set(title="relative to dense", ylim=(0, max(1.15, 1.15 * max(latency + macs))))
    ax.legend()


def _plot_quality(ax: Any, variants: list[dict[str, Any]]) -> None:
    outputs = [r["output"] for r in variants[0]["fidelity"]]
    width = 0.8 / len(outputs)
    for k, output in enumerate(outputs):
        errors = [v["fidelity"][k]["rel_l2"] for v in variants]
        ax.bar([i - 0.4 + width * (k + 0.5) for i in range(len(variants))], errors, width, label=output)
    ax.set_xticks(range(len(variants)), [v["name"] for v in variants], rotation=20)
    ax.set(title="relative L2 error vs dense, per output", ylabel="||variant - dense|| / ||dense||")
    ax.legend(fontsize=7)


def _plot_map(ax: Any, variants: list[dict[str, Any]]) -> None:
    """Each variant's mAP50 and mAP50-95 against the held-out images' boxes."""
    names, width = [v["name"] for v in variants], 0.38
    for k, (key, label, color) in enumerate((("map50", "mAP50", "#3b7dd8"), ("map50_95", "mAP50-95", "#e07b39"))):
        values = [v.get(key) or 0.0 for v in variants]
        bars = ax.bar([i + (k - 0.5) * width for i in range(len(names))], values, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set(title="mAP on held-out boxes", ylim=(0, 1.05))
    ax.legend(fontsize=7)


def _plot_curve(ax: Any, report: dict[str, Any]) -> None:
    curve = sorted(report["curve"], key=lambda p: p["speedup"])
    floor = (report.get("search") or {}).get("floor") or {}
    ax.plot([p["speedup"] for p in curve], [p["cosine_min"] for p in curve], marker="o", color="#3b7dd8",
            label="trials (after recovery)")
    for p in curve:
        ax.annotate(f"{p['macs_cut']:.0%}", (p["speedup"], p["cosine_min"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    chosen = [p for p in curve if p["chosen"]]
    if chosen:
        ax.scatter([p["speedup"] for p in chosen], [p["cosine_min"] for p in chosen], s=160, facecolors="none",
                   edgecolors="#d62728", linewidths=2, zorder=3, label="chosen")
    if floor.get("min_cosine") is not None:
        ax.axhline(floor["min_cosine"], color="#d62728", linestyle="--", linewidth=1, label="floor")
    runtime = (report.get("search") or {}).get("runtime", "onnxruntime")
    ax.set(title="trade-off (label: MACs cut)", xlabel=f"speedup over dense ({runtime})",
           ylabel="worst output cosine to dense")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the three report files into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = [out / "report.json", out / "report.md", out / "report.png"]
    write_atomic(paths[0], json.dumps(report, indent=2, default=str))
    write_atomic(paths[1], markdown(report))
    with replaced_on_success(paths[2]) as tmp:
        plot(report, tmp)
    return paths
