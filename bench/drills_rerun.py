"""The kill drill's reruns: the `ingest` flow once in each killed home, in this one process, each result
compared with the clean reference (one process instead of one CLI start per rerun saves ~20 s each).

    .venv/bin/python bench/drills_rerun.py --src DIR --ref HOME --homes H1,H2,... --work DIR --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.drills_faults import _env, _ingest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("src", "ref", "work", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--homes", type=lambda s: [Path(p) for p in s.split(",") if p], required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    _env(args.work)

    from bench.drills_state import difference, read_state, same

    from prefect import flow

    @flow(name="drills-warm-up")
    def warm_up() -> int:
        return 1

    warm_up()  # starts Prefect's temporary server here, not inside the first timed rerun
    reference = read_state(args.ref, args.src)
    off = {"RAGTUNE_FAULTS": None, "RAGTUNE_FAULTS_SEED": None, "RAGTUNE_FAULTS_TASKS": None}
    results = []
    for home in args.homes:
        run = _ingest(home, args.src, off)
        state = read_state(home, args.src)
        converged = same(state, reference)
        results.append({
            "home": home.name, "status": run["status"], "error": run["error"], "wall_s": run["wall_s"], "counts": run["counts"],
            "converged": converged, "duplicates": state.duplicates,
            "difference": None if converged else difference(state, reference),
        })
        print(f"rerun {home.name}: {run['status']} in {run['wall_s']} s, converged {converged}", file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
