"""The generation track's part of the report: quality and time per method, the ConES /
textual-inversion time ratio at equal fidelity, and that ratio against the text
encoder's share of a textual-inversion step.

Generation runs (task ``generation``) are grouped per (backbone, concept, K); ``shots``
is K, the number of reference images. Runs on timing-only backbones (random weights,
``metrics.timing_only``) have step times and no quality metrics: they feed only the
text-encoder-share table. Like the rest of the report this is a pure function of the
run files: no clock, fixed formatting and order, and no torch.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tunebench.paths import atomic_write_text
from tunebench.scores import equal_fidelity

TASK = "generation"
METRIC = "step_seconds"  # the one number every generation run has, timing-only ones included
# Metrics that are fractions in [0, 1] (fnmatch patterns; a list's every element); a run
# outside is not read. CLIP-I/T are cosines and may be negative.
FRACTIONS = ("fidelity", "fidelity_per_prompt", "fidelity_threshold", "real_fidelity")
METHOD_ORDER = ("cones", "textual-inversion", "lit", "lit:kv", "lit:cross-attn", "lit:attn", "full-ft")
QUALITY = ("fidelity", "clip_i", "clip_t", "diversity")
TIMES = ("train_seconds", "seconds_to_threshold", "step_seconds", "conditioning_seconds")
REAL = ("real_fidelity", "real_clip_i", "real_clip_t")


def method_key(method: str) -> tuple[int, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenCell:
    """All successful seeds of one (backbone, concept, method, K)."""

    backbone: str
    concept: str
    method: str
    shots: int
    runs: tuple[dict, ...]  # sorted by seed

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r["seed"] for r in self.runs)

    @property
    def timing_only(self) -> bool:
        return any(r["metrics"].get("timing_only") for r in self.runs)

    def values(self, name: str) -> list[float]:
        out = []
        for r in self.runs:
            value = r.get(name) if name == "train_seconds" else r["metrics"].get(name)
            if _number(value):
                out.append(float(value))
        return out

    def mean(self, name: str) -> float | None:
        values = self.values(name)
        return statistics.fmean(values) if values else None

    def std(self, name: str) -> float:
        values = self.values(name)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def median(self, name: str) -> float | None:
        values = self.values(name)
        return statistics.median(values) if values else None

    @property
    def reached(self) -> int:
        return len(self.values("seconds_to_threshold"))

    @property
    def threshold(self) -> float | None:
        return self.mean("fidelity_threshold")

    @property
    def trainable_params(self) -> int:
        return round(statistics.fmean(r["trainable_params"] for r in self.runs))

    @property
    def total_params(self) -> int:
        return round(statistics.fmean(r["total_params"] for r in self.runs))

    def curve(self) -> list[tuple[float, float]]:
        """(mean train s, mean fidelity) per checkpoint, over the seeds that share the checkpoints."""
        curves = [r["metrics"].get("curve") or [] for r in self.runs]
        steps = [tuple(p["step"] for p in c) for c in curves]
        if not curves or not curves[0] or len(set(steps)) != 1:
            return []
        return [(statistics.fmean(c[i]["train_seconds"] for c in curves),
                 statistics.fmean(c[i]["fidelity"] for c in curves)) for i in range(len(curves[0]))]


def summarise(runs) -> list[GenCell]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[run["backbone"], run["dataset"], run["method"], run["shots"]].append(run)
    cells = [GenCell(backbone, dataset.removeprefix("concept:"), method, shots,
                     tuple(sorted(group, key=lambda r: (r["seed"], r["config_hash"]))))
             for (backbone, dataset, method, shots), group in groups.items()]
    return sorted(cells, key=lambda c: (c.backbone, c.concept, c.shots, method_key(c.method)))


# ---- the comparisons -------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """ConES against textual inversion in one (backbone, concept, K)."""

    backbone: str
    concept: str
    shots: int
    cones: GenCell
    ti: GenCell

    @property
    def threshold_ratio(self) -> float | None:
        """Mean seconds to the fidelity threshold, ConES / TI, when every seed of both reached it."""
        c, t = self.cones, self.ti
        if c.reached < len(c.runs) or t.reached < len(t.runs) or not t.mean("seconds_to_threshold"):
            return None
        return c.mean("seconds_to_threshold") / t.mean("seconds_to_threshold")

    def ratio(self, name: str) -> float | None:
        c, t = self.cones.mean(name), self.ti.mean(name)
        return c / t if c is not None and t else None

    @property
    def equal_levels(self) -> list[tuple[float, float]]:
        """Per seed run by both: (the highest fidelity both curves reach, ConES / TI seconds
        to first reach it). Seeds where that level is no gain over a start are left out."""
        ti = {r["seed"]: r["metrics"].get("curve") or [] for r in self.ti.runs}
        out = []
        for run in self.cones.runs:
            hit = equal_fidelity(run["metrics"].get("curve") or [], ti.get(run["seed"], []))
            if hit is not None and hit[2] > 0:
                out.append((hit[0], hit[1] / hit[2]))
        return out


def comparisons(cells: list[GenCell]) -> list[Comparison]:
    index = {(c.backbone, c.concept, c.shots, c.method): c for c in cells if not c.timing_only}
    out = []
    for (backbone, concept, shots, method), cell in sorted(index.items()):
        ti = index.get((backbone, concept, shots, "textual-inversion"))
        if method == "cones" and ti is not None:
            out.append(Comparison(backbone, concept, shots, cell, ti))
    return out


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


@dataclass(frozen=True)
class ShareRow:
    """Step times of ConES and TI on one backbone (all their runs, any concept and K)."""

    backbone: str
    text_params: int
    unet_params: int
    timing_only: bool
    cones_step: float
    ti_step: float
    ti_conditioning: float
    runs: int

    @property
    def ratio(self) -> float:
        return self.cones_step / self.ti_step

    @property
    def share(self) -> float:
        """The text encoder's forward + backward as a share of a TI step."""
        return self.ti_conditioning / self.ti_step


