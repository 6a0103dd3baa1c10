"""Tasks: each module registers itself in ``tunebench.registry.TASKS``."""

from tunebench.tasks import align, base2new, classification, detection, generation  # noqa: F401
