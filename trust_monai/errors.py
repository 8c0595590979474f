"""The project's own exceptions: one line each, naming the file and the fix where there is one."""

from __future__ import annotations

__all__ = [
    "TrustMonaiError",
    "DataSourceUnavailable",
    "InputFileError",
    "DatalistError",
    "BundleError",
    "OutputExistsError",
    "ArgumentError",
    "CaseError",
    "CasesFailed",
]


class TrustMonaiError(Exception):
    """Base class: every error the project raises on purpose derives from it, so callers can catch one type."""


class DataSourceUnavailable(TrustMonaiError):
    """An offline sample data source is missing; the message says what and the one command that installs it."""


class InputFileError(TrustMonaiError):
    """An input file is missing, unreadable or corrupt; the message names the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        # a file name with a newline or other control character is quoted, so the message stays one line
        shown = self.path if self.path.isprintable() else repr(self.path)
        super().__init__(f"{shown}: {reason}")


class DatalistError(TrustMonaiError):
    """A datalist (dataset.json) is malformed or points outside its dataset folder."""


class BundleError(TrustMonaiError):
    """A bundle folder or config breaks the bundle contract."""


class OutputExistsError(TrustMonaiError):
    """An output would overwrite existing data or be written into the input folder."""


class ArgumentError(TrustMonaiError, ValueError):
    """A public function got an argument it cannot use (a shape, suffix, mode or range); also a ``ValueError``."""


class CaseError(TrustMonaiError):
    """One case cannot be processed (mask does not match, NaN voxels ...): recorded for that case, the rest goes on."""


class CasesFailed(TrustMonaiError):
    """A dataset run finished, but some cases failed; the manifest lists each with its reason."""
