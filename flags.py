"""Command-line flags built from a dataclass: one source of truth for each setting's default, meaning, choices
and allowed range, shown by --help and checked before any work starts. (nanoGPT also keeps its command line in
a file of its own, configurator.py, but that file exec()s overrides into the script's globals; here every
setting is a typed dataclass field, checked before use.)

    @dataclass
    class Config:
        lr: float = option(1e-6, "learning rate", positive=True)
        seed: int = option(0, "seeds python, numpy and torch", minimum=0, maximum=2**32 - 1)

    config = parse(Config, sys.argv[1:], "What the script does.")    # --lr 3e-6; --help lists every flag

This module imports no other project file.
"""

import argparse
import dataclasses
import math


def option(default, meaning: str, choices=None, minimum=None, maximum=None, positive=False, parse=None):
    """A dataclass field and everything --help says about it. `parse`: text -> value, for a flag its type alone
    cannot read."""
    return dataclasses.field(default=default, metadata=dict(help=meaning, choices=choices, minimum=minimum,
                                                            maximum=maximum, positive=positive, parse=parse))


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def parse(config_class, argv: list[str] | None, description: str, epilog: str | None = None):
    """Command line -> an instance of config_class. Values out of range are refused in one sentence, and so is an
    empty value for a text flag whose default is not empty (`--out ''` would mean the current directory)."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        meaning = meta["help"].replace("%", "%%")  # argparse %-formats help texts
        meaning += f" [>= {meta['minimum']}]" if meta["minimum"] is not None else ""
        meaning += f" [<= {meta['maximum']}]" if meta["maximum"] is not None else ""
        meaning += " [> 0]" if meta["positive"] else ""
        if f.type is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, default=f.default,
                                help=meaning)
        else:
            parser.add_argument(flag_name(f.name), type=meta["parse"] or f.type, default=f.default,
                                choices=meta["choices"], help=meaning)
    config = config_class(**vars(parser.parse_args(argv)))
    problems = []
    for f in dataclasses.fields(config_class):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{flag_name(f.name)} must be a finite number")
        elif f.metadata["minimum"] is not None and value < f.metadata["minimum"]:
            problems.append(f"{flag_name(f.name)} must be at least {f.metadata['minimum']}")
        elif f.metadata["maximum"] is not None and value > f.metadata["maximum"]:
            problems.append(f"{flag_name(f.name)} must be at most {f.metadata['maximum']}")
        elif isinstance(value, str) and f.default and not value.strip():
            problems.append(f"{flag_name(f.name)} must not be empty")
        elif f.metadata["positive"] and not value > 0:
            problems.append(f"{flag_name(f.name)} must be greater than 0")
    if problems:
        raise SystemExit("error: " + "; ".join(problems) + ".")
    return config


def steps_or_never(text: str) -> int:
    """A number of steps, or 'never' (= 0): for a period that may be switched off."""
    return 0 if text == "never" else int(text)
