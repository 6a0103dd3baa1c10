"""Progress bars that stay readable in logs: redrawn in a terminal, sparse otherwise."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


class _Bar(tqdm):
    """A tqdm bar whose postfix (loss, ok/failed counts) waits for the bar's next timed
    redraw instead of forcing one: in a log, a forced redraw is a new line per call."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)


def progress(iterable=None, *, inner: bool = False, **kwargs):
    """A tqdm bar; ``inner`` bars (steps within one run) are shown in a terminal only."""
    interactive = sys.stderr.isatty()
    if inner and not interactive:
        kwargs["disable"] = True
    kwargs.setdefault("mininterval", 0.5 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", os.environ.get("TUNEBENCH_NO_PROGRESS") == "1")
    kwargs.setdefault("leave", interactive)
    return _Bar(iterable, **kwargs)
