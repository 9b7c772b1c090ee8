"""Exceptions with one-line messages meant for users (the CLI prints them without a traceback)."""


class MegError(Exception):
    """Base class: a problem the user can fix from the message alone."""


class InputError(MegError, ValueError):
    """A bad edit record, argument or file; the message names the record/field/argument."""


class UnsupportedModelError(MegError):
    """The model's architecture has no row in the architecture table."""


class PackError(MegError):
    """An edit pack is incomplete, corrupted, or belongs to another base model."""
