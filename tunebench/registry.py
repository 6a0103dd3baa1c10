"""One registry type for methods, datasets, tasks and backbones.

Names are lowercase; registering a name twice is an error; looking up an unknown
name answers with the closest valid names. A name may carry an argument after a
colon (``imagefolder:/data/pets``, ``open_clip:ViT-B-32``): the entry registered as
``imagefolder:`` then receives the text after the colon.

Methods have one namespace for every task: a name is one ``MethodEntry`` that says
which tasks it serves and which class runs on each (``cones`` is a class-embedding
adapter on the classification and detection tasks and a generation adapter on
``generation``).
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
            self._add(name, obj)
            return obj

        return add

    def _add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj

    def unregister(self, name: str) -> None:
        """Remove an entry (a test's or a plugin's temporary registration)."""
        del self._entries[name]

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


class MethodEntry:
    """One method name: the class that implements it on each task it serves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_task: dict[str, type] = {}

    @property
    def tasks(self) -> list[str]:
        return sorted(self.by_task)

    @property
    def classes(self) -> list[type]:
        """Each implementation once, in registration order."""
        return list(dict.fromkeys(self.by_task.values()))


class MethodRegistry(Registry[MethodEntry]):
    """Method names -> ``MethodEntry``. ``@METHODS.register("cones")`` on a class adds it
    for every task in its ``tasks`` ClassVar; a second class for the same (name, task)
    is an error, a class for other tasks joins the same entry."""

    def _add(self, name: str, cls) -> None:
        entry = self._entries.setdefault(name, MethodEntry(name))
        for task in cls.tasks:
            if task in entry.by_task:
                raise ValueError(f"method {name!r} is registered twice for task {task!r}")
            entry.by_task[task] = cls

    def for_task(self, name: str, task: str) -> type:
        """The class that runs method ``name`` (no variant) on ``task``."""
        name = RENAMED_METHODS.get((task, name), name)
        entry = self.get(name)
        if task not in entry.by_task:
            serving = ", ".join(self.names_for(task)) or "none"
            raise ConfigError(f"method {name!r} does not serve the {task} task (it serves "
                              f"{', '.join(entry.tasks)}); methods for {task}: {serving}")
        return entry.by_task[task]

    def names_for(self, task: str) -> list[str]:
        return [name for name in self.names() if task in self._entries[name].by_task]


# Methods renamed after results were stored under the old name: (task, old name) -> new
# name. The old name still resolves on that task, and a cell of the new name hashes
# under the old one (``stored_method_name``), so committed cells stay found instead of
# rerunning. Only committed results justify an entry: generation's K/V tuning was
# ``lit`` (a name that means partial unfreezing on every other task).
RENAMED_METHODS: dict[tuple[str, str], str] = {("generation", "lit"): "unet-attn"}


def current_method_name(task: str, method: str) -> str:
    """The name a method goes by now: ``lit:kv`` on generation is ``unet-attn:kv``. Run
    configs and the report use it, so a cell typed either way is stored and shown once."""
    base, colon, variant = method.partition(":")
    return RENAMED_METHODS.get((task, base), base) + colon + variant


def stored_method_name(task: str, method: str) -> str:
    """The method name a cell's config hash is made with: ``unet-attn:cross-attn`` on
    generation hashes as ``lit:cross-attn``; every other name as itself."""
    base, colon, variant = method.partition(":")
    for (renamed_task, old), new in RENAMED_METHODS.items():
        if renamed_task == task and base == new:
            return old + colon + variant
    return method


METHODS: MethodRegistry = MethodRegistry("method")
DATASETS: Registry = Registry("dataset")
TASKS: Registry = Registry("task")
BACKBONES: Registry = Registry("backbone")
# Models that ``tunebench build NAME`` makes and caches (mini-clip, ...): callables
# ``build(force: bool) -> Path`` with a ``summary`` attribute.
BUILDS: Registry = Registry("buildable model")


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
