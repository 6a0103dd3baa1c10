"""`tunebench gpu-check`: the --tiny pass runs every part on the CPU (the same code as on
a GPU, toy sizes), writes its JSON and report section; a broken part is recorded and the
others go on; the CLI falls back to the dry pass without a GPU and fails on a failed part."""

from __future__ import annotations

import json

import pytest
import torch

from tunebench.bench import gpucheck
from tunebench.bench.cli import main
from tunebench.report.sections import Options, sections
from tunebench.report.sections import gpu_check as section


def test_tiny_pass_runs_every_part_and_reports_it(tmp_path):
    summary = gpucheck.gpu_check(tmp_path, tiny=True, device=torch.device("cpu"))
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == [name for name, _ in gpucheck.PARTS]
    assert gpucheck.failed_parts(summary) == [], [p.get("error") for p in summary["parts"]]
    assert parts["peak-memory"]["status"] == "skipped"  # CUDA only
    assert parts["autocast"]["matmul_dtype"] == "float32"
    cells = parts["tasks"]["cells"]
    assert {c["task"] for c in cells} == {"fewshot-cls", "align", "detect", "generation"}
    assert all(c["status"] == "ok" and c["peak_memory_kind"] == "cpu_peak_rss_sampled" for c in cells)
    assert len(list((tmp_path / "runs").glob("*.json"))) == len(cells)
    ft = parts["full-ft"]
    assert ft["step_flops"] > 0 and ft["images_per_second"] > 0 and ft["batch"] == gpucheck.TINY.max_batch
    assert ft["mfu"] is None and "MFU omitted" in ft["mfu_note"]  # no peak for a CPU
    for name, pair in (("classes-1000", ("cones", "coop")), ("sd-64", ("cones", "textual-inversion"))):
        assert all(parts[name][m]["step_seconds"] > 0 for m in pair)
    assert parts["classes-1000"]["classes"] == gpucheck.TINY.many_classes
    assert json.loads((tmp_path / gpucheck.RESULT_FILE).read_text())["parts"] == summary["parts"]

    # The section alone: build_report would redraw every track's figures for these cells.
    lines, files = section.write([], tmp_path, Options())
    report = "\n".join(lines)
    assert "## GPU check" in report and "| sd-64 | ok |" in report and "ConES vs CoOp at 20 classes" in report
    assert files == [] and "gpu-check" in [s.task for s in sections()]


def test_the_section_is_absent_without_the_file(tmp_path):
    assert section.write([], tmp_path, Options()) == ([], [])
    assert section.RESULT_FILE == gpucheck.RESULT_FILE


def test_a_broken_part_is_recorded_and_the_others_still_run(monkeypatch, tmp_path):
    def broken(device, sizes, work):
        raise RuntimeError("kernel exploded\nsecond line")

    def half(device, sizes, work):
        raise gpucheck.PartFailed("1 of 2 cells: detect/cones: boom", cells=[{"task": "detect"}])

    monkeypatch.setattr(gpucheck, "PARTS", (("broken", broken), ("half", half),
                                            ("fine", lambda d, s, w: {"value": 1})))
    summary = gpucheck.gpu_check(tmp_path, tiny=True, device=torch.device("cpu"))
    assert [(p["name"], p["status"]) for p in summary["parts"]] == [("broken", "failed"), ("half", "failed"),
                                                                     ("fine", "ok")]
    assert summary["parts"][0]["error"] == "RuntimeError: kernel exploded"
    assert summary["parts"][1]["cells"] == [{"task": "detect"}]  # what it measured is kept with the failure
    assert summary["parts"][2]["value"] == 1 and gpucheck.failed_parts(summary) == ["broken", "half"]


@pytest.mark.parametrize("failed", [False, True])
def test_cli_without_a_gpu_runs_the_dry_pass_and_exits_on_failures(monkeypatch, capsys, tmp_path, failed):
    calls = []

    def fake(results, *, tiny):
        calls.append((results, tiny))
        return {"wall_seconds": 1.0, "parts": [{"name": "tasks", "status": "failed" if failed else "ok"}]}

    monkeypatch.setattr(gpucheck, "gpu_check", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["gpu-check", "--results", str(tmp_path / "gpu")]) == (1 if failed else 0)
    assert calls == [(None, True)]  # toy sizes, written nowhere
    assert "no CUDA GPU" in capsys.readouterr().out and not (tmp_path / "gpu").exists()


def test_cli_refuses_the_sweeps_results_folder(monkeypatch, capsys):
    monkeypatch.setattr(gpucheck, "gpu_check", lambda *a, **k: pytest.fail("ran"))
    assert main(["gpu-check", "--tiny", "--results", "results"]) == 2
    assert "results folder of its own" in capsys.readouterr().err


def test_peak_table_picks_the_most_specific_name():
    assert gpucheck.peak_bf16_tflops("NVIDIA H200") == 989.5
    assert gpucheck.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.5
    assert gpucheck.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.5
    assert gpucheck.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpucheck.peak_bf16_tflops("Tesla T4") is None
