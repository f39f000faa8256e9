"""The constructor signatures that checks.py reads, written down ahead of time (signatures.json), so that a
mistake in a Trainer, logger, callback, data or optimizer argument is answered without importing torch or
Lightning (seconds).

`python -m litlab.signatures` writes signatures.json from the installed packages: every `_target_` under
conf/. tests/test_checks.py fails when it no longer matches them (a torch or Lightning upgrade that changes
a signature, an argument added to one of our classes). Where the installed torch or Lightning differ from
those it was written from, or the source file of one of our classes has changed since, the live signature is
read instead: correct, only slower. A hint is kept in a plain form (`encode`) that `fits` and `describe`
read alike, written down or live."""

import hashlib
import inspect
import json
import os
import types
import typing
from collections import abc
from functools import cache
from importlib import metadata
from pathlib import Path

from hydra.utils import get_object
from omegaconf import ListConfig, OmegaConf

SRC = Path(__file__).resolve().parents[1]  # src/: our packages (litlab, hydra_plugins)
FILE = Path(__file__).with_name("signatures.json")
CONF = SRC.parent / "conf"
DISTRIBUTIONS = ("torch", "lightning")  # whose classes the configs name; a different version reads live
# A config value of each kind, to learn which kinds a class annotation takes (a str for a PathLike, ...).
SAMPLES = {"str": "x", "int": 1, "float": 1.0, "bool": True, "list": ListConfig([]), "none": None}


def encode(hint: object) -> object:
    """An annotation as JSON: "int" | "float" | "bool" | "str" | "none" | "any", {"union": [...]},
    {"literal": [...]}, {"list": item}, {"tuple": [...]}, {"class": name, "accepts": [kinds of value]}."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return "any"
    if origin in (typing.Union, types.UnionType):
        return {"union": [encode(a) for a in args]}
    if origin is typing.Literal:
        plain = all(v is None or isinstance(v, str | int | float | bool) for v in args)
        return {"literal": list(args)} if plain else "any"
    if hint is type(None):
        return "none"
    if hint in (bool, str, int, float):
        return hint.__name__
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence) or hint in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"tuple": [encode(a) for a in args]}
        return {"list": encode(args[0]) if args else "any"}
    if isinstance(hint, type):
        takes_str = issubclass(hint, os.PathLike)
        kinds = [k for k, v in SAMPLES.items() if isinstance(v, hint) or (k == "str" and takes_str)]
        return {"class": hint.__name__, "accepts": kinds}
    return "any"


def live(target: object) -> dict[str, object] | None:
    """Named arguments -> encoded annotation of a callable, or None when it takes any keyword (**kwargs).

    Our own classes (litlab.*) pass their **kwargs on to their base class, so its arguments count too."""
    found: dict[str, object] = {}
    for fn in chain(target):
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # an annotation that does not resolve here: skip the type check, keep the names
            hints = {}
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, encode(hints.get(p.name, typing.Any)))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
    return None


def ours(target: object) -> bool:
    return getattr(target, "__module__", "").startswith(("litlab.", "hydra_plugins.litlab"))


def chain(target: object) -> list:
    """The functions whose arguments a target takes: its __init__, and for ours those of its bases too."""
    if isinstance(target, type) and ours(target):
        return [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
    return [target.__init__] if isinstance(target, type) else [target]


def sources(target: object) -> dict[str, str]:
    """Our source files (relative to src/) that a target's signature is read from -> their SHA-256."""
    files = {inspect.getsourcefile(c) for c in getattr(target, "__mro__", [target]) if ours(c)}
    return {str(Path(f).relative_to(SRC)): digest(Path(f)) for f in sorted(files)}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name).split("+")[0]  # 2.13.0+cpu: the same signatures
        except metadata.PackageNotFoundError:
            found[name] = ""
    return found


def configured_targets() -> list[str]:
    """Every `_target_` named in conf/."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                found.add(node["_target_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in CONF.rglob("*.yaml"):
        walk(OmegaConf.to_container(OmegaConf.load(path)))
    return sorted(found)


def written() -> dict:
    """What `python -m litlab.signatures` writes: the versions, and each target's arguments and sources."""
    targets = {}
    for name in configured_targets():
        target = get_object(name)
        targets[name] = {"arguments": live(target), "sources": sources(target)}
    return {"versions": versions(), "targets": targets}


@cache
def known() -> dict:
    """The written signatures that still hold here: none where torch's or Lightning's version differs."""
    try:
        saved = json.loads(FILE.read_text())
    except (OSError, ValueError):
        return {}
    return saved["targets"] if saved.get("versions") == versions() else {}


def arguments(name: str) -> dict[str, object] | None:
    """A `_target_`'s arguments (encoded annotations; None for **kwargs): written down where they still
    hold, else read live, which imports the target (ImportError and others propagate to the caller)."""
    entry = known().get(name)
    if entry is not None and all(
        (SRC / f).is_file() and digest(SRC / f) == h for f, h in entry["sources"].items()
    ):
        return entry["arguments"]
    return live(get_object(name))


if __name__ == "__main__":
    FILE.write_text(json.dumps(written(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FILE}")
