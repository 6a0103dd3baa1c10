"""User-facing errors.

Anything the user can fix (a bad name, a malformed config, a missing file) raises
`TunebenchError` with a one-line message that says what to do. The CLI prints that
line and exits non-zero instead of showing a traceback.
"""


class TunebenchError(Exception):
    """An error caused by input the user can fix; its message is shown as one line."""


class ConfigError(TunebenchError):
    """A sweep or run config is malformed or names something unknown."""


class DataError(TunebenchError):
    """A dataset or image could not be read."""


class StorageError(TunebenchError):
    """A results or cache folder cannot be written (a file in the way, no write access,
    a full disk) or is in use by another sweep."""
