"""Tasks: each module registers itself in ``tunebench.registry.TASKS``."""

from tunebench.tasks import align, classification, detection, generation  # noqa: F401
