"""The `rtdeploy` command. This package is the only place that prints, draws or exits.

Library errors (RtdeployError) become one line on stderr and their exit code (2 bad input,
1 failure); tracebacks only with RTDEPLOY_DEBUG=1. SIGTERM is treated like Ctrl-C so that
both stop at a clean point and leave the last complete checkpoint in place.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import time

import typer

from ..errors import RtdeployError
from ..names import show

app = typer.Typer(
    name="rtdeploy", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Prune remote-sensing classifiers with RemoteTrimmer (channel attention pruning + adaptive "
         "mining loss) and deploy them as ONNX.\n\nPipeline: train -> compress -> export -> bench. "
         "Each command's --help explains its options.",
)

from . import train_cmd  # noqa: E402,F401  (registers train, eval, info)
from . import import_cmd  # noqa: E402,F401  (registers import)

for _optional in ("compress_cmd", "export_cmd", "bench_cmd"):
    try:
        __import__(f"{__package__}.{_optional}")
    except ModuleNotFoundError as _e:  # a command module not written yet; the others still work
        if _e.name != f"{__package__}.{_optional}":
            raise


INTERRUPTED = "interrupted; the last complete checkpoint is intact (continue with --resume)"
INTERRUPTED_NO_RESUME = "interrupted; nothing was written (outputs appear only when complete); run the command again"
_RESUMABLE = ("train", "compress")


# Under torchrun a rank cannot tell a user's Ctrl-C/SIGTERM from torchrun stopping the survivors
# after another rank died (which of the two reaches a rank first is a race), so it names both.
INTERRUPTED_RANK = ("interrupted (stopped, or stopped by torchrun because another process of the job ended: "
                    "see its message above); the last complete checkpoint is intact (continue with --resume)")


def _interrupted() -> str:
    if not _resumable():
        return INTERRUPTED_NO_RESUME
    return INTERRUPTED_RANK if _under_torchrun() else INTERRUPTED


_resume_file: tuple[str, float] | None = None  # train/compress: the '.last' this run writes, and its start


def expect_resume_file(path, resuming: bool) -> None:
    """train/compress: where this run's '<out>.last' will appear. Interrupted before it exists (data
    loading, SE capture, sparsity training, progressive pruning's steps: minutes can pass before
    the first epoch of the final training), the run has nothing to resume from, and says so."""
    global _resume_file
    _resume_file = None if resuming else (str(path), time.time())


def _resumable() -> bool:
    if _command not in _RESUMABLE:
        return False
    if _resume_file is None:  # continuing with --resume: that file is still intact
        return True
    path, since = _resume_file
    try:  # a '.last' left by an earlier run (replaced with --force) is not this run's
        return os.stat(path).st_mtime >= since - 2.0  # 2 s: coarse file-system timestamps
    except OSError:
        return False


def _under_torchrun() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:  # a damaged variable is reported where the job starts, not in this message
        return False


def _debug() -> bool:
    return os.environ.get("RTDEPLOY_DEBUG", "") not in ("", "0")


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)  # set by torchrun for each of its processes


def _fail(message: str, code: int, shared: bool = True) -> int:
    """The one error line. show() escapes newlines and other control characters, so whatever a
    message holds (a file name, an option value, a library's text) it stays one line and cannot
    forge a second `rtdeploy: error:` line. Under torchrun, errors every rank meets alike (bad
    input, an interrupt, a peer gone) are printed by rank 0 alone; a rank's own failure names it."""
    if _rank() != 0:
        if shared:
            return code
        message = f"rank {_rank()}: {message}"
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):  # stderr closed too: the exit code still tells
            print(f"rtdeploy: error: {show(message)}", file=sys.stderr, flush=True)
    return code


def _dist():
    """rtdeploy.distributed when a command loaded it (it imports torch; --help stays fast)."""
    return sys.modules.get(f"{__package__.rsplit('.', 1)[0]}.distributed")


# Out of memory as torch (CPU and CUDA) and the OS word it; anything else is an internal error.
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


# The flags that lower each command's memory use: an out-of-memory message names only flags the
# command that failed has (bench has --batch-sizes, not --batch-size or --img-size).
_MEMORY_FLAGS = {"train": "--batch-size (or --img-size)", "compress": "--batch-size", "bench": "--batch-sizes"}
_command: str | None = None  # the subcommand being run, set by main()


