"""Command line: parse, run, print. The only module that prints."""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from nin_profile.engine.precision import PRECISION_NAMES
from nin_profile.errors import ProfileError

if TYPE_CHECKING:  # the package's modules are imported where they are used: `--help` needs none
    from nin_profile.models import ModelConfig
    from nin_profile.run import ProgressEvent

DEFAULT_MODELS = ("nin", "nin_single_1x1", "nin_gradual_head", "alexnet", "vgg11", "vgg11_narrow")
DEFAULT_OUT = Path("reports/latest")
DEFAULT_STATIC_OUT = Path("reports/latest-static")  # a static run never replaces a measured one
# The model options' defaults (None on the command line, to tell what the user gave); classes:
# the built-in models' own (DEFAULT_CLASSES), a user model's are read from its output.
MODEL_DEFAULTS = {"channels": 1, "classes": 10, "image_size": 224}
PROG = "nin-profile"


class _Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        """With the examples and the models, built only now: listing the models imports torch
        (2 s), which nothing else of the parser needs."""
        self.epilog = _epilog()
        return super().format_help()

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


def positive_ints(text: str) -> tuple[int, ...]:
    """'3,32,64' → (3, 32, 64): positive whole numbers, in the order given."""
    if any(not part.strip() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry; give N1,N2,...")
    return tuple(positive_int(part) for part in text.split(","))


def batch_list(text: str) -> tuple[int, ...]:
    """'32,1,128' → (1, 32, 128): positive whole numbers, each once, in ascending order."""
    from nin_profile.api import ascending_once

    try:
        return ascending_once(positive_ints(text))
    except ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size(text: str) -> int:
    from nin_profile.measure.plan import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value:g}")
    return value


