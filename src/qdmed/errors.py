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


def check_number(value, what: str, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, integer: bool = False, unit: str = "",
                 error: type[InputError] = InputError) -> float | int:
    """``value`` as a float (an int with ``integer=True``) when it is a finite number in
    [lo, hi] (lo excluded with ``lo_open``); otherwise ``error`` saying ``what`` (the file
    and field, e.g. ``"probe.yaml: ligands[0].count"``), the range and the value.

    Text and booleans are refused, not converted: YAML reads ``yes`` as True, which
    ``float`` made 1 nm, and ``1e9`` (YAML 1.1 wants ``1.0e+9``) as text, which ``int``
    could not read (a review). A whole float (``2.0``) is an integer; ``2.5`` is not.
    """
    import math
    import numbers

    try:  # an integer of 400 digits is no float (OverflowError)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
            math.isfinite(value) and (lo is None or (value > lo if lo_open else value >= lo)) \
            and (hi is None or value <= hi) and (not integer or float(value).is_integer())
    except OverflowError:
        ok = False
    if ok:
        return int(value) if integer else float(value)
    kind = "a whole number" if integer else "a number"
    if lo is not None and hi is not None and not lo_open:
        span = f" from {lo:g} to {hi:g}"
    else:
        span = "".join((f" {'>' if lo_open else '>='} {lo:g}" if lo is not None else "",
                        " and" if lo is not None and hi is not None else "",
                        f" <= {hi:g}" if hi is not None else ""))
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = (" (text, not a number: YAML reads 1e9 and 1.0e9 as text, 1.0e+9 as a "
                    "number)"
                    if "e" in value.lower() else " (text, not a number: leave out the quotes)")
        except ValueError:
            pass
    shown = repr(value)
    if len(shown) > 40:  # a 400-digit integer, a long text
        shown = f"{shown[:24]}... ({len(shown)} characters)"
    raise error(f"{what} must be {kind}{' of ' + unit if unit else ''}{span}; got "
                f"{shown}{hint}")


class ConvergenceError(QdmedError):
    """A numerical method did not converge where the caller asked for strictness."""


class ClusterLostError(QdmedError):
    """The Dask cluster a run used went away (its scheduler killed or unreachable): no fault
    of the slides; what finished is kept for the next run to resume from."""


#: numpy's floating-point notices ("invalid value encountered in reduce"): RuntimeWarnings
#: that name a machine operation, not anything a user can act on, and depend on the CPU.
#: The command line hides them (and has its Dask workers hide them).
NUMPY_FP_NOTICE = r"(invalid value|divide by zero|overflow|underflow) encountered in "


class QdmedWarning(UserWarning):
    """Base class of qdmed warnings."""


class ExtrapolationWarning(QdmedWarning):
    """A model was evaluated outside its validity range because ``extrapolate=True``."""
