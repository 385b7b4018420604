"""User-facing errors.

Anything raised as `AttnlabError` (or one of its subclasses) is a mistake the user can fix; the CLI prints
its message as one line and exits with status 2 instead of showing a traceback.
"""


class AttnlabError(Exception):
    """An error whose message names the problem and the fix."""


class ConfigError(AttnlabError, ValueError):
    """A bad flag, config value, or combination of them."""


class DataError(AttnlabError, ValueError):
    """Text or data that cannot be used (empty, not UTF-8, too short)."""


class ModelNotFoundError(AttnlabError, FileNotFoundError):
    """A model name or path that cannot be loaded."""


class OutputError(AttnlabError, OSError):
    """An output path or cache folder that cannot be written (a file where a folder should be, read-only,
    full). An OSError too, so code that handles write failures keeps working."""


class ModelError(AttnlabError, ValueError):
    """A model whose files read fine but whose content cannot be used as it stands (a non-finite weight,
    tensors that do not match its config)."""
