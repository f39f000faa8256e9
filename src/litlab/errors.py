"""The one error type a user sees as a single line: a config or input that cannot work."""


class ConfigError(ValueError):
    """A bad setting or input, with what to type instead; train.py prints it as one line."""


def user_error(error: BaseException) -> ConfigError | None:
    """The ConfigError behind an error, if any: Hydra's instantiate wraps those raised in constructors."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    return error
