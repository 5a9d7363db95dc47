"""The one exception type for bad user input (files, rows, options), mapped to exit code 2 by the CLI."""


class InputError(ValueError):
    """Bad input from the user: the message names the file, row or option and what was expected."""
