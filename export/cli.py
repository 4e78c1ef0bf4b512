"""``danet-export``: a thin command line over :func:`export.onnx_export.export_onnx`.

    danet-export CHECKPOINT --output model.onnx [--logits] [--fp16] [--int8] [--triton-repo DIR]

Progress goes to stderr, the summary to stdout (``--json`` for a machine-readable one). Bad input
(missing file, not a checkpoint, unknown format, a label set of the wrong size, an unwritable
output path, ...) ends with a one-paragraph message and exit status 2; a graph that fails
verification ends with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

EXIT_VERIFICATION = 1
#: What the export extra installs (``make tools``); the runtime-only environment of ``make run`` lacks them.
EXPORT_MODULES = frozenset({"torch", "onnx", "onnxscript", "safetensors"})
EXIT_INPUT = 2
#: The official DANet evaluation of its released Cityscapes model (base size 2048, crop 768).
OFFICIAL_CITYSCAPES_EVAL = (2048, 768)


def _multi_grid(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 4,8,16, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dilations such as 4,8,16, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 1024x2048, got {text!r}") from None
    if height < 8 or width < 8:
        raise argparse.ArgumentTypeError(f"sizes must be at least 8x8, got {text!r}")
    return height, width


def _eval_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels such as 768, got {text!r}") from None
    if not 8 <= value <= 8192:
        raise argparse.ArgumentTypeError(f"expected 8 to 8192 pixels, got {value}")
    return value


def eval_defaults(args: argparse.Namespace, source_format: str) -> tuple[int | None, int | None]:
    """--eval-base-size / --eval-crop-size, else the official Cityscapes evaluation's for an official
    checkpoint exported with --classes cityscapes, else none (the server then uses its own defaults)."""
    base, crop = args.eval_base_size, args.eval_crop_size
    if source_format == "official" and str(args.classes or "").lower() == "cityscapes":
        base = base if base is not None else OFFICIAL_CITYSCAPES_EVAL[0]
        crop = crop if crop is not None else OFFICIAL_CITYSCAPES_EVAL[1]
    return base, crop


def _fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1] or a percentage, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danet-export",
        description="Export a DANet checkpoint (official, MMSegmentation or danet-serve .safetensors) "
        "to a verified, self-describing ONNX file: uint8 image in, labels/confidence (/logits) out.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint file (.pth, .pth.tar, .safetensors)")
    parser.add_argument(
        "-o", "--output", type=Path, help="ONNX file to write (default: CHECKPOINT with .onnx)"
    )
    parser.add_argument("--logits", action="store_true", help="add the float32 logits output [N, C, H, W]")
    parser.add_argument(
        "--output-stride", type=int, choices=(8, 16), help="backbone output stride (default 8)"
    )
    parser.add_argument(
        "--multi-grid", type=_multi_grid, metavar="A,B,C", help="layer4 dilations, e.g. 4,8,16"
    )
    parser.add_argument(
        "--classes", metavar="NAME|FILE", help="label set name (cityscapes, ade20k, ...) or file"
    )
    parser.add_argument("--name", help="model name in the metadata and Triton (default: output file stem)")
    parser.add_argument("--preferred-size", type=_size, metavar="HxW", help="preferred inference size")
    parser.add_argument(
        "--eval-base-size",
        type=_eval_size,
        metavar="N",
        help="default base size of the server's tta=official|mmseg (official Cityscapes checkpoint: 2048)",
    )
    parser.add_argument(
        "--eval-crop-size",
        type=_eval_size,
        metavar="N",
        help="default sliding-window crop of tta=official|mmseg (official Cityscapes checkpoint: 768)",
    )
    parser.add_argument("--fp16", action="store_true", help="also write <stem>.fp16.onnx (GPU providers)")
    parser.add_argument("--int8", action="store_true", help="also write <stem>.int8.onnx (static QDQ, CPU)")
    parser.add_argument(
        "--calibration", type=Path, metavar="DIR", help="int8 calibration images (default: generated scenes)"
    )
    parser.add_argument(
        "--calibration-count", type=int, default=16, metavar="N", help="calibration images (default 16)"
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare with PyTorch (default on)",
    )
    parser.add_argument(
        "--atol",
        type=float,
        help="expert override: max |ONNX - float64 PyTorch| logit difference (default: relative to the "
        "float32 noise floor, see export/README.md)",
    )
    parser.add_argument(
        "--min-agreement",
        type=_fraction,
        help="expert override: argmax agreement with float64 PyTorch (default: float32's agreement - 0.1%%)",
    )
    parser.add_argument(
        "--fp16-min-agreement", type=_fraction, default=0.99, help="fp16 vs fp32 (default 99%%)"
    )
    parser.add_argument(
        "--int8-min-agreement", type=_fraction, default=0.95, help="int8 vs fp32 (default 95%%)"
    )
    parser.add_argument(
        "--attention",
        choices=("scan", "fused"),
        default="scan",
        help="position attention in the graph: scan = exact chunked Scan, bounded memory (default; "
        "measured best on CPU); fused = one com.microsoft.MultiHeadAttention node (GPU providers)",
    )
    parser.add_argument(
        "--triton-repo", type=Path, metavar="DIR", help="also write a Triton/KServe model repository"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


class _Progress:
    """``[i/n] message ... done (1.2 s)`` lines on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started: float | None = None

    def __call__(self, step: int, total: int, message: str) -> None:
        self.close()
        self.started = time.perf_counter()
        if not self.quiet:
            sys.stderr.write(f"[{step}/{total}] {message} ...\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.started is not None and not self.quiet:
            sys.stderr.write(f"      done in {time.perf_counter() - self.started:.1f} s\n")
        self.started = None


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"danet-export: error: {message}\n")
    return status


