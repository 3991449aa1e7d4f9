"""One exception type for problems the user can fix (missing files, bad arguments).

Scripts catch ``UserError`` at the top level and print its message without a traceback
(see ``utils.errors.run_main``); everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class NonFiniteLoss(Exception):
    """Training diverged (a NaN or infinite loss). Not a problem with the input files or
    flags, so it is not a ``UserError``: scripts end with their own exit code
    (``EXIT_DIVERGED``) and a message that names the last good checkpoint."""


EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def describe_missing(paths: Iterable[str], what: str, limit: int = 5) -> str:
    """'3 <what> missing: a, b, c' (the first ``limit`` names, then a count)."""
    paths = list(paths)
    shown = ", ".join(str(p) for p in paths[:limit])
    more = f" (and {len(paths) - limit} more)" if len(paths) > limit else ""
    return f"{len(paths)} {what} missing: {shown}{more}"


def require_folder(path: str, what: str, how: str, flag: str) -> None:
    """A ``UserError`` when the folder ``path`` of ``what`` (an earlier stage's outputs) is
    absent: ``how`` to write it (a command), or the ``flag`` that names another folder."""
    if not os.path.isdir(path):
        raise UserError(f"{what} not found: {path}. Write them with {how}, or pass {flag}.")


def _original_message(msg: str) -> str:
    """The message itself when a DataLoader worker re-raised it (torch wraps it in "Caught
    UserError in DataLoader worker process N. Original Traceback ... UserError: <message>")."""
    if "Original Traceback" in msg:
        return msg.rsplit("UserError: ", 1)[-1].strip()
    return msg


def run_main(main: Callable[[], object]) -> None:
    """Run a script's ``main``: a ``UserError`` ends it with its message and exit code 2, a
    diverged training (``NonFiniteLoss``) with its message and exit code 3."""
    try:
        main()
    except UserError as e:
        print(f"error: {_original_message(str(e))}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except NonFiniteLoss as e:
        print(f"training diverged: {e}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
