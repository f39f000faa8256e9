"""The one error type a user sees as a single line: a config or input that cannot work."""

import os
import sys


class ConfigError(ValueError):
    """A bad setting or input, with what to type instead; train.py prints it as one line."""


def user_error(error: BaseException) -> ConfigError | None:
    """The ConfigError behind an error, if any: Hydra's instantiate wraps those raised in constructors."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    return error


def exit_on_user_error(error: Exception) -> None:
    """In an entry point's `except`: exit with `error: <one line>` for a ConfigError, else re-raise."""
    cause = user_error(error)
    if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    sys.exit(f"error: {cause}")
