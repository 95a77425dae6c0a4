"""Exceptions and warnings raised by qdmed.

``InputError`` (a ``ValueError``) is raised for bad values and files; the CLI turns it into
one line on stderr and exit code 2. ``OutOfRangeError`` marks a value outside a model's
validity range. Other ``QdmedError`` subclasses are internal or numerical failures (exit 1).
"""

from __future__ import annotations


class QdmedError(Exception):
    """Base class of every qdmed exception."""


class InputError(QdmedError, ValueError):
    """A bad value, argument or file. The message names the value and what is accepted."""


class OutOfRangeError(InputError):
    """A value outside the validity range of a model (message gives the range)."""


class UnknownNameError(InputError, KeyError):
    """A name (material, model, ligand...) that is not in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FileFormatError(InputError):
    """A malformed, truncated or inconsistent input file (message names file and field)."""


def check_fields(entry: dict, accepted, source: str, where: str = "") -> None:
    """Refuse fields of an input file's mapping outside `accepted` (FileFormatError naming
    the file, the mapping and what is accepted): a misspelt field would be ignored."""
    unknown = sorted(map(str, set(entry) - set(accepted)))
    if unknown:
        raise FileFormatError(f"{source}: {where + ': ' if where else ''}unknown field(s) "
                              f"{', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}")


class ConvergenceError(QdmedError):
    """A numerical method did not converge where the caller asked for strictness."""


#: numpy's floating-point notices ("invalid value encountered in reduce"): RuntimeWarnings
#: that name a machine operation, not anything a user can act on, and depend on the CPU.
#: The command line hides them (and has its Dask workers hide them).
NUMPY_FP_NOTICE = r"(invalid value|divide by zero|overflow|underflow) encountered in "


class QdmedWarning(UserWarning):
    """Base class of qdmed warnings."""


class ExtrapolationWarning(QdmedWarning):
    """A model was evaluated outside its validity range because ``extrapolate=True``."""
