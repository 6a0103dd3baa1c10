"""One registry type for methods, datasets, tasks and backbones.

Names are lowercase; registering a name twice is an error; looking up an unknown
name answers with the closest valid names. A name may carry an argument after a
colon (``imagefolder:/data/pets``, ``open_clip:ViT-B-32``): the entry registered as
``imagefolder:`` then receives the text after the colon.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tunebench.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("cones")``."""
        if name != name.lower():
            raise ValueError(f"{self.kind} names are lowercase: {name!r}")

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def resolve(self, name: str) -> tuple[T, str | None]:
        """Return (entry, argument) for ``name`` or ``prefix:argument``."""
        if name in self._entries:
            return self._entries[name], None
        if ":" in name:
            prefix, argument = name.split(":", 1)
            entry = self._entries.get(prefix.lower() + ":")
            if entry is not None:
                if not argument:
                    raise ConfigError(f"{self.kind} {name!r} needs an argument after the colon")
                return entry, argument
        raise ConfigError(self.unknown_message(name))

    def get(self, name: str) -> T:
        entry, argument = self.resolve(name)
        if argument is not None:
            raise ConfigError(f"{self.kind} {name!r} takes no argument")
        return entry

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name.lower(), self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(self.names())}."

    def entry(self, name: str) -> T:
        """The registered object itself (also for ``prefix:`` entries)."""
        if name not in self._entries:
            raise ConfigError(self.unknown_message(name))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ConfigError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS: Registry = Registry("method")
# A task whose adapters need another interface (text-to-image generation conditions a
# denoiser, it has no class embeddings) names its own family in ``method_registry``;
# the method names stay the same across families (cones, textual-inversion, ...).
GENERATION_METHODS: Registry = Registry("generation method")
DATASETS: Registry = Registry("dataset")
TASKS: Registry = Registry("task")
BACKBONES: Registry = Registry("backbone")
# Models that ``tunebench build NAME`` makes and caches (mini-clip, ...): callables
# ``build(force: bool) -> Path`` with a ``summary`` attribute.
BUILDS: Registry = Registry("buildable model")


def method_registry(task: str | None) -> Registry:
    """The method family a task's cells resolve their method names in."""
    if task is None:
        return METHODS
    return getattr(TASKS.get(task), "method_registry", METHODS)


def load_all() -> None:
    """Import every module that registers entries (each package imports its own modules).

    The one place where the floor imports upward, by design: registration is how the
    layers above make themselves known (``tests/test_layers.py`` exempts this function)."""
    import tunebench.builds  # noqa: F401
    import tunebench.datasets  # noqa: F401
    import tunebench.genmethods  # noqa: F401
    import tunebench.methods  # noqa: F401
    import tunebench.models  # noqa: F401
    import tunebench.tasks  # noqa: F401


def build_model(build: str, **options):
    """The folder of the built model ``build``, built first when this machine has none.

    How a backbone loaded before it was ever built gets built, without importing its
    training job: builds sit above models (``tunebench/builds/``)."""
    load_all()
    return BUILDS.get(build)(**options)
