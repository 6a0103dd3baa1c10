"""Builds: the training jobs that make tunebench's own models (mini-clip, mini-det,
mini-t2i, the fidelity judge), each registered in ``tunebench.registry.BUILDS``.

A build is a job like a run, not a backbone: it may use the engine, models, datasets
and the methods' and tasks' scoring helpers (to report what it built). ``models/`` holds
each built model's recipe (its hash names the cache folder) and loads the result; a
backbone that finds no build asks for one through ``registry.build_model``, never by
importing this package.
"""

from tunebench.builds import judge, mini_clip, mini_det, mini_t2i  # noqa: F401