def _oom_message() -> str:
    flags = _MEMORY_FLAGS.get(_command or "")
    return f"out of memory; lower {flags}, or free memory and retry" if flags else \
        "out of memory; free memory (close other programs) and retry"


def _explain(e: BaseException) -> tuple[str, int]:
    """Known runtime failures with the flag that fixes them; anything else is an internal error."""
    text = str(e)
    dist = _dist()
    if dist is not None and dist.peer_failure(e):
        return dist.PEER_FAILED, 1
    if isinstance(e, MemoryError) or any(t in text.lower() for t in _OOM_TEXTS) \
            or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
        return _oom_message(), 1
    if "DataLoader worker" in text:
        return "a data loader worker crashed; retry with --workers 0", 1
    if isinstance(e, FloatingPointError):
        return text, 1
    first = text.splitlines()[0] if text else ""
    return f"internal error: {type(e).__name__}: {first} (set RTDEPLOY_DEBUG=1 for the traceback)", 1


def _stdout_lost() -> int:
    """stdout was closed or its reader went away (`>&-`, `| head`): say so once, and point stdout
    at /dev/null so Python's final flush does not print a second complaint."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return _fail("standard output is closed or its reader went away; redirect it to a file "
                 "(or /dev/null) instead of closing it", 1)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


class _WarningLine(logging.Handler):
    """The library's warnings, as the CLI's other lines: `rtdeploy: warning: ...`, one line each,
    names escaped; under torchrun rank 0 alone speaks (every rank meets the same warnings)."""

    def emit(self, record: logging.LogRecord) -> None:
        if _rank() != 0:
            return
        try:
            sys.stderr.write(f"rtdeploy: warning: {show(record.getMessage())}\n")
        except (OSError, ValueError):  # stderr gone: nothing to tell
            pass


def _install_warning_line() -> None:
    logger = logging.getLogger("rtdeploy")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        handler = _WarningLine(logging.WARNING)
        logger.addHandler(handler)  # a handler exists, so logging's last-resort printer stays silent


def main(argv: list[str] | None = None) -> int:
    global _resume_file
    _resume_file = None
    try:
        return _main(argv)
    finally:  # in-process callers (the tests, the Python API's users) run commands one after another
        _resume_file = None


def _main(argv: list[str] | None) -> int:
    global _command
    signal.signal(signal.SIGTERM, _on_sigterm)
    _install_warning_line()
    _command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if sys.stdout is None:  # started with stdout closed ('>&-'): nowhere to put the results
        return _fail("standard output is closed; redirect it to a file (or /dev/null) instead of closing it", 2)
    try:
        result = app(args=argv, standalone_mode=False)
        if result == 130:  # Typer turns Ctrl-C inside a command into a returned 130
            return _fail(_interrupted(), 130)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        if _dist() is not None:
            _dist().shutdown()  # leave the torchrun process group cleanly
        return result if isinstance(result, int) else 0
    except RtdeployError as e:
        if _debug():
            raise
        return _fail(str(e), e.exit_code)
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors (bad option syntax): one line, not the usage block
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _fail(f"{e.format_message()}{hint}", e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        return _fail(_interrupted(), 130)
    except (BrokenPipeError, ValueError, OSError) as e:
        if _stdout_broken(e):
            return _stdout_lost()
        if _debug():
            raise
        return _fail(*_explain(e))
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if _debug():
            raise
        message, code = _explain(e)
        return _fail(message, code, shared=_dist() is not None and _dist().peer_failure(e))


def _stdout_broken(e: BaseException) -> bool:
    """A write to stdout failed: its pipe closed (EPIPE), its fd is invalid (EBADF) or the stream closed."""
    if isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno in (errno.EPIPE, errno.EBADF)):
        return True
    return isinstance(e, ValueError) and "closed file" in str(e) and sys.stdout.closed


def run() -> None:
    code = main()
    # The command is over and its files are whole: a late SIGTERM (torchrun stopping the other
    # ranks of a failed job) must not print a KeyboardInterrupt from the interpreter's exit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)
