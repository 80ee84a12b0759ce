"""``ilre calibrate``: measure every layer's recall and write the model's profile."""

from __future__ import annotations

import argparse
import sys

from ..errors import ILReError
from .arguments import MIN_CALIBRATION_LENGTH, layers, lengths, positive, profile_path, tolerance
from .model import model_errors
from .output import note, shows_progress, summary
from .parser import EMBEDDED, add_command, add_device, add_model, add_quiet
from .preflight import preflight


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = add_command(
        commands,
        "calibrate",
        "choose the retrieval layer and pooling kernels of a model",
        "Measure every layer's recall on retrieval tasks and write the model's\n"
        "profile, which ILRe.from_pretrained then uses.",
    )
    add_model(command)
    command.add_argument(
        "--lengths",
        default="4k,8k",
        type=lengths,
        help=f"context lengths in model tokens, each >= {MIN_CALIBRATION_LENGTH} "
        "and within the model's positions (e.g. 4k,8k,16k)",
    )
    command.add_argument("--samples", type=positive, default=2, help="tasks per family and length")
    command.add_argument(
        "--families", help="task families (default: the RULER needle variants + paraphrase)"
    )
    command.add_argument(
        "--layers", type=layers, help="candidate layers, e.g. 2-8 or 2,4,6 (default: all)"
    )
    command.add_argument(
        "--tolerance",
        type=tolerance,
        default=0.02,
        help="how far below the best recall the chosen layer may be, in [0, 1]",
    )
    add_device(command)
    command.add_argument(
        "--out",
        type=profile_path,
        help="profile file (default: where from_pretrained finds it)",
    )
    add_quiet(command)


def run(args: argparse.Namespace) -> int:
    preflight(args.model, args.device)
    from ..calibration import CALIBRATION_FAMILIES, CalibrationSettings, calibrate
    from ..loading import cache_root, load_config, resolve_model
    from ..profiles import user_profile_path

    settings = CalibrationSettings(
        lengths=args.lengths,
        samples=args.samples,
        families=tuple(args.families.split(",")) if args.families else CALIBRATION_FAMILIES,
        layers=args.layers,
        tolerance=args.tolerance,
    )
    note(args, f"reading the config of {args.model or EMBEDDED} ...")
    with model_errors(args.model):
        config = load_config(resolve_model(args.model))
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max(settings.lengths) > positions:
        raise ILReError(
            f"--lengths {max(settings.lengths)} is longer than the {positions} positions "
            f"{args.model or EMBEDDED} was trained on"
        )
    # Only file errors here: the config loaded above, so what is left to fail is reading the
    # weights, and a ValueError from the calibration itself would be a bug.
    with model_errors(args.model, (OSError,)):
        profile = calibrate(args.model, settings, device=args.device, progress=shows_progress(args))
    path = args.out or user_profile_path(cache_root(), profile.model_name)
    try:
        path = profile.save(path)
    except OSError as error:
        raise ILReError(f"cannot write the profile to {path}: {error.strerror or error}") from error
    kernels = ",".join(str(k) for k in profile.kernel_sizes)
    print(f"{'layer':>5}  best kernels  recall")
    for layer, detail in profile.details.items():
        mark = "  <- l_R" if int(layer) == profile.layer else ""
        recall = profile.recall[layer][detail["kernels"]]
        print(f"{layer:>5}  {detail['kernels']:<12}  {recall:.3f}{mark}")
    sys.stdout.flush()
    summary(
        f"{profile.model_name}: layer {profile.layer}, kernels {kernels}, "
        f"hybrid weight {profile.hybrid_weight:g} over passages of "
        f"{profile.hybrid_passage_tokens} tokens ({profile.seconds:.0f} s); "
        f"profile written to {path}"
    )
    return 0
