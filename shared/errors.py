"""The one exception type for mistakes in what the user gave: a config key, an argument, a file.

The command line prints a `UserError` as one line (`musetok CMD: error: ...`) and exits with 2; it
never catches anything else, so a bug in musetok keeps its traceback. The message names the key,
argument or file.
"""


class UserError(Exception):
    """Bad input from the user (config, arguments, files). The message is one line naming what is wrong."""


def write_error(path, e: OSError) -> UserError:
    """A failed write (disk full, quota, read-only or vanished folder) as a one-line error naming the file."""
    return UserError(f"{path}: cannot write ({e.strerror or e})")
