"""Errors in inputs a user named (an image folder, a zip, an .npz, a statistics file, a key):
shown as one line by the command line. A leaf module, so that every room can raise them."""


class InputError(ValueError):
    """An input the user named is unusable; the message says which and why."""


class MissingInputError(InputError, FileNotFoundError):
    """An input the user named does not exist."""
