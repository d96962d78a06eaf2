"""Helpers shared by the command modules: the ``--weights`` options, loading them, and the command line to record."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from poster_fer.errors import UserError

__all__ = ["add_backend_argument", "add_device_argument", "add_weights_arguments", "command_line", "load_weights",
           "output_dir", "output_file",
           "weights_path"]


def add_device_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, the same default and words in every command: auto, the GPU when PyTorch sees one."""
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (default auto: the GPU when PyTorch sees one, else the CPU)")


def add_backend_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--backend`` for the commands that label faces (predict, serve): the same choices and default."""
    from poster_fer.constants import BACKENDS  # imports nothing: --help stays light

    p.add_argument("--backend", choices=(*BACKENDS, "onnx"), default="auto",
                   help="auto (default): PyTorch when installed, else ONNX Runtime with the model's model.onnx; "
                   ".onnx files always run in ONNX Runtime")


def add_weights_arguments(p: argparse.ArgumentParser, onnx: bool = False) -> None:
    """``--weights`` plus what an official .pth needs, declared once for every command (``onnx``: the command
    also runs ``.onnx`` files). The rule that reads them is :func:`poster_fer.hub.is_official_checkpoint`."""
    from poster_fer.constants import DEFAULT_MODEL, OFFICIAL_DEFAULT_MODEL

    p.add_argument("--weights", default=None, metavar="CKPT",
                   help="a shipped model's name (e.g. poster_v1_mfn_image.ferplus; `poster-fer info --list`), a "
                   "poster-fer model folder / .safetensors" + (", a .onnx file" if onnx else "") + ", or an official "
                   f".pth checkpoint (see --model); default: the shipped {DEFAULT_MODEL}")
    p.add_argument("--model", default=None,
                   help=f"architecture of an official .pth checkpoint (poster_v1, poster_v2, ...; default "
                   f"{OFFICIAL_DEFAULT_MODEL}); poster-fer models record their own")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of an official checkpoint (default: from its head)")
    p.add_argument("--channel-order", choices=("RGB", "BGR"), default=None,
                   help="input channel order of an official checkpoint (default: what its code used)")
    p.add_argument("--operating-point", default=None, metavar="NAME",
                   help="another of the calibrations the weights record, e.g. 'balanced' on the shipped default: "
                   "fewer faces called neutral and better rare-class recall, for some accuracy (`poster-fer info "
                   "NAME` lists a model's points with their validation numbers; default: the record's default)")


def weights_path(args: argparse.Namespace) -> Path:
    """``--weights`` (a path or a shipped model's name), or the shipped default model when it is absent
    (recorded back into ``args`` as a path)."""
    from poster_fer.hub import resolve_weights

    path = resolve_weights(args.weights)
    args.weights = str(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    return path


def check_operating_point(args: argparse.Namespace) -> None:
    """Refuse an unknown ``--operating-point`` before anything loads, wherever the weights' record is a plain
    ``meta.json`` (shipped and saved models); other checkpoints are checked when they open, as before."""
    import json

    from poster_fer.hub import resolve_weights
    from poster_fer.probabilities import with_operating_point

    point = getattr(args, "operating_point", None)
    if point is None:
        return
    path = resolve_weights(getattr(args, "weights", None))
    side = (path if path.is_dir() else path.parent) / "meta.json"
    if not side.is_file():
        return
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the loader says what is wrong with the record
    try:
        with_operating_point(meta, point)
    except ValueError as err:
        raise UserError(f"--operating-point: {path}: {err}") from None


def official_options(args: argparse.Namespace) -> Any:
    """``--model``, ``--num-classes``, ``--channel-order`` as one :class:`poster_fer.hub.OfficialOptions` (None
    when none is given)."""
    from poster_fer.hub import OfficialOptions

    given = {k: getattr(args, k, None) for k in ("model", "num_classes", "channel_order")}
    given = {k: v for k, v in given.items() if v is not None}
    return OfficialOptions(**given) if given else None


def load_weights(args: argparse.Namespace, device: Any = "cpu") -> Any:
    """``--weights`` opened by :func:`poster_fer.hub.open_checkpoint` (ours or an official checkpoint), with
    ``--operating-point`` applied."""
    from poster_fer.hub import open_checkpoint

    path = weights_path(args)
    try:
        model = open_checkpoint(path, official_options(args), device=device)
    except ValueError as err:
        raise UserError(str(err)) from None
    except KeyError as e:
        raise UserError(str(e).strip("'\"")) from None
    point = getattr(args, "operating_point", None)
    if point is not None:
        from poster_fer.card import ModelCard
        from poster_fer.probabilities import with_operating_point

        try:
            model.card = ModelCard.from_meta(with_operating_point(model.card.to_meta(), point))
        except ValueError as err:
            raise UserError(f"{path}: {err}") from None
    return model


def command_line(args: argparse.Namespace, name: str, positional: tuple[str, ...] = ()) -> str:
    """An equivalent ``poster-fer`` command for the record (rebuilt from the parsed options)."""
    parts = ["poster-fer", name]
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None or value is False or value == []:
            continue
        if key in positional:
            parts += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs with YAML-typed values (``depth=4``, ``dims=[256,128,64]``)."""
    import yaml


    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: value is not valid YAML ({e.problem})") from None
    return out


def output_dir(path: str | Path, flag: str) -> Path:
    """Create the folder an option names before any work starts, so a bad path fails in a second with one line
    (a file in the way, no permission) rather than after the model has run."""

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {p}: exists and is not a folder") from None
    except OSError as err:
        raise UserError(f"{flag} {p}: cannot create this folder ({err.strerror or err})") from None
    return p


def output_file(path: str | Path, flag: str) -> Path:
    """Check the file an option names can be written (not a folder; its folder created) before any work starts."""

    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a folder; give a file name")
    output_dir(p.parent, flag)
    return p