def share_rows(cells: list[GenCell]) -> list[ShareRow]:
    by_backbone: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        by_backbone[c.backbone][c.method].extend(c.runs)
    rows = []
    for backbone, methods in sorted(by_backbone.items()):
        cones, ti = methods.get("cones"), methods.get("textual-inversion")
        if not cones or not ti:
            continue
        med = lambda runs, key: statistics.median(float(r["metrics"][key]) for r in runs)  # noqa: E731
        first = ti[0]["metrics"]
        rows.append(ShareRow(
            backbone=backbone, text_params=int(first.get("text_encoder_params") or 0),
            unet_params=int(first.get("unet_params") or 0),
            timing_only=bool(first.get("timing_only")),
            cones_step=med(cones, "step_seconds"), ti_step=med(ti, "step_seconds"),
            ti_conditioning=med(ti, "conditioning_seconds"), runs=len(cones) + len(ti),
        ))
    return sorted(rows, key=lambda r: (r.share, r.backbone))


# ---- formatting ------------------------------------------------------------------------


def _table(header, rows, align) -> list[str]:
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(line) + " |" for line in (header, rule, *rows)]


def _pm(cell: GenCell, name: str, *, percent: bool = False, digits: int = 3) -> str:
    mean = cell.mean(name)
    if mean is None:
        return "—"
    scale = 100 if percent else 1
    text = f"{scale * mean:.{1 if percent else digits}f}"
    if len(cell.values(name)) > 1:
        text += f" ± {scale * cell.std(name):.{1 if percent else digits}f}"
    return text


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def _threshold_cell(cell: GenCell) -> str:
    n = len(cell.runs)
    if cell.reached == 0:
        return f"never (0/{n})"
    text = _seconds(cell.mean("seconds_to_threshold"))
    return text if cell.reached == n else f"{text} ({cell.reached}/{n})"


