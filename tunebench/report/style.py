"""Each method's place, colour, marker and label, read from its class (``display``).

``method_class`` is the one place that knows where method classes live; a method the
registries do not know, or one without display data, gets a colour, marker and place
derived from its name alone, so it never moves between reports whatever else ran.
"""

from __future__ import annotations

import hashlib
from functools import cache

from tunebench.display import Display, display_of

# Okabe–Ito colours (safe for colour-blind readers) and a few more, for undeclared methods.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#999933",
           "#44AA99", "#332288")
MARKERS = ("o", "s", "^", "D", "v", "X", "h", "<", ">", "p")


def method_classes(base: str) -> list[type]:
    """The classes registered under ``base``, one per task family. Runs reach the report
    under their current names (``load_runs``), so a renamed method is looked up once."""
    import tunebench.genmethods  # noqa: F401  (registers the generation methods)
    import tunebench.methods  # noqa: F401
    from tunebench.registry import METHODS

    return list(METHODS.entry(base).classes) if base in METHODS.names() else []


@cache
def display(method: str) -> Display:
    """What the first class registered under the name declares for it (``lit:bitfit``: the
    ``bitfit`` entry of ``Lit.display``), else a display derived from the name."""
    base, _, variant = method.partition(":")
    for cls in method_classes(base):
        if (found := display_of(getattr(cls, "display", None), variant)) is not None:
            return found
    digest = hashlib.sha256(method.encode()).digest()
    return Display(order=100 * int.from_bytes(digest[:4], "big") / 2**32, colour=PALETTE[digest[4] % len(PALETTE)],
                   marker=MARKERS[digest[5] % len(MARKERS)])


def method_key(method: str) -> tuple[float, str]:
    return display(method).order, method


def style(method: str) -> tuple[str, str]:
    return display(method).colour, display(method).marker


def label(method: str) -> str:
    return display(method).label or method
