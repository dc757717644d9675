"""`cosyvoice-serve`: the project's command line."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import sys
import time
from types import ModuleType


def make_model(args: argparse.Namespace) -> int:
    from tts_model.twin import directory_size, make_twin

    started = time.perf_counter()
    out = make_twin(args.out, size=args.size, seed=args.seed)
    print(json.dumps({"out": str(out), "size": args.size, "seed": args.seed,
                      "bytes": directory_size(out), "seconds": round(time.perf_counter() - started, 2)}))
    return 0


BENCH_NOT_INSTALLED = ("the benchmark is not installed: it ships apart from the service, in the repository's "
                       "benchmarks/ folder; from a checkout, run `pip install -e ./benchmarks`")

#: The benchmark's commands: name -> (module, help, description). Each module has
#: `add_arguments(parser)` and `run(args) -> int`; the names are listed here, not there, so that
#: each command can still say how to install the benchmark where it is missing.
BENCH_COMMANDS = {
    "bench": ("benchmarks.runner", "benchmark the service against upstream's one-process server",
              "Drive a fixed, seeded workload (sft, or zero-shot with a prompt uploaded per request) through the "
              "service over HTTP, through an upstream-style baseline (same --dtype; torch's default thread count, "
              "as upstream's server has) and optionally through any running server (--compare-url); print a "
              "table with start-up and memory, then one JSON line with the figures."),
    "bench-soak": ("benchmarks.soak", "memory soak: each service replica's RSS after a warm-up and at the end",
                   "Send many whole-mode requests, one after another, to a service started here; print each "
                   "replica's RSS after --warmup requests and at the end, then one JSON line. Exits 1 if any "
                   "request failed or any replica grew past the bound."),
    "bench-first-audio": ("benchmarks.first_audio", "time to first audio with text streamed in, and cancel latency",
                          "Write text over the WebSocket at a language model's pace and time the first audio, next "
                          "to the streamed POST route given the whole text; time cancel to the last audio frame. "
                          "Print the figures, then one JSON line."),
    "bench-chunk-cost": ("benchmarks.chunks", "time each streamed flow chunk of one growing utterance",
                         "Decode one growing utterance chunk by chunk as streaming does, recomputing from the "
                         "start and incrementally; print each chunk's cost, then one JSON line."),
    "bench-flow-affinity": ("benchmarks.affinity", "streamed chunks decoded from the start with several flow replicas",
                            "Send concurrent streamed requests to a service started here with several flow decoder "
                            "replicas; print how each replica decoded the streamed chunks (from the stream's kept "
                            "state, or from the start for want of it) and the flow time per chunk, then one JSON "
                            "line."),
    "bench-first-byte": ("benchmarks.first_byte", "time to the first audio byte of each output format, per route",
                         "Send requests one at a time to each route (OpenAI speech as audio and as events, sft "
                         "streamed and as a file) in each output format; print the median time to the first audio "
                         "byte and to the end of the response, then one JSON line."),
}


def bench_module(name: str) -> ModuleType | None:
    """A benchmark command's module, or None where the benchmark is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "httpx", "psutil", "websockets"):
            raise
        return None


def bench_not_installed(command: str, args: argparse.Namespace) -> int:
    sys.exit(f"cosyvoice-serve {command}: {BENCH_NOT_INSTALLED}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosyvoice-serve", description="CosyVoice2 serving tools")
    commands = parser.add_subparsers(dest="command", required=True)
    twin = commands.add_parser("make-model", help="write a random-weight twin of a CosyVoice2-0.5B model directory")
    twin.add_argument("--size", choices=["tiny", "real"], default="tiny",
                      help="tiny: small dimensions for tests; real: CosyVoice2-0.5B's dimensions (~2 GB)")
    twin.add_argument("--out", required=True, help="directory to write")
    twin.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    twin.set_defaults(handler=make_model)
    for command, (module_name, help_text, description) in BENCH_COMMANDS.items():
        subparser = commands.add_parser(command, help=help_text, description=description)
        if (module := bench_module(module_name)) is None:
            subparser.set_defaults(handler=functools.partial(bench_not_installed, command))
        else:
            module.add_arguments(subparser)
            subparser.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
