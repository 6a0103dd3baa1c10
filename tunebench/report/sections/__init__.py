"""Each task's part of the report, registered by the module that writes it.

A section owns the runs of one task: it names the metric every successful run must
have, which metrics are fractions in [0, 1] (fnmatch patterns; a run outside is not
read), and where it goes in ``report.md``; its writer turns the runs into markdown lines
and files (CSV, figures). Every module in this folder is imported, so a new track adds
a section by adding a module: no other file changes. Runs of a task without a section
are reported by the ``fewshot-cls`` one (classification). A section may also claim
runs of another task by what they are (``claims``): the cost section takes the
classification runs on timing-only backbones, so no accuracy table ever shows them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tunebench.registry import Registry

FALLBACK = "fewshot-cls"


@dataclass(frozen=True)
class Options:
    reference: str = "cones"  # training times are compared with this method
    metric: str = "top1"  # the classification headline


# write(runs of the task, results folder, options) -> (markdown lines, files written)
Writer = Callable[[list[dict], Path, Options], tuple[list[str], list[Path]]]


@dataclass(frozen=True)
class Section:
    task: str
    position: int  # sections follow each other in report.md by position
    fractions: tuple[str, ...]
    metric: str | None  # None: the classification headline of `Options`
    write: Writer
    # Runs it takes whatever their task (e.g. timing-only ones); None: its task's runs only.
    claims: Callable[[dict], bool] | None = None


SECTIONS: Registry[Section] = Registry("report section")


def section(task: str, *, position: int, fractions: tuple[str, ...], metric: str | None = None,
            claims: Callable[[dict], bool] | None = None):
    """Decorator on a track's writer: ``@section("align", position=10, ...)``."""

    def add(write: Writer) -> Writer:
        SECTIONS.register(task)(Section(task, position, fractions, metric, write, claims))
        return write

    return add


def section_of(run: dict) -> Section:
    """The section that reports ``run``: the first that claims it, else its task's."""
    for part in sections():
        if part.claims is not None and part.claims(run):
            return part
    return section_for(run["task"])


def section_for(task: str) -> Section:
    load()
    return SECTIONS.entry(task if task in SECTIONS.names() else FALLBACK)


def sections() -> list[Section]:
    load()
    return sorted((SECTIONS.entry(name) for name in SECTIONS.names()), key=lambda s: (s.position, s.task))


@cache
def load() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
