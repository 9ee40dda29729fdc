"""Training throughput benchmark: ``make benchmark`` or ``python benchmarks/run.py --profile quick``.

Writes ``book/results/benchmark.csv`` (see ``mstl_utils.experiments.benchmark``); the book's
benchmark appendix shows it with the hardware. Run it on an otherwise idle machine:
anything else running changes the numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from mstl_utils.experiments import benchmark
from mstl_utils.core import config
from mstl_utils.report import results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="whose model, batch and image size (default: quick)")
    parser.add_argument("--data", default=None, choices=["auto", "real", "synthetic"], help="override the data mode")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per measurement (default: 60)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the headline measurements")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--results", default="book/results", help="folder of benchmark.csv (default: book/results)")
    parser.add_argument("--executors", action="store_true",
                        help="instead: the local and the Ray executor on the same fold runs (executors.csv)")
    parser.add_argument("--runs", type=int, default=8, help="fold runs per executor with --executors (default: 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profile = config.get_profile(args.profile, **({"data": args.data} if args.data else {}))
    start = time.perf_counter()
    if args.executors:
        table = benchmark.executor_comparison(profile, n_runs=args.runs)
        print(f"{results.save_table(table, 'executors.csv', args.results)} ({time.perf_counter() - start:.0f} s)")
        return 0
    table = benchmark.run(profile, device=args.device, steps=args.steps, compile=not args.no_compile,
                          repeats=args.repeats)
    path = results.save_table(table, "benchmark.csv", args.results)
    ratios = benchmark.summary(table)
    print(f"{path}: pipeline/ceiling {ratios['pipeline_over_ceiling']:.2f}, pipeline/plain "
          f"{ratios['pipeline_over_plain']:.2f} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