def _headline(comps: list[Comparison]) -> list[str]:
    if not comps:
        return []
    reached = [c.threshold_ratio for c in comps if c.threshold_ratio is not None]
    threshold = comps[0].cones.threshold
    levels = [pair for c in comps for pair in c.equal_levels]
    steps = [c.ratio("step_seconds") for c in comps if c.ratio("step_seconds")]
    runs = [c.ratio("train_seconds") for c in comps if c.ratio("train_seconds")]
    fid_cones = statistics.fmean(c.cones.mean("fidelity") or 0.0 for c in comps)
    fid_ti = statistics.fmean(c.ti.mean("fidelity") or 0.0 for c in comps)
    lines = ["### Headline: ConES / textual-inversion time at equal fidelity", ""]
    if levels:
        ratios = [r for _, r in levels]
        lines.append(
            f"- **At equal fidelity ConES takes {geometric_mean(ratios):.2f}× textual inversion's "
            f"training time** (geometric mean over {len(levels)} seed-matched run pairs, range "
            f"{min(ratios):.2f}–{max(ratios):.2f}×; the level compared is, per pair, the highest "
            f"fidelity both curves reach: mean {100 * statistics.fmean(v for v, _ in levels):.0f}%)."
        )
    else:
        lines.append("- At equal fidelity: no run pair where both methods rose above their start.")
    if reached:
        lines.append(
            f"- Time to the fixed threshold, fidelity ≥ {threshold:.2f}: ConES takes "
            f"{geometric_mean(reached):.2f}× textual inversion's time (geometric mean over the {len(reached)} of {len(comps)} "
            f"(concept, K) cells where every seed of both reached it; range "
            f"{min(reached):.2f}–{max(reached):.2f}×)."
        )
    else:
        lines.append(f"- Time to the fixed threshold, fidelity ≥ {threshold:.2f}: no (concept, K) cell "
                     "where every seed of both methods reached it.")
    lines += [
        f"- Per training step ConES takes {geometric_mean(steps):.2f}× textual inversion's time "
        f"(median step, geometric mean over cells); whole runs of equal steps {geometric_mean(runs):.2f}×.",
        f"- Quality after equal steps: fidelity ConES {100 * fid_cones:.1f}% vs textual inversion "
        f"{100 * fid_ti:.1f}% (mean over cells); per cell below.", "",
    ]
    header = ["Backbone", "Concept", "K", "Fidelity ConES", "Fidelity TI", "CLIP-I ConES", "CLIP-I TI",
              "CLIP-T ConES", "CLIP-T TI", "Equal level", "Ratio there", f"s to ≥{threshold:.2f} ConES",
              "TI", "Step ratio"]
    rows = []
    for c in comps:
        pairs = c.equal_levels
        rows.append([
            c.backbone, c.concept, str(c.shots), _pm(c.cones, "fidelity", percent=True),
            _pm(c.ti, "fidelity", percent=True), _pm(c.cones, "clip_i"), _pm(c.ti, "clip_i"),
            _pm(c.cones, "clip_t"), _pm(c.ti, "clip_t"),
            f"{100 * statistics.fmean(v for v, _ in pairs):.0f}%" if pairs else "—",
            _ratio(geometric_mean([r for _, r in pairs])) if pairs else "—",
            _threshold_cell(c.cones), _threshold_cell(c.ti), _ratio(c.ratio("step_seconds")),
        ])
    note = ("*Equal level*: per seed, the highest fidelity both curves reach (mean over seeds); "
            "*Ratio there*: ConES / TI seconds to first reach it (geometric mean over seeds).")
    return [*lines, note, "", *_table(header, rows, "lll" + "r" * 11), ""]


def _quality_tables(cells: list[GenCell]) -> list[str]:
    lines = []
    groups: dict[tuple, list[GenCell]] = defaultdict(list)
    for c in cells:
        if not c.timing_only:
            groups[c.backbone, c.concept].append(c)
    for (backbone, concept), group in sorted(groups.items()):
        threshold = group[0].threshold
        header = ["Method", "K", "Fidelity %", "CLIP-I", "CLIP-T", "Diversity", "Train s",
                  f"s to ≥{threshold:.2f}" if threshold else "s to threshold", "Step s",
                  "Trainable", "Seeds"]
        rows = [[c.method, str(c.shots), _pm(c, "fidelity", percent=True), _pm(c, "clip_i"),
                 _pm(c, "clip_t"), _pm(c, "diversity"), _pm(c, "train_seconds", digits=1),
                 _threshold_cell(c), f"{c.median('step_seconds'):.3f}", _count(c.trainable_params),
                 str(len(c.runs))] for c in sorted(group, key=lambda c: (method_key(c.method), c.shots))]
        real = {name: statistics.fmean(v for c in group for v in c.values(name))
                for name in REAL if any(c.values(name) for c in group)}
        calibration = ""
        if len(real) == len(REAL):
            calibration = (f" Real held-out {concept} images score fidelity {100 * real['real_fidelity']:.1f}%, "
                           f"CLIP-I {real['real_clip_i']:.3f}, CLIP-T {real['real_clip_t']:.3f}.")
        lines += [f"### {concept}, {backbone}", "",
                  f"Mean ± std over seeds.{calibration}", "",
                  *_table(header, rows, "lr" + "r" * (len(header) - 2)), ""]
    return lines


def _share_section(rows: list[ShareRow], figure_link: str | None) -> list[str]:
    if not rows:
        return []
    header = ["Backbone", "Text encoder", "UNet", "TI step s", "ConES step s", "ConES / TI",
              "Text enc. fwd+bwd s", "Share of TI step", "1 − share", "Runs"]
    body = [[f"{r.backbone}{' (timing only)' if r.timing_only else ''}", _count(r.text_params),
             _count(r.unet_params), f"{r.ti_step:.4f}", f"{r.cones_step:.4f}", f"{r.ratio:.2f}",
             f"{r.ti_conditioning:.4f}", f"{100 * r.share:.0f}%", f"{1 - r.share:.2f}", str(r.runs)]
            for r in rows]
    lines = [
        "### When does ConES pay off? Step time against the text encoder's share", "",
        "Median seconds per training step. *Text enc. fwd+bwd*: producing one batch's "
        "conditioning with textual inversion (text encoder forward and backward), timed apart "
        "after training; its *share* of a TI step predicts ConES / TI = 1 − share, because "
        "ConES removes exactly that work. Backbones marked *timing only* have random weights "
        "(`t2i-timing:TEXT-UNET`) and measure time alone.", "",
        *_table(header, body, "l" + "r" * (len(header) - 1)), "",
    ]
    if figure_link:
        lines += [f"![ConES / TI step time vs text-encoder share]({figure_link})", ""]
    return lines


