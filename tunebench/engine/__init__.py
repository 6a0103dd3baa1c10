"""The engine below the tasks and builds: how anything in tunebench trains and is timed.

- ``training``: AdamW over optimizer groups with its schedule, clipping, the non-finite
  guard, autocast, seeding and the shuffled-batch sampler (``Optimization``,
  ``ShuffledBatches``); the only place an optimizer is constructed;
- ``measure``: the device clock (``Stopwatch``, ``synchronize``), peak memory, provenance;
- ``features``: the frozen image-feature cache; ``progress``: progress bars;
  ``grids``: sample grids as PNG bytes.
"""
