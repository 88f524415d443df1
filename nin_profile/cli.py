"""Command line: parse, run, print. The only module that prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nin_profile.errors import DeviceUnavailable, ProfileError, UnknownModel
from nin_profile.models import ModelConfig, list_models

DEFAULT_MODELS = ("nin", "nin_single_1x1", "nin_gradual_head", "alexnet", "vgg11", "vgg11_narrow")
DEFAULT_OUT = Path("reports/latest")
PROG = "nin-profile"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on bad arguments, exit 2 (argparse would print the usage block first)."""
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Parameters, FLOPs and memory of CNNs for training and prediction: "
        "estimated per layer without a GPU, measured on one.",
    )
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated model names (see --list-models) or import paths "
        "package.module:callable (default: %(default)s)",
    )
    p.add_argument("--batch", type=positive_int, default=128, help="batch size (default: 128)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to measure, and whose memory to predict; auto = cuda if present",
    )
    p.add_argument("--image-size", type=positive_int, default=224, help="square image side (224)")
    p.add_argument("--channels", type=positive_int, default=1, help="input channels (1)")
    p.add_argument("--classes", type=positive_int, default=10, help="number of classes (10)")
    p.add_argument(
        "--optimizer",
        choices=("sgd", "momentum", "adam"),
        default="sgd",
        help="optimizer of the training step; momentum = SGD with momentum 0.9",
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="estimate only: analysis on meta tensors, no device used",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder for profile.json, layers.csv, report.md (%(default)s)",
    )
    p.add_argument("--list-models", action="store_true", help="list the models and exit")
    p.add_argument(
        "--check-params",
        type=Path,
        metavar="FILE",
        help="compare parameter counts with FILE; exit 1 and list differences on drift",
    )
    p.add_argument(
        "--write-params",
        type=Path,
        metavar="FILE",
        help="write the parameter counts of --models to FILE (for --check-params)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ProfileError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the output folder was left as it was", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.list_models:
        return _list_models()
    if args.check_params:
        return _check_params(args.check_params)
    names = _model_names(args.models)
    model_cfg = ModelConfig(
        channels=args.channels, classes=args.classes, image_size=args.image_size
    )
    if args.write_params:
        return _write_params(args.write_params, names, model_cfg)
    return _profile(args, names)


def _list_models() -> int:
    specs = list_models()
    width = max(len(s.name) for s in specs)
    for spec in specs:
        print(f"{spec.name:<{width}}  {spec.description}")
    print(
        f"{'pkg.mod:fn':<{width}}  any torch.nn.Module by import path, "
        "e.g. torchvision.models:resnet18"
    )
    return 0


def _model_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ProfileError("--models is empty; give at least one model name (see --list-models)")
    known = [s.name for s in list_models()]
    for name in names:
        if ":" not in name and name not in known:
            raise UnknownModel(name, known)
    return names


def _check_params(path: Path) -> int:
    from nin_profile.files import read_json
    from nin_profile.golden import params_drift

    expected = read_json(path, "parameter-count file")
    if not isinstance(expected, dict) or "models" not in expected:
        raise ProfileError(
            f"{path} is not a parameter-count file (no 'models'); "
            f"write one with --write-params {path}"
        )
    drift = params_drift(expected)
    for line in drift:
        print(line)
    if drift:
        print(f"parameter counts drifted from {path}: {len(drift)} difference(s)")
        return 1
    print(f"parameter counts match {path} ({len(expected['models'])} models)")
    return 0


def _write_params(path: Path, names: list[str], cfg: ModelConfig) -> int:
    from nin_profile.files import write_json
    from nin_profile.golden import params_document

    write_json(path, params_document(names, cfg))
    print(f"wrote parameter counts of {', '.join(names)} to {path}")
    return 0


def _profile(args: argparse.Namespace, names: list[str]) -> int:
    from nin_profile.environment import cuda_available, resolve_device

    device = resolve_device(args.device)
    if device == "cuda" and not args.static and not cuda_available():
        raise DeviceUnavailable(
            "--device cuda asks for a measurement, but CUDA is not available here; "
            "use --device cpu to measure on the CPU, or --static --device cuda to predict "
            "CUDA memory without a GPU"
        )
    from rich.console import Console

    from nin_profile.files import write_output_folder
    from nin_profile.render.terminal import summary_table
    from nin_profile.report import report_files
    from nin_profile.results import RunConfig
    from nin_profile.run import run_profile

    config = RunConfig(
        models=tuple(names),
        batch=args.batch,
        device=device,
        image_size=args.image_size,
        channels=args.channels,
        classes=args.classes,
        optimizer=args.optimizer,
        static=args.static,
    )
    profile = run_profile(config)
    files = report_files(profile)
    write_output_folder(args.out, files)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: no reason to truncate at 80 columns
        console = Console(width=120)
    console.print(summary_table(profile))
    console.print(f"wrote {args.out}/: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
