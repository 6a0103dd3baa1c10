"""Generation adapters (the ``generation`` task's implementations of the methods):
every module in this folder is imported and registers itself in ``METHODS``, under
the same names as the other tasks' implementations where the method is the same idea.

Adding a method therefore touches no other file: drop a module here.
"""

import importlib
import pkgutil

_SUPPORT_MODULES = {"base", "exports", "prompting"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SUPPORT_MODULES and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