def precision_list(text: str) -> tuple[str, ...]:
    """'fp32,amp-bf16' → ('fp32', 'amp-bf16'); each a known precision, each once."""
    from nin_profile.engine.precision import PRECISION_NAMES

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in PRECISION_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or repr(text)}: choose from {', '.join(PRECISION_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a precision more than once")
    return names


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value:g}")
    return value


EXAMPLES = """\
examples:
  python -m nin_profile                          the six models below, measured here
  python -m nin_profile --static --device cuda   estimate CUDA memory without a GPU
  python -m nin_profile --models nin,alexnet --batch 64 --device cuda
  python -m nin_profile --models torchvision.models:resnet18 --channels 3 --classes 1000
  python -m nin_profile --static --device cuda --memory-budget 8GiB   largest batch for 8 GiB
  python -m nin_profile --static --device cuda --compare-precision --memory-budget 16GiB
                                                 what AMP and half buy: memory, batch, time
  python -m nin_profile --render reports/latest/profile.json          redo report and charts
  python -m nin_profile --static --models vgg11 --parallel fsdp --world-size 1,8,64,1024
  python -m nin_profile --models nin --batch 8 --device cpu --parallel ddp --world-size 2

models (--models):
{models}
  pkg.mod:fn          any torch.nn.Module by import path, called with no arguments
"""


def _epilog() -> str:
    """The examples and every model's name, unwrapped (argparse would break the names)."""
    from nin_profile.models import list_models

    specs = list_models()
    return EXAMPLES.format(models="\n".join(f"  {s.name:<18}  {s.description}" for s in specs))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Parameters, FLOPs and memory of PyTorch models for training and prediction:\n"
        "estimated per layer without a GPU, measured on one.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model names (listed below) or import paths "
        "package.module:callable (default: the six listed below)",
    )
    p.add_argument("--batch", type=positive_int, default=128, help="batch size (default: 128)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to measure, and whose memory to predict; auto = cuda if present",
    )
    p.add_argument("--image-size", type=positive_int, help="square image side (224)")
    p.add_argument("--channels", type=positive_int, help="input channels (1)")
    p.add_argument(
        "--input-shape",
        type=positive_ints,
        metavar="D1,D2,...",
        help="one example's input, for a model of your own that does not take square images "
        "(instead of --channels and --image-size): 3,32,64 for images, 100,40 for 100 steps "
        "of 40 features, 512 for 512 tokens with --token-ids",
    )
    p.add_argument(
        "--token-ids",
        action="store_true",
        help="the input is int64 token ids (below the model's smallest nn.Embedding vocabulary), "
        "--input-shape of them an example: for a model that starts with an embedding",
    )
    p.add_argument(
        "--batch-dim",
        type=int,
        default=0,
        metavar="N",
        help="where the batch goes in the model's input (0: first, the default; 1 for a "
        "time-first RNN model, batch_first=False, that takes (time, batch, features)); with "
        "--input-shape",
    )
    p.add_argument(
        "--classes",
        type=positive_int,
        default=None,
        help="number of classes (default: the model's own: 10 for the built-in models, read "
        "from the output of a model given by import path; one that disagrees is refused)",
    )
    p.add_argument(
        "--optimizer",
        choices=("sgd", "momentum", "adam"),
        default="sgd",
        help="optimizer of the training step; momentum = SGD with momentum 0.9",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_NAMES,
        default="fp32",
        help="fp32; amp-fp16 or amp-bf16: torch.autocast around the forward and the loss, "
        "float32 weights (and a GradScaler for fp16); fp16 or bf16: the model and the input "
        "cast to that dtype (default: fp32)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="put the model and the batch in torch.channels_last",
    )
    p.add_argument(
        "--compare-precision",
        type=precision_list,
        nargs="?",
        const=PRECISION_NAMES,
        metavar="P1,P2,...",
        help="also estimate (and, unless --static, measure) each model in these precisions "
        f"(default: all, {','.join(PRECISION_NAMES)}): memory, time and, with "
        "--memory-budget, the largest batch, compared in the report",
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="estimate only: analysis on meta tensors, no device used",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder for profile.json, layers.csv, report.md and the charts "
        f"(default: {DEFAULT_OUT}, with --static {DEFAULT_STATIC_OUT}; with --render, the "
        "profile's own folder)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="let a static run (or the rendering of a static profile) replace a measured report",
    )
    p.add_argument(
        "--sweep-batch",
        type=batch_list,
        metavar="B1,B2,...",
        help="also estimate (and, unless --static, measure) each of these batch sizes",
    )
    p.add_argument(
        "--max-batch",
        action="store_true",
        help="find the largest batch that fits on the GPU by bisection over real runs",
    )
    p.add_argument(
        "--memory-budget",
        type=size,
        metavar="SIZE",
        help="predict the largest batch that fits SIZE (e.g. 6GiB), no GPU needed: for "
        "--device cuda, a card of SIZE (CUDA's caching allocator simulated, less the CUDA "
        "context); for cpu, the estimated peak within SIZE",
    )
    p.add_argument(
        "--cuda-context",
        type=size,
        metavar="SIZE",
        help="CUDA context size for --memory-budget (default: measured, else assumed)",
    )
    p.add_argument(
        "--cpu-time-budget",
        type=non_negative_float,
        default=120.0,
        metavar="SECONDS",
        help="on the CPU, time for all measurements; larger batches are measured "
        "smaller to fit it (0: no limit; default %(default)s)",
    )
    p.add_argument("--warmup", type=positive_int, default=3, help="warm-up iterations (3)")
    p.add_argument("--iterations", type=positive_int, default=20, help="timed iterations (20)")
    p.add_argument(
        "--compare-peers",
        action="store_true",
        help="set torchinfo's and fvcore's figures beside ours in the report, and say why "
        'they differ (needs the peers extra: pip install "nin-profile[peers]")',
    )
    p.add_argument(
        "--parallel",
        choices=("none", "ddp", "fsdp"),
        default="none",
        help="per-rank memory under DistributedDataParallel or FSDP2 (fully_shard on each "
        "block, then the model), predicted for any world size; --batch is each rank's batch",
    )
    p.add_argument(
        "--world-size",
        type=batch_list,
        metavar="N1,N2,...",
        help="ranks to predict per-rank memory for (with --parallel); measured with real "
        "ranks (gloo on the CPU, NCCL on GPUs) where this machine has a core or GPU for each",
    )
    p.add_argument(
        "--bucket-cap-mb",
        type=positive_float,
        metavar="MB",
        help="DDP's bucket size in MiB (default: DDP's, 25 with a first bucket of 1)",
    )
    p.add_argument(
        "--gradient-as-bucket-view",
        action="store_true",
        help="DDP: gradients are views into its buckets (no separate copy)",
    )
    p.add_argument(
        "--no-reshard-after-forward",
        action="store_true",
        help="FSDP2: keep each block's gathered parameters from its forward to its backward",
    )
    p.add_argument(
        "--fsdp-param-dtype",
        choices=("bf16", "fp16"),
        help="FSDP2's mixed-precision policy (MixedPrecisionPolicy.param_dtype): each block "
        "gathered and computed in this dtype, its inputs cast to it; the shards, the sharded "
        "gradients and the optimizer state stay fp32 (default: none, all fp32)",
    )
    p.add_argument(
        "--fsdp-reduce-dtype",
        choices=("fp32", "bf16", "fp16"),
        help="FSDP2's mixed-precision policy (MixedPrecisionPolicy.reduce_dtype): gradients "
        "reduce-scattered in this dtype (default: FSDP2's, the --fsdp-param-dtype, else fp32)",
    )
    p.add_argument(
        "--no-charts",
        action="store_true",
        help="write report.md without the PNG charts (faster; no matplotlib)",
    )
    p.add_argument(
        "--render",
        type=Path,
        metavar="PROFILE_JSON",
        help="re-render report.md, layers.csv and the charts from a saved profile.json "
        "(into its folder, or --out)",
    )
    p.add_argument("--list-models", action="store_true", help="list the models and exit")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the traceback as well as the one-line message",
    )
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
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the output folder was left as it was", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.list_models:
        return _list_models()
    if args.check_params:
        return _check_params(args.check_params, args)
    if args.render:
        return _render(args.render, args.out or args.render.parent, not args.no_charts, args.force)
    from nin_profile.models import ModelConfig

    names = _model_names(",".join(DEFAULT_MODELS) if args.models is None else args.models)
    other_input = _take_input_shape(args, names)
    model_cfg = ModelConfig(**{k: _given(args, k) or v for k, v in MODEL_DEFAULTS.items()})
    if args.write_params:
        return _write_params(args.write_params, names, model_cfg)
    image = {"channels": model_cfg.channels, "image_size": model_cfg.image_size}
    return _profile(args, names, other_input or image)


