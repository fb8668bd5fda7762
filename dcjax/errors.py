"""The one base class of user-facing failures: bad config, data, workdir or export, a full disk.

A launcher (``experiments/common.run_guarded``) turns a ``UserError`` into one ``error:`` line and exit
status 2, with nothing half-written; anything else is a real crash and keeps its traceback. Subclasses may also
inherit from ``ValueError`` or ``OSError`` where existing callers catch those.
"""

from __future__ import annotations

import errno as errno_lib
import os


class UserError(Exception):
    """A problem the user can fix (the message, one line, says how); not a bug."""


class ConfigError(UserError, ValueError):
    """A setting out of range, at odds with another, or too large for the data or the machine.

    ``setting`` names the config field to blame (None when no one field is), and the message starts with it:
    ``ConfigError("lr_img", "must be > 0, got -1")`` reads "lr_img must be > 0, got -1" (a ``detail`` that starts
    with '=', ':' or ',' follows the name directly: "ipc=9 exceeds ..."). A launcher names the flag instead
    (``named``), from the field rather than by parsing the message. A ValueError too, so callers that catch
    ValueError from config checks still do.
    """

    def __init__(self, setting: str | None, detail: str, flag: str | None = None):
        self.setting, self.detail, self.flag = setting, detail, flag
        name = f"--{flag}" if flag else setting
        super().__init__(detail if name is None else name + ("" if detail[:1] in "=:," else " ") + detail)

    def named(self, flag: str) -> ConfigError:
        """The same error naming flag ``--flag`` in place of the setting (once: a named error keeps its flag)."""
        return self if self.flag or self.setting is None else ConfigError(self.setting, self.detail, flag)

    def __reduce__(self):  # Picklable (multiprocessing, pytest-xdist) despite the extra arguments.
        return ConfigError, (self.setting, self.detail, self.flag)


class WriteError(UserError, OSError):
    """A file or directory that cannot be written: read-only, full disk, no permission.

    The message names the path and what the errno means; the run leaves nothing half-written (every output is
    written to a temporary file and renamed) and resumes once the cause is fixed.
    """

    def __init__(self, message: str, code: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.message, self.errno, self.filename = message, code, filename

    def __str__(self) -> str:  # OSError's own would print "[Errno N] ...".
        return self.message


# Errnos that say "this place cannot take the write", not "the program is wrong".
ENVIRONMENT_ERRNOS = frozenset(
    {errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EROFS, errno_lib.EACCES, errno_lib.EPERM, errno_lib.EFBIG}
)


def is_environment(error: BaseException) -> bool:
    """Whether ``error`` is an OSError whose errno blames the disk or its permissions (see ENVIRONMENT_ERRNOS)."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def write_error(path: str, error: OSError) -> WriteError:
    """The one-line WriteError for ``error`` raised while writing ``path``: the path, the errno's meaning, the fix."""
    code = error.errno or 0
    meaning = os.strerror(code).lower() if code else str(error)
    name = errno_lib.errorcode.get(code, "")
    fix = (
        "free some space, then rerun the same command to resume"
        if code in (errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EFBIG)
        else "make it writable or choose another --workdir, then rerun the same command"
    )
    written = error.filename if isinstance(error.filename, str) and error.filename else path
    return WriteError(f"cannot write {written}: {meaning}{f' ({name})' if name else ''}; {fix}", error.errno, written)
