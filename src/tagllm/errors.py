"""The errors a user should see. A leaf module: it imports nothing from tagllm.

Every error that a user's input, file or setting can cause derives from
:class:`TagllmError`; its message says what is wrong and where (file, row, key, tag).
``tagllm`` prints such an error in one line and exits with status 2. Any other exception
is a bug in tagllm, and ``tagllm`` prints its traceback. The concrete classes also derive
from the built-in exception a caller would expect (``ValueError``, ``FileNotFoundError``),
so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


def did_you_mean(name: object, options: object) -> str:
    """``"; did you mean 'x'?"`` for the options closest to a mistyped ``name`` (case
    ignored), or ``""`` when none is close."""
    import difflib

    opts = [str(o) for o in options]  # type: ignore[attr-defined]
    lower = {o.lower(): o for o in opts}
    close = difflib.get_close_matches(str(name).lower(), list(lower), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(lower[c]) for c in close)}?" if close else ""


class TagllmError(Exception):
    """Base class of every user-facing error."""


class ConfigError(TagllmError, ValueError):
    """A setting that cannot work (a config field, a flag, a combination of them)."""


class RecipeError(ConfigError):
    """A recipe that cannot run; the message names the file and the key."""


class DataError(TagllmError, ValueError):
    """A bad input row or file; the message names the file, row and reason."""


class UnknownTagError(TagllmError, ValueError):
    """A tag name in the input that the model does not know."""


class InputTooLongError(TagllmError, ValueError):
    """An input longer than the allowed number of tokens (never truncated silently)."""


class TagFileError(TagllmError, ValueError):
    """A tag folder that is missing, corrupt, or made for another base model."""


class CheckpointError(TagFileError):
    """A checkpoint that is corrupt or does not match the job being resumed."""


class MissingPackageError(TagllmError, FileNotFoundError):
    """A data or weight package (or a file inside it) that is not installed."""


class TrainingError(TagllmError, FloatingPointError):
    """Training that cannot go on (e.g. a loss that became NaN or infinite)."""
