"""Browser SDK size: Switchboard's bundle next to centrifuge-js's, measured alike.

Builds clients/js (`make js` must have run `npm ci`), fetches the `centrifuge`
package from the npm registry (`npm pack`) and measures, in the same run:

  shipped     each project's own minified browser bundle as published
              (clients/js/dist/switchboard.min.js; centrifuge's dist/centrifuge.js)
  rebundled   each package's ESM entry bundled and minified by the same esbuild
              (the version clients/js locks), ESM, es2020: the same tool for both

Sizes are raw bytes and gzip level 9 (mtime 0). Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"
RESULTS = ROOT / "bench" / "results"


def sizes(data: bytes) -> dict[str, int]:
    return {"raw": len(data), "gzip": len(gzip.compress(data, compresslevel=9, mtime=0))}


def run(*cmd: str, cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def esbuild(entry: Path, out: Path) -> bytes:
    """Bundle + minify `entry` exactly as clients/js/build.mjs does."""
    run(
        str(JS / "node_modules" / ".bin" / "esbuild"),
        str(entry),
        "--bundle",
        "--minify",
        "--format=esm",
        "--target=es2020",
        "--legal-comments=none",
        f"--outfile={out}",
        cwd=JS,
    )
    return out.read_bytes()


def fetch_centrifuge(version: str, into: Path) -> tuple[str, Path]:
    """`npm pack centrifuge@version` from the registry; its version and unpacked root."""
    packed = json.loads(run("npm", "pack", f"centrifuge@{version}", "--json", cwd=into))
    with tarfile.open(into / packed[0]["filename"]) as tar:
        tar.extractall(into, filter="data")
    return str(packed[0]["version"]), into / "package"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--centrifuge", default="latest", help="centrifuge version (npm tag)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (JS / "node_modules" / ".bin" / "esbuild").exists():
        print("clients/js/node_modules is missing: run `make js` first", file=sys.stderr)
        return 1
    run("npm", "run", "--silent", "build", cwd=JS)
    with tempfile.TemporaryDirectory(prefix="sb-bundle-") as tmp:
        work = Path(tmp)
        version, centrifuge = fetch_centrifuge(args.centrifuge, work)
        esbuild_version = run(str(JS / "node_modules" / ".bin" / "esbuild"), "--version", cwd=JS)
        rows: dict[str, Any] = {
            "switchboard": {
                "version": json.loads((JS / "package.json").read_text())["version"],
                "shipped": sizes((JS / "dist" / "switchboard.min.js").read_bytes()),
                "rebundled": sizes(esbuild(JS / "dist" / "index.js", work / "sb.js")),
            },
            "centrifuge": {
                "version": version,
                "shipped": sizes((centrifuge / "dist" / "centrifuge.js").read_bytes()),
                "rebundled": sizes(esbuild(centrifuge / "build" / "index.mjs", work / "cf.js")),
            },
        }
    print(f"{'bundle':<34}{'raw B':>10}{'gzip B':>10}")
    for name, row in rows.items():
        for kind in ("shipped", "rebundled"):
            label = f"{name} {row['version']} {kind}"
            print(f"{label:<34}{row[kind]['raw']:>10}{row[kind]['gzip']:>10}")
    ratio = rows["switchboard"]["shipped"]["gzip"] / rows["centrifuge"]["shipped"]["gzip"]
    print(f"switchboard / centrifuge (shipped, gzip): {ratio:.2f}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"bench": "bundle_size", "esbuild": esbuild_version.strip(), "results": rows}
    (args.out / f"bundle_size-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
