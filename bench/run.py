"""`make bench`: every benchmark in one run on this machine; prints tables, writes JSON.

python -m bench.run [--quick] [--rounds N]

Numbers depend on what else the machine is doing: the load average at the start and the
end is printed with them (re-run on a quiet machine for the figures that go in a note).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

from bench import ceiling, parity, pipeline, request_path, scaling, serving
from bench.common import RESULTS_DIR, table


def _ceiling_for(server: str, ceilings: dict[str, Any]) -> float:
    runtime = "tensorflow" if ("TensorFlow" in server or server == "seed") else "onnx"
    return float(ceilings[runtime]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--rounds", type=int, help="serving rounds (medians); default 1")
    args = parser.parse_args()
    requests = 80 if args.quick else 400
    rounds = args.rounds or 1
    started = time.perf_counter()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "loadavg_start": os.getloadavg(),
    }
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"load average {report['loadavg_start'][0]:.1f}"
    )

    report["ceiling"] = ceiling.run(rounds=1 if args.quick else 3)
    c = report["ceiling"]
    print(f"\n== Compute ceiling ({c['model']}, in-process, batch {c['batch']}, medians)")
    print(
        table(
            list(c["runtimes"].values()),
            [
                "runtime",
                "images_per_s",
                "ms_per_image_batched",
                "ms_per_image_b8",
                "ms_per_image_b4",
                "ms_single_image",
                "load_s",
            ],
        )
    )

    report["serving"] = serving.run(requests, rounds)
    s = report["serving"]
    rows = serving.summary_rows(s)
    for row in rows:
        if row["c16_rps"]:
            row["c16_pct_of_ceiling"] = (
                100 * row["c16_rps"] / _ceiling_for(row["server"], c["runtimes"])
            )
    print(f"\n== Serving ({s['images']}; % of ceiling: of the server's runtime)")
    print(table(rows, serving.SUMMARY_COLUMNS))
    print()
    print(table(serving.level_rows(s), serving.LEVEL_COLUMNS))

    report["request_path"] = request_path.run(requests)
    print("\n== Where a request's time goes (API, concurrency 16)")
    request_path.print_report(report["request_path"])

    report["parity"] = parity.run(limit=50 if args.quick else None)
    print("\n== Parity: ONNX Runtime against TensorFlow (verdicts must be identical)")
    print(table(report["parity"]["rows"], parity.COLUMNS))

    report["pipeline"] = pipeline.run()
    p = report["pipeline"]
    print("\n== Training input pipeline (images/s)")
    if "skipped" in p:
        print(p["skipped"])
    else:
        print(
            table(
                [
                    {"pipeline": "tf.data (project)", **p["project"]},
                    {"pipeline": p["seed_approach"], **p["seed"]},
                    {
                        "pipeline": "speed-up",
                        "cold": p["speedup_cold"],
                        "cached": p["speedup_cached"],
                    },
                ],
                ["pipeline", "cold", "cached"],
            )
        )

    report["scaling"] = scaling.run()
    print("\n== Scaling (cost per image should stay flat)")
    print(table(report["scaling"]["rows"], ["path", "images", "seconds", "ms_per_image"]))

    report["loadavg_end"] = os.getloadavg()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "latest.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        f"\nwritten to {out} in {time.perf_counter() - started:.0f} s; load average at the "
        f"end {report['loadavg_end'][0]:.1f} (start {report['loadavg_start'][0]:.1f})"
    )


if __name__ == "__main__":
    main()
