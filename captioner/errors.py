"""Errors a user can act on. The `captioner` command prints their message as one line (no
traceback) and exits non-zero; library callers catch them like any exception."""

from __future__ import annotations


class CaptionerError(Exception):
    """A failure with a message that says what went wrong, where (the file, the step) and what to do."""
