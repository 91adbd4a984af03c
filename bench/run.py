"""`make bench`: every benchmark in one run on this machine; prints tables, writes JSON.

python -m bench.run [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

from bench import ceiling, pipeline, scaling, serving
from bench.common import RESULTS_DIR, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = parser.parse_args()
    requests, seed_requests = (80, 40) if args.quick else (400, 120)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
    }
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")

    report["ceiling"] = ceiling.run()
    c = report["ceiling"]
    print(f"\n== Compute ceiling ({c['model']}, batch {c['batch']}, in-process)")
    print(
        f"{c['images_per_s']:.1f} images/s  ({c['ms_per_image_batched']:.2f} ms/image batched, "
        f"{c['ms_single_image']:.2f} ms single image)"
    )

    report["serving"] = serving.run(requests, seed_requests)
    s = report["serving"]
    columns = [
        "concurrency",
        "requests",
        "errors",
        "throughput_rps",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "rss_mb",
    ]
    print(f"\n== Serving: this API ({s['images']})")
    print(table(s["project"], columns))
    print("\n== Serving: seed-style server (Flask + model.predict per request)")
    print(table(s["seed"], columns))
    print("\n== Ratio (API / seed) and fraction of the compute ceiling")
    rows = [
        {
            "concurrency": row["concurrency"],
            "x_seed": s["throughput_ratio"][row["concurrency"]],
            "pct_of_ceiling": 100 * row["throughput_rps"] / c["images_per_s"],
        }
        for row in s["project"]
    ]
    print(table(rows, ["concurrency", "x_seed", "pct_of_ceiling"]))

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

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "latest.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