def _summary(report: object, elapsed: float) -> str:
    from export.onnx_export import ExportReport

    assert isinstance(report, ExportReport)
    lines = [
        f"Exported {report.model_name!r} from a {report.source_format} checkpoint "
        f"(sha256 {report.source_sha256[:12]}...), opset {report.opset}, outputs: {', '.join(report.outputs)}"
    ]
    for item in report.artifacts:
        lines.append(
            f"  {item.precision:<5} {item.path}  ({item.size_bytes / 2**20:.1f} MiB, name {item.model_name!r})"
        )
        if item.verification is not None:
            lines.append(f"        {item.verification.summary()}")
        elif item.precision == "fp32":
            lines.append("        not verified against PyTorch (--no-verify); onnx.checker passed")
        if item.details.get("float_convs"):
            lines.append(
                f"        {item.details['quantized_convs']} convolutions int8, "
                f"{len(item.details['float_convs'])} attention projections kept float, "
                f"{item.details['calibration_images']} calibration images"
            )
    for model in report.triton:
        lines.append(f"  triton {model.config.parent}  (config.pbtxt + 1/model.onnx)")
    lines.append(f"Done in {elapsed:.1f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    started = time.perf_counter()
    progress = _Progress(args.quiet or args.json)
    output = args.output or args.checkpoint.with_suffix(".onnx")
    try:
        # Heavy imports after argument parsing, so --help is instant.
        from export.graph import DEFAULT_OPSET
        from export.onnx_export import ExportError, VerificationError, check_output, export_onnx
        from export.verify import DEFAULT_TOLERANCE
        from models.checkpoints import CheckpointError, load_checkpoint

        try:
            check_output(output)
            if not args.quiet and not args.json:
                sys.stderr.write(f"Loading {args.checkpoint} ...\n")
            loaded = load_checkpoint(
                args.checkpoint,
                output_stride=args.output_stride,
                multi_grid=args.multi_grid,
                classes=args.classes,
            )
            eval_base, eval_crop = eval_defaults(args, loaded.source_format)
            report = export_onnx(
                loaded,
                output,
                logits=args.logits,
                fp16=args.fp16,
                int8=args.int8,
                verify=args.verify,
                calibration=args.calibration,
                calibration_count=args.calibration_count,
                triton_repo=args.triton_repo,
                opset=args.opset or DEFAULT_OPSET,
                name=args.name,
                preferred_size=args.preferred_size,
                eval_base_size=eval_base,
                eval_crop_size=eval_crop,
                tolerance=replace(DEFAULT_TOLERANCE, atol=args.atol, min_agreement=args.min_agreement),
                fp16_min_agreement=args.fp16_min_agreement,
                int8_min_agreement=args.int8_min_agreement,
                attention=args.attention,
                progress=progress,
            )
        except (CheckpointError, ExportError) as exc:
            progress.started = None
            return _fail(str(exc), EXIT_INPUT)
        except VerificationError as exc:
            progress.started = None
            return _fail(
                f"{exc}. The failing graph was not written; re-run with --no-verify to keep it anyway, "
                "or loosen the tolerance (--atol, --min-agreement, --fp16-min-agreement, "
                "--int8-min-agreement) if the difference is expected.",
                EXIT_VERIFICATION,
            )
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, no traceback
        if isinstance(exc, ModuleNotFoundError) and exc.name in EXPORT_MODULES:
            return _fail(
                f"danet-export needs the export tools ({exc.name} is not installed): run `make tools`, "
                "then call .venv/bin/danet-export (or activate .venv first)",
                EXIT_INPUT,
            )
        if args.debug:
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (re-run with --debug for the traceback)", 1)
    progress.close()
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_summary(report, time.perf_counter() - started) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
