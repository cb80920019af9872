"""A PNG of a run's report as a browser lays it out (headless Chromium), for the README and
for looking at a report without opening it: the top of the page, which is its verdict.

    python -m loadtest.reporting.screenshot RUN_DIR docs/report-verdict.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["screenshot"]

WIDTH, HEIGHT = 1400, 1150  # the verdict and what leads to it, at the width charts are made for


def screenshot(
    report: Path | str, png: Path | str, width: int = WIDTH, height: int = HEIGHT
) -> None:
    """Render `report` (an HTML file) in headless Chromium into `png`."""
    report, png = Path(report), Path(png)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (Debian package: chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                f"--user-data-dir={profile}", f"--window-size={width},{height}",
                "--hide-scrollbars", f"--screenshot={png.resolve()}", report.resolve().as_uri(),
            ],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.reporting.screenshot")
    parser.add_argument("run", type=Path, help="a run directory (with report.html)")
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    report = args.run / "report.html"
    if not report.is_file():
        sys.exit(f"error: no report.html in {args.run} (stackbench report {args.run} makes one)")
    try:
        screenshot(report, args.png)
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        sys.exit(f"error: {exc}")
    print(args.png)


if __name__ == "__main__":
    main()
