"""The GPU check (``tunebench gpu-check``, docs/gpu-check.md): shown only in a results
folder that holds its ``gpu-check.json`` (``results-gpu/`` by default), after the tracks.

It reads that one file, not run records: the check's task cells are ordinary runs and
appear in the tracks' sections above it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunebench.report.sections import Options, section

RESULT_FILE = "gpu-check.json"  # the name bench/gpucheck.py writes (the report may not import the bench)


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _params(count: int) -> str:
    return f"{count / 1e6:.0f}M" if count >= 10**7 else f"{count / 1e6:.2f}M"


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f}"


def _part_lines(parts: dict) -> list[str]:
    lines = []
    if (ft := parts.get("full-ft", {})).get("status") == "ok":
        mfu = (f"MFU **{ft['mfu'] * 100:.1f}%** of the {ft['peak_bf16_tflops']:g} TFLOP/s dense bf16 peak"
               if ft.get("mfu") is not None else ft.get("mfu_note", "MFU omitted"))
        lines += [f"- **Full fine-tuning, {ft['backbone']}** ({ft['weights']} weights, {ft['image_size']} px, "
                  f"{ft['classes']} class prompts through the text tower each step, batch {ft['batch']}"
                  + (f"; batches {', '.join(map(str, ft['batches_out_of_memory']))} ran out of memory"
                     if ft["batches_out_of_memory"] else "")
                  + f"): **{ft['images_per_second']:,.1f} images/s**, {_ms(ft['step_seconds'])} ms/step, "
                  f"{ft['step_flops'] / 1e12:.2f} TFLOP/step (FlopCounterMode, forward + backward) = "
                  f"{ft['achieved_tflops']:.1f} TFLOP/s; {mfu}; peak {_number(ft['peak_memory_mb'], 0)} MB."]
    if (cls := parts.get("classes-1000", {})).get("status") == "ok":
        lines += [f"- **ConES vs CoOp at {cls['classes']:,} classes** ({cls['backbone']}, {cls['weights']} weights, "
                  f"batch {cls['batch']} of cached image features): ConES {_ms(cls['cones']['step_seconds'])} ms/step, "
                  f"CoOp {_ms(cls['coop']['step_seconds'])} ms/step (**{cls['coop_over_cones']:g}×**; CoOp runs the "
                  f"text tower forward and backward over all {cls['classes']:,} prompts each step); peak "
                  f"{_number(cls['cones']['peak_memory_mb'], 0)} vs {_number(cls['coop']['peak_memory_mb'], 0)} MB."]
    if (sd := parts.get("sd-64", {})).get("status") == "ok":
        ti = sd["textual-inversion"]
        lines += [f"- **ConES vs textual inversion, SD-proportioned random pipeline** ({_params(sd['unet_params'])}-"
                  f"parameter UNet on {sd['latent_size']}×{sd['latent_size']} latents, "
                  f"{_params(sd['text_encoder_params'])}-parameter text tower, {sd['prompt_tokens']} tokens, "
                  f"batch {sd['batch']}): ConES {_ms(sd['cones']['step_seconds'])} ms/step, textual inversion "
                  f"{_ms(ti['step_seconds'])} ms/step (**{sd['textual_inversion_over_cones']:g}×**); peak "
                  f"{_number(sd['cones']['peak_memory_mb'], 0)} vs {_number(ti['peak_memory_mb'], 0)} MB."]
    return lines


@section("gpu-check", position=90, fractions=())
def write(runs: list[dict], results_dir: Path, options: Options) -> tuple[list[str], list[Path]]:
    path = Path(results_dir) / RESULT_FILE
    if not path.is_file():
        return [], []
    check = json.loads(path.read_text())
    parts = {p["name"]: p for p in check.get("parts", [])}
    where = check.get("gpu") or check.get("device", "?")
    lines = ["## GPU check", "",
             f"`tunebench gpu-check`{' --tiny (toy sizes: the numbers mean nothing)' if check.get('tiny') else ''} "
             f"on {where}, {check.get('started_at', '?')}, {check.get('wall_seconds', '?')} s in all. "
             "Each task's cell ran through the shared runner with the tasks' autocast (bf16 on CUDA); step "
             "times are means (full-ft, ConES/CoOp) or medians (generation) after warm-up steps, each clock "
             "read after a device sync. What each part does: "
             "[docs/gpu-check.md](../docs/gpu-check.md).", ""]
    lines += _part_lines(parts)
    lines += ["", "| Part | Status | Seconds | Note |", "|---|---|---:|---|"]
    for name, part in parts.items():
        note = part.get("error") or part.get("note") or ""
        if name == "tasks" and part.get("cells"):
            note = (f"{note}. " if note else "") + "; ".join(
                f"{c['task']}/{c['method']} {c['status']}, {_number(c['peak_memory_mb'], 0)} MB "
                f"({c['peak_memory_kind']})" for c in part["cells"])
        elif name == "peak-memory" and part["status"] == "ok":
            note = (f"tiny cell peak {part['cell_peak_memory_mb']:g} MB after a freed {part['peak_before_mb']:g} MB "
                    f"peak; allocator max {part['allocator_max_mb']:g} MB")
        elif name == "autocast" and part["status"] == "ok":
            note = f"precision auto: {part['matmul_dtype']}"
        note = note.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {part['status']} | {_number(part.get('seconds'), 1)} | {note} |")
    return [*lines, ""], []
