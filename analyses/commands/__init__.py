"""What every `pythia-interp` subcommand shares: model and prompt arguments, checks before work, provenance.

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_model_arguments(parser); _ = add_prompt_arguments(parser)
    >>> args = parser.parse_args(["--prompt", "Hello", "--dtype", "bf16"])
    >>> args.model, args.dtype, read_prompts(args)
    ('toy', 'bf16', ['Hello'])

A command module (e.g. `analyses.attention.command`) defines `add_parser(subparsers)`; its
`run(args)` calls `prepare(args, FILES)` first (every check that needs no model), then loads,
calls an analysis and saves.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

from interp.errors import InputError, InterpError
from interp.options import DTYPES as DTYPE_NAMES

DTYPES = tuple(DTYPE_NAMES)  # the strings interp.load takes


class OutputPathError(InterpError, OSError):
    """An output path that cannot be written: a file in the way, no permission, a read-only place."""

    def __str__(self) -> str:  # OSError would add an errno prefix
        return str(self.args[0])


class PromptsFileError(InputError):
    """A --prompts-file that is missing, unreadable or empty."""


# ---- arguments ----------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--revision`, `--device` and `--dtype`, the same in every subcommand."""
    parser.add_argument("--model", default="toy", help="name or path interp.load takes (default: toy)")
    parser.add_argument("--revision", default=None, help="checkpoint, e.g. step1000 (default: final)")
    add_device_arguments(parser)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`: where and in which dtype the weights load."""
    parser.add_argument("--device", default=None, type=device_argument, help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="weights' dtype (default: float32)")


def add_prompt_arguments(parser: argparse.ArgumentParser, *, required: bool = True,
                         help: str = "the text to analyse"):
    """`--prompt TEXT` or `--prompts-file FILE` (one prompt per line); returns their exclusive group."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--prompt", type=prompt_text, default=None, help=help)
    group.add_argument("--prompts-file", type=Path, default=None, metavar="FILE",
                       help="a UTF-8 file with one prompt per line (blank lines skipped), instead of --prompt")
    return group


def add_output_arguments(parser: argparse.ArgumentParser, *, png: bool = True, default: Path | None = None) -> None:
    """`--out FOLDER` (created if missing), and `--no-png` for a command that draws a PNG."""
    where = f" (default: {default}/)" if default is not None else ""
    parser.add_argument("--out", required=default is None, default=default, type=Path,
                        help=f"folder to write into, created if missing{where}")
    if png:
        parser.add_argument("--no-png", action="store_true", help="skip the PNG, the one file that needs a browser")


def prompt_text(text: str) -> str:
    """The type of a prompt argument: any text but an empty one (refused while parsing, with the fix)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty prompt: give some text, e.g. 'The cat sat on "
                                         "the mat', or --prompts-file FILE.")
    return text


def count_argument(least: int):
    """The type of a count argument: a whole number >= least (refused while parsing, naming the fix)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= {least}.")
        return value

    return parse


def device_argument(text: str) -> str:
    """A device this machine has (checked as interp.load checks it), or an argparse error naming the choices."""
    from interp.options import device_of

    try:
        device_of(text)
    except InterpError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# ---- checks before any work ---------------------------------------------------------------------


def prepare(args: argparse.Namespace, files: tuple[str, ...]) -> tuple[Path, list[str]]:
    """(the output folder, the prompts) once every check that needs no model has passed.

    In order: `--out` and the `files` written there, the PNG renderer (when a PNG is among `files`
    and --no-png is not given), `--model` and `--revision`, the prompts. So bad input costs nothing.
    """
    out = check_output_dir(args.out, files)
    if any(name.endswith(".png") for name in files):
        check_png_renderer(args.no_png)
    check_model(args.model, args.revision)
    return out, read_prompts(args)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts given: [--prompt], the non-blank lines of --prompts-file, or [] when neither was.

    >>> read_prompts(argparse.Namespace(prompt=None, prompts_file=Path("/nonexistent.txt")))
    Traceback (most recent call last):
    ...
    analyses.commands.PromptsFileError: --prompts-file /nonexistent.txt: no such file. Pass an existing ...
    """
    if args.prompts_file is not None:
        return read_lines(args.prompts_file, "--prompts-file", "or use --prompt TEXT")
    return [args.prompt] if args.prompt is not None else []


def read_lines(path: Path, option: str, other: str) -> list[str]:
    """The non-blank lines of a UTF-8 file given as `option`; `other` is the alternative the fix names."""
    fix = f"Pass an existing UTF-8 file with one prompt per line, {other}."
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PromptsFileError(f"{option} {path}: no such file. {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PromptsFileError(f"{option} {path}: cannot be read ({err}). {fix}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise PromptsFileError(f"{option} {path} holds no prompt (every line is blank). {fix}")
    return prompts


def check_model(name: str, revision: str | None) -> None:
    """Refuse an unknown model name or revision as interp.load would, reading no weight.

    >>> check_model("toy", "step7")
    Traceback (most recent call last):
    ...
    interp.errors.UnknownRevisionError: 'step7' is not a checkpoint of 'toy-2l'. Nearest saved steps: step4, step8.
    """
    from interp.loading import locate  # the name and revision checks interp.load makes first

    with warnings.catch_warnings():  # interp.load warns again, where it matters
        warnings.simplefilter("ignore")
        locate(name, revision)


def load_model(args: argparse.Namespace):
    """`interp.load` with the model arguments every subcommand takes."""
    import interp

    return interp.load(args.model, revision=args.revision, dtype=args.dtype, device=args.device)


# ---- output -------------------------------------------------------------------------------------


def check_output_dir(out: Path, files: tuple[str, ...] = ()) -> Path:
    """Make sure `out` is (or can become) a writable folder and `files` can be written in it.

    >>> check_output_dir(Path(tempfile.mkdtemp()) / "out", ("attention.html",)).is_dir()
    True

    Called before any work, so a bad path costs nothing. Creates the folder (and parents).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out} is a file, not a folder: pass a folder path (it is created "
                              f"if missing), e.g. --out {out}.d")
    ancestor = next(p for p in (out, *out.parents) if p.exists())
    if not ancestor.is_dir():
        raise OutputPathError(f"--out {out}: {ancestor} is a file, so no folder can be made below it. "
                              "Pass a path under an existing folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OutputPathError(f"--out {out} cannot be written ({err.strerror or err}): pass a folder you can "
                              "write to, or fix its permissions.") from None
    for name in files:
        _check_file(out / name)
    return out


def _check_file(path: Path) -> None:
    """An output file that exists must be a writable file (it is overwritten)."""
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder, where this command writes a file: move or rename it, "
                              "or pass another --out.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{path} exists and is read-only: make it writable (chmod u+w), or pass "
                              "another --out.")


def check_png_renderer(no_png: bool) -> None:
    """Refuse before any work when a PNG is asked for and cannot be rendered here."""
    if no_png:
        return
    from analyses.export import RendererNotFoundError, require_renderer

    try:
        require_renderer()
    except RendererNotFoundError as err:
        raise RendererNotFoundError(f"{err} Or pass --no-png to skip the PNG.") from None


def print_written(paths: list[Path]) -> None:
    """A line per file written: its path and size."""
    for path in paths:
        size = path.stat().st_size
        print(f"wrote {path} ({f'{size} bytes' if size < 1024 else f'{size / 1024:.0f} KiB'})")


# ---- provenance ---------------------------------------------------------------------------------


def provenance_record(prov, prompts: str | list[str], str_tokens: list[str] | list[list[str]], device) -> dict:
    """What every command's JSON starts with: model, revision, dtype, device, prompts and their tokens (a row each)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if str_tokens and isinstance(str_tokens[0], str):
        str_tokens = [str_tokens]
    rows = [[t for t, m in zip(ids, mask, strict=True) if m]
            for ids, mask in zip(prov.tokens, prov.attention_mask, strict=True)]
    return {
        "model": prov.model,
        "revision": prov.revision,
        "dtype": prov.dtype,
        "device": str(device),
        "prompts": prompts,
        "tokens": rows,
        "str_tokens": str_tokens,
        "n_layers": prov.n_layers,
    }

