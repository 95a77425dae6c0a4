"""The ``qdmed`` command line: parses, calls one library function, prints.

Exit codes: 0 success; 2 bad input (one line on stderr naming the value); 1 internal error;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import sys
import warnings

import typer

from qdmed import __version__

# rich_markup_mode=None: click's plain help, which keeps long option names whole at 80
# columns (Typer's rich tables cut them) and shows no <bool> beside flags
app = typer.Typer(help="qdmed: quantum-dot cancer nanomedicine toolkit.", no_args_is_help=True,
                  rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False)


def _version(value: bool):
    if value:
        typer.echo(f"qdmed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """qdmed: design QD probes, model their optics, analyse multiplexed QD images."""


def _register():
    from qdmed.cli import demo, design, image, optics

    app.add_typer(optics.app, name="optics")
    app.command(name="design", short_help="Design a QD probe and print its sheet.")(
        design.design)
    app.command(name="demo")(demo.demo)
    app.add_typer(image.app, name="image",
                  short_help="Multiplexed QD imaging, HER2 scoring, DAB IHC.")


#: Library parameters whose command-line option has another name.
_OPTION_OF = {"shape": "--size", "photons_per_unit": "--photons", "rows": "--tma",
              "cols": "--tma", "offset_adu": "--offset", "n_workers": "--workers",
              "n_permutations": "--permutations", "quantum_yield": "--qy",
              "core_diameter_nm": "--diameter", "emission_nm": "--emission",
              "stokes_shift_meV": "--stokes-mev", "shell_thickness_nm": "--shell"}


def _with_option(message: str, argv: list[str]) -> str:
    """An error message that starts with a library parameter's name (``shape must be...``)
    names the option the user typed too (``shape (--size) must be...``), when that option
    was given. One that goes on with what the user gave that option (``control X: ...``
    for ``--control X=path``) is said as they typed it (``--control X: ...``)."""
    name, sep, rest = message.partition(" ")
    if not sep or not name.isidentifier() or rest.startswith("("):
        return message
    option = _OPTION_OF.get(name, "--" + name.replace("_", "-"))
    if f"({option})" in message:  # the message names it already
        return message
    values = [b for a, b in zip(argv, argv[1:], strict=False) if a == option] + \
        [a[len(option) + 1:] for a in argv if a.startswith(option + "=")]
    given = values or option in argv
    head = rest.split(":", 1)[0] if ":" in rest else ""
    if head and any(v == head or v.startswith(head + "=") for v in values):
        return f"{option} {rest}"
    return f"{name} ({option}) {rest}" if given else message


def _file_in_path(path) -> str | None:
    """The first part of `path` that is an existing file (where a folder was needed): for
    ``mkdir`` of ``afile/x`` Python reports the missing folder as ``FileExistsError`` on
    ``afile`` itself, a deeper path as ``NotADirectoryError``."""
    from pathlib import Path

    if not path:
        return None
    p = Path(path)
    return next((str(q) for q in reversed([p, *p.parents]) if q.is_file()), None)


def _warning_filters() -> None:
    """The command line's warning filters: qdmed's extrapolation warnings shown each time,
    numpy's floating-point notices hidden unless the user chose filters (``python -W`` or
    ``PYTHONWARNINGS``, which fill ``sys.warnoptions``), each warning one line ``! text``."""
    from qdmed.errors import NUMPY_FP_NOTICE, ExtrapolationWarning

    warnings.simplefilter("default", ExtrapolationWarning)
    if not sys.warnoptions:
        # one came from a dearray run on a CI machine although no NaN or infinity reaches a
        # numpy reduction there (every reduction traced on this machine); the library's own
        # tests still turn them into errors (pyproject: filterwarnings = error)
        warnings.filterwarnings("ignore", message=NUMPY_FP_NOTICE, category=RuntimeWarning)
    from qdmed.cli._output import SAID

    SAID.clear()
    warnings.formatwarning = _format_once  # as print_warning: "! text", once each


class _Terminated:
    """Whether SIGTERM (``kill``, a batch scheduler's time limit) stopped the run."""

    seen = False


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    # as a Ctrl-C, so that what a run holds is given back as on an interrupt (its Dask
    # cluster closed, temporary files removed by their context managers); Python's default
    # for SIGTERM ends the process at once, unsaid (a review)
    _Terminated.seen = True
    raise KeyboardInterrupt


def _stopped() -> int:
    """Say why the run stopped; its exit code (130 for Ctrl-C, 143 for SIGTERM)."""
    if _Terminated.seen:
        typer.echo("terminated (SIGTERM)", err=True)
        return 128 + 15
    typer.echo("interrupted", err=True)
    return 130


def _format_once(message, category, *args, **kwargs) -> str:  # noqa: ARG001
    """A warning as print_warning says it, ``! text``; nothing when said before in this run
    (:data:`qdmed.cli._output.SAID`)."""
    from qdmed.cli._output import SAID

    text = str(message)
    if text in SAID:
        return ""
    SAID.add(text)
    return f"! {text}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 1 internal error, 130
    interrupted, 143 terminated)."""
    import signal
    import threading

    from qdmed.cli._output import SAID

    _Terminated.seen = False
    # the caller's warning settings back afterwards (main called from Python, a notebook, a
    # test: a review's own warnings lost their file and line, and one said by the run was
    # hidden)
    formatting = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            if threading.current_thread() is not threading.main_thread():  # only it sets
                return _main(argv)                                         # handlers
            before = signal.signal(signal.SIGTERM, _on_sigterm)
            try:
                return _main(argv)
            except KeyboardInterrupt:  # one that came while an error was being said
                return 128 + 15 if _Terminated.seen else 130
            finally:  # a caller's own handler back
                signal.signal(signal.SIGTERM, before)
    finally:
        warnings.formatwarning = formatting
        SAID.clear()


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` is, or was raised on, a Ctrl-C or SIGTERM: numba's compiled functions
    turn the KeyboardInterrupt raised inside them into a SystemError (a review: a SIGTERM
    there read "internal error: SystemError: CPUDispatcher(...)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return _Terminated.seen


def _quiet_pending_tasks() -> None:
    """Leave unsaid the chunk reads zarr had in flight when one failed: its event loop
    outlives the error, and asyncio logged each read still pending when the process ended
    ("Task was destroyed but it is pending!", a few lines after the error's one; a review
    saw them on 3 of 6 runs over a truncated chunk). Called by :func:`exit_with` only, as
    the process ends with an error: a caller of :func:`main` keeps its own logging."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _main(argv: list[str] | None) -> int:
    from qdmed.errors import InputError, QdmedError

    try:
        _register()  # in the try: a signal during the imports is said as any other
        _warning_filters()
        # with standalone_mode=False click returns a command's typer.Exit code instead of
        # raising it (click 8.5): pass it on
        rc = app(args=argv, prog_name="qdmed", standalone_mode=False)
        if rc == 130:  # typer turns a Ctrl-C into Exit(130), which click returns here
            return _stopped()
        return rc if isinstance(rc, int) else 0
    except InputError as exc:
        typer.echo(f"error: {_with_option(str(exc), sys.argv[1:] if argv is None else argv)}",
                   err=True)
        return 2
    except QdmedError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        # a path given that cannot serve (an existing file as an output folder, a folder as
        # an output file, no permission): bad input, named by the path
        where = exc.filename if exc.filename is not None else ""
        file = _file_in_path(where) if isinstance(exc, NotADirectoryError | FileExistsError) \
            else None
        if file is not None:  # e.g. an existing file given as an output folder (--out)
            typer.echo(f"error: {file} is a file where a folder is needed (was a file "
                       "given as the output folder?)", err=True)
        else:
            typer.echo(f"error: {where}: {exc.strerror or exc}", err=True)
        return 2
    except KeyboardInterrupt:
        return _stopped()
    except Exception as exc:
        if _interrupted(exc):
            return _stopped()
        # click's exceptions, from click or typer's vendored copy, recognised by class name
        names = {c.__name__ for c in type(exc).__mro__}
        if "Exit" in names:
            return int(getattr(exc, "exit_code", 0))
        if "Abort" in names:
            typer.echo("aborted", err=True)
            return 1
        if "UsageError" in names:
            msg = exc.format_message()
            if msg:
                typer.echo(f"error: {msg}", err=True)
            return 2
        # last resort: one line, exit 1, never a traceback dump
        typer.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        return 1


def exit_with(rc: int):
    """``sys.exit(rc)``, but after a SIGTERM the process ends with 143 at once, its streams
    flushed and the run's own cleanup done (its ``finally`` blocks and context managers):
    CPython 3.11 ended 7 of 40 terminated ``python -m qdmed`` runs with 130 although main
    returned 143 (a KeyboardInterrupt it met during an import marks the process as
    interrupted by Ctrl-C, whatever caught it)."""
    import os

    if rc:  # the error is said: the reads zarr left pending when it came need not be
        _quiet_pending_tasks()
    if _Terminated.seen:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(128 + 15)
    sys.exit(rc)


def _console_main():  # pragma: no cover - console-script wrapper
    exit_with(main())
