"""The errors a user sees as a single line: a config or input that cannot work, a run that diverged."""

import difflib
import errno

from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
)
from omegaconf.errors import OmegaConfBaseException


class UserError(Exception):
    """An error the user can fix from the command line; train.py prints it as one `error: ...` line."""


class ConfigError(UserError, ValueError):
    """A bad setting or input, with what to type instead."""


class Diverged(UserError, RuntimeError):
    """Training stopped at the first non-finite (or exploding) loss."""

    def __init__(self, epoch: int, loss: float, why: str = ""):
        super().__init__(
            f"diverged at epoch {epoch} (loss={loss:.6g}{why}): try a smaller learning rate or scaled inputs"
        )
        self.epoch, self.loss = epoch, loss


class DiskFull(UserError, OSError):
    """No space left (or the disk quota reached) where a run writes."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> OSError | None:
    """The no-space OSError behind an error, if any (TensorBoard's writer thread, torch.save, Hydra, ...)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error
        error = error.__cause__ or error.__context__
    return None


def user_error(error: BaseException) -> UserError | None:
    """The UserError behind an error, if any: Hydra's instantiate wraps those raised in constructors, and
    OmegaConf re-raises those raised in our resolvers (conf/hydra's run dir) keeping only the context.
    A full disk is one too, wherever it stopped a write."""
    if (full := disk_full(error)) is not None and not isinstance(full, UserError):
        where = f" of {full.filename}" if full.filename else ""
        return DiskFull(f"no space left on the disk{where}: free space (df -h shows where), then run again")
    while error is not None and not isinstance(error, UserError):
        context = error.__context__ if isinstance(error, OmegaConfBaseException) else None
        error = error.__cause__ or context
    return error


def one_line(error: BaseException) -> str | None:
    """What to print for an error the user caused (ours, Hydra's composition, OmegaConf's); None for a bug."""
    if (ours := user_error(error)) is not None:
        return str(ours)
    if isinstance(error, MemoryError) or any(
        w in str(error) for w in ("can't allocate memory", "out of memory")
    ):
        return (
            "out of memory: the model or the data does not fit in this machine's memory; use a smaller "
            "network (model.net.hidden), a smaller data.batch_size, or data.stream=true for a large table"
        )
    if (
        isinstance(error, PermissionError | NotADirectoryError | FileExistsError | FileNotFoundError)
        and error.filename
    ):
        return (
            f"cannot use {error.filename}: {error.strerror}: choose a place of your own for the runs "
            "(paths.root_dir=... or paths.log_dir=...) or the file named"
        )
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        return f"there is no {group}={option}: the {group} options are {', '.join(error.options)}"
    cause = error.__cause__
    if isinstance(error, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        return unknown_key(cause) or flat(f"{error} {cause}")
    if isinstance(error, InstantiationException):  # a constructor failed for a reason we did not foresee
        return None
    if isinstance(error, HydraException | OmegaConfBaseException):
        return flat(str(error))
    return None


def unknown_key(error: OmegaConfBaseException) -> str | None:
    """'optimizer.lrr is not a key of optimizer: did you mean lr? ...' for an override of a missing key;
    'lr ...: did you mean optimizer.lr?' where the key exists deeper down."""
    node, key = error.parent_node, error.key
    if node is None or key is None or not hasattr(node, "keys"):
        return None
    keys = [k for k in node if not str(k).startswith("_") and k != "hydra"]
    parent = error.full_key.rpartition(".")[0]
    if parent and not keys:  # an option that sets nothing, as scheduler=none
        return (
            f"{error.full_key} is not a key of {parent}, which has none here (its option sets none): choose "
            f"an option of {parent} first, e.g. {parent}=<option> {error.full_key}=... (--help lists them)"
        )
    where = f"of {parent}" if parent else "at the top level"
    deeper = [f"{parent}.{path}" if parent else path for path in paths_to(node, str(key))]
    close = deeper or difflib.get_close_matches(str(key), keys, n=1)
    hint = f"did you mean {' or '.join(close[:3])}? " if close else ""
    return (
        f"{error.full_key} is not a key {where} (its keys: {', '.join(map(str, keys))}): {hint}"
        f"to add a new one on purpose, use +{error.full_key}=..."
    )


def paths_to(node: object, key: str, prefix: str = "") -> list[str]:
    """The dotted paths below a config node whose last key is `key` (Hydra's own node left out)."""
    found = []
    for child in node if hasattr(node, "keys") else ():
        if child == "hydra" or str(child).startswith("_"):
            continue
        value = node._get_node(child)
        if str(child) == key and prefix:
            found.append(f"{prefix}{child}")
        if hasattr(value, "keys"):
            found += paths_to(value, key, f"{prefix}{child}.")
    return found


def flat(message: str) -> str:
    """A multi-line message as one line."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())
