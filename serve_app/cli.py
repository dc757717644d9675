"""`cosyvoice-serve`: the project's command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time


def make_model(args: argparse.Namespace) -> int:
    from tts_model.twin import directory_size, make_twin

    started = time.perf_counter()
    out = make_twin(args.out, size=args.size, seed=args.seed)
    print(json.dumps({"out": str(out), "size": args.size, "seed": args.seed,
                      "bytes": directory_size(out), "seconds": round(time.perf_counter() - started, 2)}))
    return 0


BENCH_NOT_INSTALLED = ("the benchmark is not installed: it ships apart from the service, in the repository's "
                       "benchmarks/ folder; from a checkout, run `pip install -e ./benchmarks`")


def bench_runner() -> object | None:
    """The benchmark's command module, or None where it is not installed."""
    try:
        return importlib.import_module("benchmarks.runner")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "httpx", "psutil"):
            raise
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosyvoice-serve", description="CosyVoice2 serving tools")
    commands = parser.add_subparsers(dest="command", required=True)
    twin = commands.add_parser("make-model", help="write a random-weight twin of a CosyVoice2-0.5B model directory")
    twin.add_argument("--size", choices=["tiny", "real"], default="tiny",
                      help="tiny: small dimensions for tests; real: CosyVoice2-0.5B's dimensions (~2 GB)")
    twin.add_argument("--out", required=True, help="directory to write")
    twin.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    twin.set_defaults(handler=make_model)
    benchmark = commands.add_parser("bench", help="benchmark the service against upstream's one-process server",
                                    description="Drive a fixed, seeded workload through the service over HTTP and "
                                                "through an upstream-style baseline; print a table, then one JSON "
                                                "line with the figures.")
    runner = bench_runner()
    if runner is None:
        benchmark.set_defaults(handler=lambda args: sys.exit(f"cosyvoice-serve bench: {BENCH_NOT_INSTALLED}"))
    else:
        runner.add_arguments(benchmark)
        benchmark.set_defaults(handler=runner.run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