def _take_input_shape(args: argparse.Namespace, names: list[str]) -> dict[str, Any] | None:
    """RunConfig's input fields for an --input-shape that is not a square image, checked
    against the models; None without one, and for a square image, which becomes --channels
    and --image-size (what the built-in models are built for)."""
    from nin_profile.api import input_fields, input_spec

    if args.input_shape is None:
        if args.token_ids:
            raise ProfileError("--token-ids needs --input-shape LENGTH (tokens an example)")
        if args.batch_dim:
            raise ProfileError("--batch-dim needs --input-shape (one example's sizes)")
        return None
    if args.channels is not None or args.image_size is not None:
        raise ProfileError(
            "--input-shape gives the whole example: leave out --channels and --image-size"
        )
    inputs = input_spec(args.input_shape, args.token_ids, args.batch_dim, "--batch-dim")
    fields = input_fields(inputs, names, args.channels_last)
    if "input_shape" in fields:
        return fields
    args.channels, args.image_size = fields["channels"], fields["image_size"]  # a square image
    return None


def _given(args: argparse.Namespace, name: str) -> int | None:
    """A model option as the user gave it, None where it was left to its default."""
    value = getattr(args, name)
    return int(value) if value is not None else None


def _render(path: Path, out: Path, charts: bool, force: bool) -> int:
    from nin_profile.files import check_output_folder, read_profile, write_output_folder
    from nin_profile.report import chart_renderer, report_files

    profile = read_profile(path)
    replaces_measured = force or not profile.config.static
    check_output_folder(out, replaces_measured)
    with chart_renderer(charts) as render_charts:
        files = report_files(profile, render_charts(profile, None))
    write_output_folder(out, files, replaces_measured)
    print(f"rendered {path} into {out}/: {', '.join(files)}")
    return 0


def _list_models() -> int:
    from nin_profile.models import list_models

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
    from nin_profile.api import model_names

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ProfileError("--models is empty; give at least one model name (see --list-models)")
    return list(model_names(names))


def _check_params(path: Path, args: argparse.Namespace) -> int:
    """Compare with the counts in `path`, for the models and the configuration it records:
    --models picks some of its models; a model option that differs from the file's is refused
    (the counts depend on it)."""
    from nin_profile.files import read_json
    from nin_profile.golden import params_drift
    from nin_profile.models import is_built_in

    expected = read_json(path, "parameter-count file")
    if not isinstance(expected, dict) or "models" not in expected:
        raise ProfileError(
            f"{path} is not a parameter-count file (no 'models'); "
            f"write one with --write-params {path}"
        )
    if args.models is not None:
        wanted = _model_names(args.models)
        missing = [n for n in wanted if n not in expected["models"]]
        if missing:
            raise ProfileError(
                f"{path} has no counts for {', '.join(missing)}; it has "
                f"{', '.join(expected['models'])}"
            )
        expected = {**expected, "models": {n: expected["models"][n] for n in wanted}}
    # the built-in models are built for the file's configuration; a model given by import path
    # is built by calling it bare, whatever the options say
    if any(is_built_in(name) for name in expected["models"]):
        _check_recorded_options(path, expected.get("config", {}), args)
    drift = params_drift(expected)
    for line in drift:
        print(line)
    if drift:
        print(f"parameter counts drifted from {path}: {len(drift)} difference(s)")
        return 1
    print(f"parameter counts match {path} ({len(expected['models'])} models)")
    return 0


