"""The `rtdeploy` command. This package is the only place that prints, draws or exits.

Library errors (RtdeployError) become one line on stderr and their exit code (2 bad input,
1 failure); tracebacks only with RTDEPLOY_DEBUG=1. SIGTERM is treated like Ctrl-C so that
both stop at a clean point and leave the last complete checkpoint in place.
"""
from __future__ import annotations

import os
import signal
import sys

import typer

from ..errors import RtdeployError

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


def _debug() -> bool:
    return os.environ.get("RTDEPLOY_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> int:
    print(f"rtdeploy: error: {message}", file=sys.stderr)
    return code


def _explain(e: BaseException) -> tuple[str, int]:
    """Known runtime failures with the flag that fixes them; anything else is an internal error."""
    text = str(e)
    if isinstance(e, MemoryError) or "out of memory" in text.lower():
        return "out of memory; lower --batch-size (or --img-size)", 1
    if "DataLoader worker" in text:
        return "a data loader worker crashed; retry with --workers 0", 1
    if isinstance(e, FloatingPointError):
        return text, 1
    first = text.splitlines()[0] if text else ""
    return f"internal error: {type(e).__name__}: {first} (set RTDEPLOY_DEBUG=1 for the traceback)", 1


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = app(args=argv, standalone_mode=False)
        if result == 130:  # Typer turns Ctrl-C inside a command into a returned 130
            return _fail(INTERRUPTED, 130)
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
        return _fail(INTERRUPTED, 130)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if _debug():
            raise
        return _fail(*_explain(e))


def run() -> None:
    sys.exit(main())