def _grids_section(cells: list[GenCell]) -> list[str]:
    groups: dict[tuple, list[GenCell]] = defaultdict(list)
    for c in cells:
        if not c.timing_only and any((r.get("pictures") or {}).get("samples") for r in c.runs):
            groups[c.backbone, c.concept].append(c)
    if not groups:
        return []
    lines = ["### Sample grids", "",
             "Top row: the K reference images; then one row per evaluation prompt, in the order "
             "of `task_config.eval_prompts`, with the same seeds for every method. Shown: the "
             "largest K, first seed; every run's grid is linked.", ""]
    for (backbone, concept), group in sorted(groups.items()):
        group = sorted(group, key=lambda c: (method_key(c.method), c.shots))
        columns = sorted({(c.shots, r["seed"]) for c in group for r in c.runs})
        header = ["Method", *(f"K={k} seed {s}" for k, s in columns)]
        rows = []
        for method in sorted({c.method for c in group}, key=method_key):
            links = {(c.shots, r["seed"]): r["pictures"]["samples"] for c in group if c.method == method
                     for r in c.runs if (r.get("pictures") or {}).get("samples")}
            rows.append([method, *(f"[grid]({links[k]})" if k in links else "—" for k in columns)])
        lines += [f"**{concept}, {backbone}**", "", *_table(header, rows, "l" * len(header)), ""]
        largest = max(c.shots for c in group)
        for c in group:
            if c.shots == largest and (c.runs[0].get("pictures") or {}).get("samples"):
                path = c.runs[0]["pictures"]["samples"]
                lines += [f"{c.method}, {concept}, K={c.shots}, seed {c.runs[0]['seed']}:", "",
                          f"![{c.method} {concept}]({path})", ""]
    return lines


def render_section(cells: list[GenCell], figure_links: list[tuple[str, str]]) -> list[str]:
    if not cells:
        return []
    comps = comparisons(cells)
    share_link = next((link for title, link in figure_links if "share" in title), None)
    lines = [
        "## Generation track (task `generation`)", "",
        "Personalised text-to-image: each method learns a concept the model never saw from K "
        "reference images, with the same steps, batch, optimiser and seeds. *Fidelity*: share "
        "of samples the judge (a CNN on all 20 Fashion/Animal-MNIST classes, never used in "
        "tuning) labels as the concept; *CLIP-I*: mini-clip image–image cosine of samples to the "
        "references; *CLIP-T*: sample–prompt cosine with the concept's real name; *Diversity*: "
        "mean pairwise 1 − cosine among a prompt's samples; *s to ≥T*: train seconds until the "
        "fidelity curve (scored at checkpoints with the train clock paused) first reaches T, "
        "interpolated, with (reached/seeds) when not every seed did; *Step s*: median seconds "
        "per training step.", "",
        *_headline(comps),
        *_quality_tables(cells),
        *_share_section(share_rows(cells), share_link),
    ]
    lines += [f"![{title}]({link})\n" for title, link in figure_links if "share" not in title]
    return lines + _grids_section(cells)


def write_summary_csv(cells: list[GenCell], path: Path) -> None:
    metrics = [*QUALITY, *TIMES, *REAL]
    header = ["backbone", "concept", "method", "shots", "n_seeds", "seeds", "timing_only",
              "trainable_params", "total_params", "reached_threshold"]
    header += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for c in cells:
        row = [c.backbone, c.concept, c.method, c.shots, len(c.runs), ";".join(map(str, c.seeds)),
               int(c.timing_only), c.trainable_params, c.total_params, c.reached]
        for m in metrics:
            mean = c.mean(m)
            row += ["", ""] if mean is None else [f"{mean:.6g}", f"{c.std(m):.6g}"]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def write_section(runs: list[dict], results_dir: Path) -> tuple[list[str], list[Path]]:
    """The track-section interface (see ``report.TRACK_SECTIONS``)."""
    from tunebench.bench import figures_gen

    cells = summarise(runs)
    if not cells:
        return [], []
    written = figures_gen.write_figures(cells, share_rows(cells), results_dir / "figures")
    links = [(title, path.relative_to(results_dir).as_posix()) for title, path in written]
    summary_csv = results_dir / "summary_gen.csv"
    write_summary_csv(cells, summary_csv)
    return render_section(cells, links), [summary_csv, *(path for _, path in written)]