def _check_recorded_options(path: Path, config: dict[str, int], args: argparse.Namespace) -> None:
    """Refuse a model option given with a value other than the one the file was written with."""
    recorded = {**MODEL_DEFAULTS, **config}
    for option in MODEL_DEFAULTS:
        given = _given(args, option)
        if given is not None and given != recorded[option]:
            flag = "--" + option.replace("_", "-")
            raise ProfileError(
                f"{path} was written with {flag} {recorded[option]}, not {given}; --check-params "
                f"checks the configuration the file records (write another with {flag} {given} "
                "--write-params FILE)"
            )


def _write_params(path: Path, names: list[str], cfg: ModelConfig) -> int:
    from nin_profile.files import write_json
    from nin_profile.golden import params_document

    if path.is_dir():
        raise ProfileError(f"--write-params {path} is a folder; give a file name")

    write_json(path, params_document(names, cfg))
    print(f"wrote parameter counts of {', '.join(names)} to {path}")
    return 0


def _profile(args: argparse.Namespace, names: list[str], inputs: dict[str, Any]) -> int:
    """Run and write the profile; `inputs`: RunConfig's input fields."""
    from nin_profile.api import check_device, check_parallel
    from nin_profile.files import check_output_folder

    device = check_device(args.device, args.static, args.max_batch)
    per_rank = check_parallel(
        args.parallel,
        args.world_size or (),
        args.bucket_cap_mb,
        args.gradient_as_bucket_view,
        not args.no_reshard_after_forward,
        None if args.static else device,
        (args.precision, *(args.compare_precision or ())),
        args.fsdp_param_dtype,
        args.fsdp_reduce_dtype,
    )
    if args.compare_peers:
        from nin_profile.peers import import_peers

        import_peers()  # missing peers: one line now, not after the analysis
    out = args.out or (DEFAULT_STATIC_OUT if args.static else DEFAULT_OUT)
    replaces_measured = args.force or not args.static
    check_output_folder(out, replaces_measured)
    from rich.console import Console

    from nin_profile.api import run
    from nin_profile.files import write_output_folder
    from nin_profile.render.terminal import notes_lines, tables
    from nin_profile.report import chart_renderer, report_files
    from nin_profile.results import RunConfig
    from nin_profile.run import ProgressEvent

    config = RunConfig(
        models=tuple(names),
        batch=args.batch,
        device=device,
        **inputs,
        classes=args.classes,  # None: each model's own, read from its output
        optimizer=args.optimizer,
        precision=args.precision,
        channels_last=args.channels_last,
        compare_precisions=args.compare_precision or (),
        static=args.static,
        sweep_batches=args.sweep_batch or (),
        max_batch=args.max_batch,
        memory_budget=args.memory_budget,
        cuda_context=args.cuda_context,
        cpu_time_budget=args.cpu_time_budget,
        warmup=args.warmup,
        iterations=args.iterations,
        compare_peers=args.compare_peers,
        **per_rank,
    )
    with _progress() as on_progress, ExitStack() as stack:
        charts = chart_renderer(not args.no_charts)
        # A static run starts the chart workers now, beside the analysis; a measured run only
        # after it, so that they never share the CPU with a timed step.
        render_charts = stack.enter_context(charts) if args.static else None
        profile = run(config, on_progress)
        render_charts = render_charts or stack.enter_context(charts)

        def on_chart(done: int, total: int) -> None:
            on_progress(ProgressEvent("report", "charts rendered", done, total))

        files = report_files(profile, render_charts(profile, on_chart))
        write_output_folder(out, files, replaces_measured)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: the tables' own width, no squeezing
        console = Console(width=100)
    for table in tables(profile):
        console.print(table)
    for line in notes_lines(profile):
        console.print(line, highlight=False)
    if args.memory_budget and args.device == "auto" and device != "cuda":
        console.print(
            f"--memory-budget: predicted for the {device.upper()} (--device auto found no CUDA "
            "here); for a GPU card, add --static --device cuda",
            highlight=False,
        )
    console.print(f"wrote {out}/: {', '.join(files)}")
    return 0


@contextmanager
def _progress() -> Iterator[Callable[[ProgressEvent], None]]:
    """A progress bar on stderr, fed by the run's events; gone when the run ends."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    console = Console(stderr=True)
    # Off a terminal (a log, a pipe, a test) a live bar only leaves a blank line behind.
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as (
        progress
    ):
        task = progress.add_task("starting", total=None)

        def show(event: ProgressEvent) -> None:
            progress.update(
                task,
                description=f"{event.task} · {event.stage}",
                completed=event.done,
                total=event.total,
            )

        yield show


if __name__ == "__main__":
    raise SystemExit(main())
