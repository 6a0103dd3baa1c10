"""The generation track (task ``generation``): quality and time per method, the ConES /
textual-inversion time ratio at equal fidelity, and that ratio against the text
encoder's share of a textual-inversion step.

Runs are grouped per (backbone, concept, K); ``shots`` is K, the number of reference
images. Runs on timing-only backbones (random weights, ``metrics.timing_only``) have
step times and no quality metrics: they feed only the text-encoder-share table. Runs on
a subject of your own (``subject:PATH``) have no fidelity (no judge knows the subject):
they get their own tables of CLIP-I, CLIP-T and DINO (when scored), and stay out of the
fidelity headline, curves and judge table.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from matplotlib.lines import Line2D

from tunebench.report import figures
from tunebench.report import table as t
from tunebench.report.chain import chain_table, own_tables
from tunebench.report.curves import curve_part
from tunebench.report.sections import Options, section
from tunebench.report.style import method_key, style
from tunebench.scores import equal_fidelity

QUALITY = ("fidelity", "clip_i", "clip_t", "diversity")
TIMES = ("train_seconds", "seconds_to_threshold", "step_seconds", "conditioning_seconds")
REAL = ("real_fidelity", "real_clip_i", "real_clip_t")
# A subject's own measures: DINO (when a model was given) and its references scored
# against each other and the prompts (gen_eval's calibration for a subject).
SUBJECT = ("dino", "reference_clip_i", "reference_clip_t", "reference_dino")
_DASHES = ["--", "-", ":", "-."]  # one line style per K, ascending


def values(c: dict, name: str) -> list[float]:
    """The finite values of a metric (or of ``train_seconds``) over the cell's runs."""
    found = (r.get(name) if name == "train_seconds" else r["metrics"].get(name) for r in c["runs"])
    return [float(v) for v in found if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


def mean(c: dict, name: str) -> float | None:
    return None if t.missing(value := c.get(f"{name}_mean")) else value


def curve(c: dict) -> list[tuple[float, float]]:
    """(mean train s, mean fidelity) per checkpoint, over the seeds that share the checkpoints;
    [] for curves of another measure (a subject's CLIP-I)."""
    curves = [r["metrics"].get("curve") or [] for r in c["runs"]]
    if not curves[0] or len({tuple(p["step"] for p in k) for k in curves}) != 1 or \
            not all("fidelity" in p for k in curves for p in k):
        return []
    return [(statistics.fmean(k[i]["train_seconds"] for k in curves), statistics.fmean(k[i]["fidelity"] for k in curves))
            for i in range(len(curves[0]))]


def summarise(runs) -> list[dict]:
    """One cell per (backbone, concept, method, K), with ``reached`` (seeds that reached
    the fidelity threshold; None for a subject, which has no fidelity to reach one with),
    ``threshold``, ``timing_only`` and ``judged`` (has fidelity: False for a subject of
    your own and for timing-only runs)."""
    cells = []
    for c in t.seed_cells(runs, ["backbone", "dataset", "method", "shots"]):
        judged = bool(values(c, "fidelity"))
        subject = not judged and bool(values(c, "clip_i"))  # scored, but by no judge
        cells.append({**c, "concept": c["dataset"].removeprefix("concept:"), "judged": judged,
                      "reached": None if subject else len(values(c, "seconds_to_threshold")),
                      "threshold": mean(c, "fidelity_threshold"),
                      "timing_only": any(r["metrics"].get("timing_only") for r in c["runs"])})
    return sorted(cells, key=lambda c: (c["backbone"], c["concept"], c["shots"], method_key(c["method"])))


# ---- the comparisons -------------------------------------------------------------------


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def comparisons(cells: list[dict]) -> list[dict]:
    """ConES against textual inversion in each (backbone, concept, K) with quality metrics:
    ``threshold_ratio`` (mean seconds to the threshold when every seed of both reached
    it), ``step_ratio``, ``run_ratio``, and per seed run by both ``levels``: (the highest
    fidelity both curves reach, ConES / TI seconds to first reach it), left out where
    that level is no gain over a start."""
    at = {(c["backbone"], c["concept"], c["shots"], c["method"]): c for c in cells if c["judged"]}
    out = []
    for (backbone, concept, shots, method), cones in sorted(at.items()):
        if method != "cones" or (ti := at.get((backbone, concept, shots, "textual-inversion"))) is None:
            continue

        def ratio(name: str, cones=cones, ti=ti) -> float | None:
            return mean(cones, name) / mean(ti, name) if mean(cones, name) is not None and mean(ti, name) else None

        curves = {r["seed"]: r["metrics"].get("curve") or [] for r in ti["runs"]}
        hits = [equal_fidelity(r["metrics"].get("curve") or [], curves.get(r["seed"], [])) for r in cones["runs"]]
        every = cones["reached"] == len(cones["runs"]) and ti["reached"] == len(ti["runs"])
        out.append({"backbone": backbone, "concept": concept, "shots": shots, "cones": cones, "ti": ti,
                    "threshold_ratio": ratio("seconds_to_threshold") if every else None,
                    "step_ratio": ratio("step_seconds"), "run_ratio": ratio("train_seconds"),
                    "levels": [(h[0], h[1] / h[2]) for h in hits if h is not None and h[2] > 0]})
    return out


def share_rows(cells: list[dict]) -> list[dict]:
    """Median step times of ConES and TI per backbone (all their runs, any concept and K),
    and the text encoder's forward + backward as a ``share`` of a TI step."""
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        runs[c["backbone"]][c["method"]].extend(c["runs"])
    rows = []
    for backbone, methods in sorted(runs.items()):
        cones, ti = methods.get("cones"), methods.get("textual-inversion")
        if not cones or not ti:
            continue
        median = lambda runs, key: statistics.median(float(r["metrics"][key]) for r in runs)  # noqa: E731
        first = ti[0]["metrics"]
        row = {"backbone": backbone, "text_params": int(first.get("text_encoder_params") or 0),
               "unet_params": int(first.get("unet_params") or 0), "timing_only": bool(first.get("timing_only")),
               "cones_step": median(cones, "step_seconds"), "ti_step": median(ti, "step_seconds"),
               "ti_conditioning": median(ti, "conditioning_seconds"), "runs": len(cones) + len(ti)}
        rows.append({**row, "ratio": row["cones_step"] / row["ti_step"], "share": row["ti_conditioning"] / row["ti_step"]})
    return sorted(rows, key=lambda r: (r["share"], r["backbone"]))


# ---- formatting ------------------------------------------------------------------------


def _pm(c: dict, name: str, *, percent: bool = False, digits: int = 3) -> str:
    if (value := mean(c, name)) is None:
        return "—"
    scale, digits = (100, 1) if percent else (1, digits)
    text = f"{scale * value:.{digits}f}"
    return text + f" ± {scale * c[f'{name}_std']:.{digits}f}" if len(values(c, name)) > 1 else text


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def threshold_cell(c: dict) -> str:
    n = len(c["runs"])
    if c["reached"] == 0:
        return f"never (0/{n})"
    text = f"{mean(c, 'seconds_to_threshold'):.1f}"
    return text if c["reached"] == n else f"{text} ({c['reached']}/{n})"


def _headline(comps: list[dict]) -> list[str]:
    if not comps:
        return []
    reached = [c["threshold_ratio"] for c in comps if c["threshold_ratio"] is not None]
    threshold = comps[0]["cones"]["threshold"]
    levels = [pair for c in comps for pair in c["levels"]]
    steps = [c["step_ratio"] for c in comps if c["step_ratio"]]
    runs = [c["run_ratio"] for c in comps if c["run_ratio"]]
    fid_cones = statistics.fmean(mean(c["cones"], "fidelity") or 0.0 for c in comps)
    fid_ti = statistics.fmean(mean(c["ti"], "fidelity") or 0.0 for c in comps)
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
            f"{geometric_mean(reached):.2f}× textual inversion's time (geometric mean over the {len(reached)} of "
            f"{len(comps)} (concept, K) cells where every seed of both reached it; range "
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
    table = t.rows([[
        c["backbone"], c["concept"], str(c["shots"]), _pm(c["cones"], "fidelity", percent=True),
        _pm(c["ti"], "fidelity", percent=True), _pm(c["cones"], "clip_i"), _pm(c["ti"], "clip_i"),
        _pm(c["cones"], "clip_t"), _pm(c["ti"], "clip_t"),
        f"{100 * statistics.fmean(v for v, _ in c['levels']):.0f}%" if c["levels"] else "—",
        _ratio(geometric_mean([r for _, r in c["levels"]])) if c["levels"] else "—",
        threshold_cell(c["cones"]), threshold_cell(c["ti"]), _ratio(c["step_ratio"]),
    ] for c in comps], columns=["Backbone", "Concept", "K", "Fidelity ConES", "Fidelity TI", "CLIP-I ConES", "CLIP-I TI",
                                "CLIP-T ConES", "CLIP-T TI", "Equal level", "Ratio there",
                                f"s to ≥{threshold:.2f} ConES", "TI", "Step ratio"])
    note = ("*Equal level*: per seed, the highest fidelity both curves reach (mean over seeds); "
            "*Ratio there*: ConES / TI seconds to first reach it (geometric mean over seeds).")
    return [*lines, note, "", *t.markdown(table, "lll" + "r" * 11), ""]


def _quality_tables(cells: list[dict]) -> list[str]:
    lines = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if not c["timing_only"]:
            groups[c["backbone"], c["concept"]].append(c)
    for (backbone, concept), group in sorted(groups.items()):
        if not any(c["judged"] for c in group):
            lines += _subject_table(backbone, concept, group)
            continue
        threshold = group[0]["threshold"]
        table = t.rows([[
            c["method"], str(c["shots"]), _pm(c, "fidelity", percent=True), _pm(c, "clip_i"), _pm(c, "clip_t"),
            _pm(c, "diversity"), _pm(c, "train_seconds", digits=1), threshold_cell(c),
            f"{statistics.median(values(c, 'step_seconds')):.3f}", t.count(c["trainable_params"]), str(len(c["runs"])),
        ] for c in sorted(group, key=lambda c: (method_key(c["method"]), c["shots"]))],
            columns=["Method", "K", "Fidelity %", "CLIP-I", "CLIP-T", "Diversity", "Train s",
                     f"s to ≥{threshold:.2f}" if threshold else "s to threshold", "Step s", "Trainable", "Seeds"])
        real = {name: statistics.fmean(v for c in group for v in values(c, name))
                for name in REAL if any(values(c, name) for c in group)}
        calibration = ""
        if len(real) == len(REAL):
            calibration = (f" Real held-out {concept} images score fidelity {100 * real['real_fidelity']:.1f}%, "
                           f"CLIP-I {real['real_clip_i']:.3f}, CLIP-T {real['real_clip_t']:.3f}.")
        lines += [f"### {concept}, {backbone}", "", f"Mean ± std over seeds.{calibration}", "",
                  *t.markdown(table, "lr" + "r" * (table.shape[1] - 2)), ""]
    return lines


def _subject_table(backbone: str, subject: str, group: list[dict]) -> list[str]:
    """A subject of your own: no judge, so no fidelity or threshold columns; DINO only
    where it was scored. Calibration: the references against each other and the prompts."""
    dino = any(values(c, "dino") for c in group)
    table = t.rows([[
        c["method"], str(c["shots"]), _pm(c, "clip_i"), _pm(c, "clip_t"), *([_pm(c, "dino")] if dino else []),
        _pm(c, "diversity"), _pm(c, "train_seconds", digits=1), f"{statistics.median(values(c, 'step_seconds')):.3f}",
        t.count(c["trainable_params"]), str(len(c["runs"])),
    ] for c in sorted(group, key=lambda c: (method_key(c["method"]), c["shots"]))],
        columns=["Method", "K", "CLIP-I", "CLIP-T", *(["DINO"] if dino else []), "Diversity", "Train s", "Step s",
                 "Trainable", "Seeds"])
    first = group[0]["runs"][0]["metrics"]
    facts = (f" {first['subject_photos']} photos of a {first['class_noun']} ({first['held_out_photos']} held out "
             "for lr selection)." if "subject_photos" in first else "")
    among = {name: statistics.fmean(v for c in group for v in values(c, name))
             for name in ("reference_clip_i", "reference_clip_t", "reference_dino") if any(values(c, name) for c in group)}
    calibration = ""
    if "reference_clip_i" in among:
        calibration = (f" Its reference photos score CLIP-I {among['reference_clip_i']:.3f} against each other"
                       + (f", DINO {among['reference_dino']:.3f}" if "reference_dino" in among else "")
                       + f", CLIP-T {among['reference_clip_t']:.3f}.")
    note = "" if dino else " DINO: not scored (no `task_config.dino_model` given)."
    return [f"### Subject {subject}, {backbone}", "",
            f"Your own subject: no judge knows it, so no fidelity; mean ± std over seeds.{facts}{calibration}{note}",
            "", *t.markdown(table, "lr" + "r" * (table.shape[1] - 2)), ""]


def _share_section(rows: list[dict], figure_link: str | None) -> list[str]:
    if not rows:
        return []
    table = t.rows([[
        f"{r['backbone']}{' (timing only)' if r['timing_only'] else ''}", t.count(r["text_params"]),
        t.count(r["unet_params"]), f"{r['ti_step']:.4f}", f"{r['cones_step']:.4f}", f"{r['ratio']:.2f}",
        f"{r['ti_conditioning']:.4f}", f"{100 * r['share']:.0f}%", f"{1 - r['share']:.2f}", str(r["runs"]),
    ] for r in rows], columns=["Backbone", "Text encoder", "UNet", "TI step s", "ConES step s", "ConES / TI",
                               "Text enc. fwd+bwd s", "Share of TI step", "1 − share", "Runs"])
    lines = [
        "### When does ConES pay off? Step time against the text encoder's share", "",
        "Median seconds per training step. *Text enc. fwd+bwd*: producing one batch's "
        "conditioning with textual inversion (text encoder forward and backward), timed apart "
        "after training; its *share* of a TI step predicts ConES / TI = 1 − share, because "
        "ConES removes exactly that work. Backbones marked *timing only* have random weights "
        "(`t2i-timing:TEXT-UNET`) and measure time alone.", "",
        *t.markdown(table), "",
    ]
    return lines + ([f"![ConES / TI step time vs text-encoder share]({figure_link})", ""] if figure_link else [])


def judge_table(runs: list[dict]) -> list[str]:
    """The judge's accuracy on real held-out images of each concept (from the run records;
    one row per judge and concept). It bounds how much a fidelity number can mean: a
    concept the judge names 70% of the time cannot be told from a perfect method at 70%."""
    seen: dict[tuple, dict] = {}
    for r in runs:
        m = r["metrics"]
        if t.is_number(m.get("judge_accuracy")):
            seen[m.get("judge") or "?", r["dataset"].removeprefix("concept:")] = m
    if not seen:
        return []
    table = t.rows([[concept, f"{100 * m['judge_accuracy']:.1f}", str(m.get("judge_held_out_images", "?")), judge]
                    for (judge, concept), m in sorted(seen.items(), key=lambda kv: (kv[0][1], kv[0][0]))],
                   columns=["Concept", "Judge accuracy %", "Held-out images", "Judge"])
    return ["### The fidelity judge on held-out real images", "",
            "The judge never trains on an image that can be a reference (any K, any seed) or a validation "
            "image; its accuracy on real test images of each concept, which it never saw:", "",
            *t.markdown(table, "lrrl"), ""]


def _grids_section(cells: list[dict]) -> list[str]:
    samples = lambda r: (r.get("pictures") or {}).get("samples")  # noqa: E731
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if not c["timing_only"] and any(samples(r) for r in c["runs"]):
            groups[c["backbone"], c["concept"]].append(c)
    if not groups:
        return []
    subjects = " (`task_config.subject_prompts` for a subject)" if any(not c["judged"] for g in groups.values()
                                                                        for c in g) else ""
    lines = ["### Sample grids", "",
             "Top row: the K reference images; then one row per evaluation prompt, in the order "
             f"of `task_config.eval_prompts`{subjects}, with the same seeds for every method. Shown: the "
             "largest K, first seed; every run's grid is linked.", ""]
    for (backbone, concept), group in sorted(groups.items()):
        group = sorted(group, key=lambda c: (method_key(c["method"]), c["shots"]))
        columns = [f"K={k} seed {s}" for k, s in sorted({(c["shots"], r["seed"]) for c in group for r in c["runs"]})]
        grids = t.rows([(c["method"], f"K={c['shots']} seed {r['seed']}", f"[grid]({samples(r)})")
                              for c in group for r in c["runs"] if samples(r)], columns=["Method", "column", "link"])
        table = grids.pivot_table(index="Method", columns="column", values="link", aggfunc="last")
        table = table.reindex(index=sorted(table.index, key=method_key), columns=columns).fillna("—")
        lines += [f"**{concept}, {backbone}**", "", *t.markdown(table.reset_index(), "l" * (len(columns) + 1)), ""]
        largest = max(c["shots"] for c in group)
        for c in group:
            if c["shots"] == largest and samples(first := c["runs"][0]):
                lines += [f"{c['method']}, {concept}, K={c['shots']}, seed {first['seed']}:", "",
                          f"![{c['method']} {concept}]({samples(first)})", ""]
    return lines


def _subjects_note(cells: list[dict]) -> list[str]:
    if all(c["judged"] or c["timing_only"] for c in cells):
        return []
    return ["Your own subjects (`subject:PATH`) have no judge: their tables show CLIP-I (against the "
            "references; the samples' mean cosine in the scoring CLIP's image space), CLIP-T (against "
            "the prompt with the class noun), DINO where a local model was given, and no fidelity; they "
            "are not part of the fidelity headline, curves or judge table.", ""]


# ---- figures ---------------------------------------------------------------------------


def _fidelity_vs_time(cells: list[dict], path: Path) -> Path:
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        if curve(c):
            panels[c["backbone"], c["concept"]].append(c)
    panels = dict(sorted(panels.items()))
    shots = sorted({c["shots"] for group in panels.values() for c in group})
    dash = {k: _DASHES[i % len(_DASHES)] for i, k in enumerate(shots)}
    fig, axes = figures.grid(len(panels))
    handles = {}
    for ax, ((backbone, concept), group) in zip(axes[: len(panels)], panels.items(), strict=True):
        for c in sorted(group, key=lambda c: (method_key(c["method"]), c["shots"])):
            colour, marker = style(c["method"])
            xs, ys = zip(*curve(c), strict=True)
            ax.plot(xs, [100 * y for y in ys], color=colour, marker=marker, linestyle=dash[c["shots"]],
                    markeredgecolor="white", markeredgewidth=0.6)
            handles[c["method"]] = figures.marker_handle(c["method"])
        for level in sorted({c["threshold"] for c in group if c["threshold"] is not None}):
            handles["threshold"] = ax.axhline(100 * level, color="#999999", linestyle=":", linewidth=1.2)
        ax.set_ylim(-3, 103)
        ax.set_title(f"{concept}, {backbone}")
        ax.set_xlabel("Training time (s; checkpoints scored with the clock paused)")
        ax.set_ylabel("Fidelity: samples judged the concept (%)")
    if len(shots) > 1:
        fig.legend([Line2D([], [], color="#555555", linestyle=dash[k]) for k in shots], [str(k) for k in shots],
                   loc="outside lower center", ncols=len(shots), title="Reference images K (line style)", frameon=False)
    return figures.finish(fig, handles, path, "Generation: fidelity vs training time",
                          subtitle="mean over seeds at each checkpoint", last=("threshold",))


def _ratio_vs_share(rows: list[dict], path: Path) -> Path:
    fig, axes = figures.grid(1, width=5.0)
    ax = axes[0]
    ax.plot([0, 1], [1, 0], color="#999999", linestyle="--", linewidth=1.2)
    handles = {"1 − share (text encoder removed)": ax.lines[-1]}
    palette = ["#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#999933"]
    for i, r in enumerate(rows):
        colour, marker = palette[i % len(palette)], "s" if r["timing_only"] else "o"
        ax.plot([r["share"]], [r["ratio"]], color=colour, marker=marker, linestyle="none", markersize=9,
                markeredgecolor="white", markeredgewidth=0.6)
        label = f"{r['backbone']}{' (timing only)' if r['timing_only'] else ''}"
        handles[label] = Line2D([], [], color=colour, marker=marker, linestyle="none", markersize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("Text encoder fwd+bwd, share of a textual-inversion step")
    ax.set_ylabel("ConES / textual-inversion step time")
    names = sorted(handles, key=lambda m: (0, "") if m.startswith("1 −") else (1, m))
    # The upper right is empty (a ratio near 1 needs a small share): the legend goes there.
    ax.legend([handles[n] for n in names], names, loc="upper right", title="Backbone", fontsize=9)
    fig.suptitle("When ConES pays off\nstep-time ratio vs the text encoder's share (medians per backbone)",
                 fontsize=12, linespacing=1.4)
    return figures.save(fig, path)


@section("generation", position=30, metric="step_seconds",  # the one number every run has, timing-only too
         fractions=("fidelity", "fidelity_per_prompt", "fidelity_threshold", "real_fidelity", "judge_accuracy"))  # CLIP-I/T may be < 0
def write(runs: list[dict], results: Path, options: Options) -> tuple[list[str], list[Path]]:
    if not runs:
        return [], []
    chain_lines = chain_table(runs, metric="fidelity", metric_name="Fidelity %", heading="###", what="Concept")
    runs = own_tables(runs)  # chained runs (and their off-budget sources) have the table above only
    cells, folder = summarise(runs), results / "figures"
    rows = share_rows(cells)
    written = []
    with figures.styled():
        if any(curve(c) for c in cells):
            written.append(("Generation: fidelity vs training time",
                            _fidelity_vs_time(cells, folder / "gen_fidelity_vs_train_time.png")))
        if rows:
            written.append(("Generation: ConES / TI step time vs text-encoder share",
                            _ratio_vs_share(rows, folder / "gen_step_ratio_vs_text_share.png")))
    links = [(title, path.relative_to(results).as_posix()) for title, path in written]
    # Every method, not just ConES against TI: who leads at equal steps and at equal time.
    verdict_lines, verdict_files = curve_part(runs, results, track="Generation", key="fidelity",
                                              metric_name="fidelity", ylabel="Fidelity (%)", slug="gen",
                                              shots_unit="references")
    lines = [
        "## Generation track (task `generation`)", "",
        "Personalised text-to-image: each method learns a concept the model never saw from K "
        "reference images, with the same steps, batch, optimiser and seeds. *Fidelity*: share "
        "of samples the judge (a CNN on all 20 Fashion/Animal-MNIST classes, never used in "
        "tuning, never trained on a possible reference) labels as the concept; *CLIP-I*: mini-clip image–image cosine of samples to the "
        "references; *CLIP-T*: sample–prompt cosine with the concept's real name; *Diversity*: "
        "mean pairwise 1 − cosine among a prompt's samples; *s to ≥T*: train seconds until the "
        "fidelity curve (scored at checkpoints with the train clock paused) first reaches T, "
        "interpolated, with (reached/seeds) when not every seed did; *Step s*: median seconds "
        "per training step.", "",
        *_subjects_note(cells),
        *_headline(comparisons(cells)),
        *_quality_tables(cells),
        *verdict_lines,
        *(["The curve scores `curve_samples_per_prompt` samples per prompt at each checkpoint, the "
           "tables above `samples_per_prompt` after the last step, so its last point can differ "
           "from their fidelity.", ""] if verdict_lines else []),
        *chain_lines,
        *judge_table(runs),
        *_share_section(rows, next((link for title, link in links if "share" in title), None)),
        *(f"![{title}]({link})\n" for title, link in links if "share" not in title),
        *_grids_section(cells),
    ]
    # A subject's own columns only when some run has them: no all-empty columns.
    subject = [name for name in SUBJECT if any(values(c, name) for c in cells)]
    summary = t.write_summary(cells, results / "summary_gen.csv", [
        "backbone", "concept", "method", "shots", "n_seeds", "seeds", "timing_only", "trainable_params",
        "total_params", ("reached_threshold", "reached"), *t.mean_std([*QUALITY, *TIMES, *REAL, *subject])])
    return lines, [summary, *(path for _, path in written), *verdict_files]
