"""Tasks: each module registers itself in ``tunebench.registry.TASKS``."""

from tunebench.tasks import classification  # noqa: F401
