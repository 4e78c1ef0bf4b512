"""``danet-client``: segment image files or folders on a danet-serve server.

    danet-client segment photos/ street.jpg --output out/ [--format color|index|overlay|json]
                 [--url http://host:8000 | --grpc host:8001] [--concurrency 4] [--model NAME] [--api-key KEY]
                 [--max-size PIXELS] [--mode whole|slide] [--scales 0.75,1,1.25] [--flip | --no-flip]
                 [--tta official|mmseg [--base-size N] [--crop-size N] [--stride N]]

Exit status: 0 all images done, 1 some image failed, 2 usage error or no server reachable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, DanetClient
from client._errors import DanetClientError
from client._inputs import TTA_PRESETS, options_from
from client._types import FORMATS

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
# The command-line options that go to DanetClient.segment under the same names.
SEGMENT_OPTIONS = ("format", "model", "alpha", "mode", "scales", "flip", "max_size", "tta", "base_size", "crop_size", "stride")  # fmt: skip


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def plan_jobs(inputs: Iterable[Path], output: Path, suffix: str) -> list[Job]:
    """One job per image; folders keep their inner layout under ``output``.

    Inputs whose names differ only by extension (``street.png``, ``street.jpg``) keep it in the result's
    name (``street.png.png``, ``street.jpg.png``); any other clash gets ``-N``.
    """
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            pairs += [(p, p.relative_to(item)) for p in _images_in(item)]
        elif item.is_file():
            pairs.append((item, Path(item.name)))
        else:
            raise FileNotFoundError(f"no such file or directory: {item}")
    suffixes_by_stem: dict[Path, set[str]] = {}
    for _, relative in pairs:
        suffixes_by_stem.setdefault(relative.with_suffix(""), set()).add(relative.suffix.lower())
    jobs: list[Job] = []
    taken: set[Path] = set()
    for source, relative in pairs:
        stem = relative.with_suffix("")
        name = relative.name if len(suffixes_by_stem[stem]) > 1 else stem.name
        target = output / relative.with_name(name + suffix)
        n = 1
        while target in taken:
            target = output / relative.with_name(f"{name}-{n}{suffix}")
            n += 1
        taken.add(target)
        jobs.append(Job(source, target))
    return jobs


def _size(text: str) -> tuple[int, ...]:
    """``N`` or ``AxB`` (the server's syntax for base_size, crop_size and stride)."""
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or AxB, got {text!r}") from None
    if not 1 <= len(values) <= 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or AxB with positive numbers, got {text!r}")
    return values


def _scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="danet-client", description="Client for danet-serve.")
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segment", help="segment images (files or folders, recursively)")
    seg.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    seg.add_argument(
        "--output", "-o", type=Path, required=True, metavar="DIR", help="where results are written"
    )
    seg.add_argument("--format", choices=FORMATS, default="color", help="result kind (default color)")
    where = seg.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"REST server URL (default {DEFAULT_URL}, or $DANET_URL)")
    where.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at HOST:PORT instead of REST")
    seg.add_argument("--concurrency", "-j", type=int, default=4, help="requests in flight (default 4)")
    seg.add_argument("--model", help="model name (default: the server's default)")
    seg.add_argument("--api-key", default=os.environ.get("DANET_API_KEY"), help="API key (or $DANET_API_KEY)")
    seg.add_argument("--alpha", type=float, help="overlay opacity 0..1")
    seg.add_argument(
        "--max-size",
        type=int,
        metavar="PIXELS",
        help="longest side used for inference; results keep the input's size (default: the server's)",
    )
    seg.add_argument("--mode", choices=("whole", "slide"), help="whole image or sliding window")
    seg.add_argument("--scales", type=_scales, metavar="S,S,...", help="test-time scales, e.g. 0.75,1,1.25")
    seg.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add horizontally flipped inference (server default: off, on with --tta official)",
    )
    tta = seg.add_argument_group(
        "evaluation presets",
        "reproduce a published evaluation procedure (needs a model exported with --logits)",
    )
    tta.add_argument("--tta", choices=TTA_PRESETS, help="official (DANet's) or mmseg (MMSegmentation's)")
    for flag, metavar, text in (
        ("--base-size", "N|LONGxSHORT", "size at scale 1 (default: the model's metadata)"),
        ("--crop-size", "N|HxW", "sliding-window crop (default: the model's metadata)"),
        ("--stride", "N|HxW", "window stride (default 2/3 of the crop)"),
    ):
        tta.add_argument(flag, type=_size, metavar=metavar, help=f"--tta only: {text}")
    seg.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def _fail(message: str) -> int:
    print(f"danet-client: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The segmentation options of ``DanetClient.segment`` from the command line."""
    return {name: getattr(args, name) for name in SEGMENT_OPTIONS}


def segment_command(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        return _fail(f"--concurrency must be at least 1, got {args.concurrency}")
    options = _options(args)
    try:  # the library's checks, before any file is read or any server is asked
        options_from(**options)
    except DanetClientError as exc:
        return _fail(str(exc))
    suffix = ".json" if args.format == "json" else ".png"
    try:
        jobs = plan_jobs(args.inputs, args.output, suffix)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    if not jobs:
        return _fail("no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    try:
        client = DanetClient(
            None if args.grpc else (args.url or os.environ.get("DANET_URL") or DEFAULT_URL),
            grpc=args.grpc,
            api_key=args.api_key,
            timeout=args.timeout,
        )
    except DanetClientError as exc:
        return _fail(str(exc))
    with client:
        try:
            if not client.ready():
                return _fail(f"the server at {client.address} is up but not ready yet (models warming up)")
        except DanetClientError as exc:
            if exc.unreachable:
                return _fail(
                    f"{exc}\n  is danet-serve running there? (start it with `danet-serve` or `make run`)"
                )
            return _fail(f"cannot talk to {client.address}: {exc}")
        return _run(client, jobs, args)


def _run(client: DanetClient, jobs: Sequence[Job], args: argparse.Namespace) -> int:
    options = _options(args)

    def one(job: Job) -> Path:
        result = client.segment(job.source, **options)
        return result.save(job.target)

    failures = 0
    show_bar = not args.quiet and len(jobs) > 1
    with (
        ThreadPoolExecutor(max_workers=min(args.concurrency, len(jobs))) as pool,
        tqdm(total=len(jobs), unit="img", disable=not show_bar, file=sys.stderr) as bar,
    ):
        futures = {pool.submit(one, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                future.result()
            except DanetClientError as exc:
                failures += 1
                tqdm.write(f"danet-client: {job.source}: {exc}", file=sys.stderr)
            except OSError as exc:
                failures += 1
                tqdm.write(f"danet-client: {job.target}: cannot write: {exc}", file=sys.stderr)
            except Exception as exc:  # anything else still fails this image only, with a message
                failures += 1
                tqdm.write(f"danet-client: {job.source}: {type(exc).__name__}: {exc}", file=sys.stderr)
            bar.update(1)
    done = len(jobs) - failures
    print(
        f"{done}/{len(jobs)} image(s) written to {args.output}" + (f", {failures} failed" if failures else "")
    )
    return EXIT_FAILURES if failures else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "segment":
        return segment_command(args)
    return EXIT_USAGE  # pragma: no cover - argparse enforces the command


if __name__ == "__main__":
    sys.exit(main())
