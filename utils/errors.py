"""One exception type for problems the user can fix (missing files, bad arguments).

Scripts catch ``UserError`` at the top level and print its message without a traceback
(see ``utils.errors.run_main``); everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Optional


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


def resolve_run_folder(exp_dir: str, value: Optional[str], default: str, flag: str, what: str,
                       how: str, must_exist: bool = True) -> str:
    """A folder flag that names one of a run's outputs (``--dict_dir``, ``--cam_dir``,
    ``--out_rw``, ...), resolved the authors' way: ``None`` is the run's ``default``
    (``<exp_dir>/<default>``); a value is ``<exp_dir>/<value>`` when that folder exists
    (``--dict_dir dict``, ``crf/1``), else the path as given. An input (``must_exist``) found
    in neither place is a ``UserError`` naming both (and ``how`` to write it); an output
    found in neither is the path as given (created by the caller)."""
    if value is None:
        path = os.path.join(exp_dir, default)
        if must_exist:
            require_folder(path, what, how, flag)
        return path
    inside = os.path.join(exp_dir, value)
    if os.path.isdir(inside):
        return inside
    if os.path.isdir(value) or not must_exist:
        return value
    raise UserError(f"{what} not found: {flag} {value} is neither {inside} (in the run's "
                    f"folder) nor {value} (as given). Write them with {how}, or fix {flag}.")


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
