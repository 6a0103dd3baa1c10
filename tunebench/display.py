"""How a method is shown in tables and figures, declared once on its class.

A method class sets ``display = Display(...)``; a method with variants (``lit:bitfit``)
sets a mapping from variant to ``Display``, with ``""`` for the bare name. The report
looks these up through the method registry (``tunebench.report.style``), so a new
method gets its place and colour where it is defined, the same in every report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Display:
    order: float  # rows, legends and curves sort by (order, name); cheapest first
    colour: str  # matplotlib colour, the same in every figure
    marker: str  # matplotlib marker
    label: str | None = None  # legend text in figures; None: the name as run (tables always show it)


def display_of(declared: Display | Mapping[str, Display] | None, variant: str) -> Display | None:
    """The entry for ``variant`` ("" for the bare name) in what a class declares."""
    if isinstance(declared, Display):
        return declared if not variant else None
    return (declared or {}).get(variant)
