#!/usr/bin/env python3
"""Write the proxy's per-route ``location`` blocks from the routes' declared policies.

    python scripts/gen_proxy_conf.py           # rewrite the block in the nginx template
    python scripts/gen_proxy_conf.py --check   # exit 1 when the template is stale

nginx must refuse an over-limit upload itself (docker/proxy/nginx.conf.template says why),
so it needs each route's body limit: the block between ``# BEGIN routes`` and
``# END routes`` of the template holds one exact-path ``location`` per API route whose
``RoutePolicy.upload`` is not the default one file (``location /`` covers those), filled
at container start with the byte limits of the same settings (docker/proxy/entrypoint.sh).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "docker" / "proxy" / "nginx.conf.template"
BEGIN = "# BEGIN routes"
END = "# END routes"
INDENT = " " * 8

sys.path.insert(0, str(REPO_ROOT))

from generated import write_or_check  # noqa: E402

from backend.app.api.main import api_router  # noqa: E402
from backend.app.core.policy import RoutePolicies, RoutePolicy, Upload  # noqa: E402

# The entrypoint's field for each upload's byte limit; whether nginx streams the body.
BODY_FIELDS = {Upload.batch: "@MAX_BATCH_BYTES@", Upload.study: "@MAX_STUDY_BYTES@"}
STREAMED = frozenset({Upload.study})


def location(path: str, policy: RoutePolicy) -> list[str]:
    """The ``location`` block of one route with a larger body limit than one file."""
    if not re.fullmatch(r"/[A-Za-z0-9/_.-]*", path):
        raise ValueError(f"{path}: only literal paths are written (add a regex location)")
    lines = [f"location = {path} {{", f"    client_max_body_size {BODY_FIELDS[policy.upload]};"]
    if policy.upload in STREAMED:
        lines.append("    proxy_request_buffering off;")
    return [*lines, "    proxy_pass http://$replicas_upstream;", "}"]


def render(template: str, policies: RoutePolicies) -> str:
    """``template`` with its routes block rewritten from ``policies``."""
    head, begin, rest = template.partition(BEGIN)
    marker_line, _, rest = rest.partition("\n")
    _, end, tail = rest.partition(INDENT + END)
    if not begin or not end:
        raise ValueError(f"the template has no '{BEGIN}' ... '{END}' block")
    lines = [
        line
        for path, policy in policies.paths().items()
        if policy.upload is not Upload.one_file
        for line in location(path, policy)
    ]
    body = "".join(f"{INDENT}{line}\n" for line in lines)
    return f"{head}{begin}{marker_line}\n{body}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the template is stale")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)

    expected = render(args.template.read_text(), RoutePolicies(api_router.routes))
    return write_or_check(args.template, expected, args.check, "scripts/gen_proxy_conf.py")


if __name__ == "__main__":
    sys.exit(main())
