"""Samples the host's CPU use every `--every` seconds into a JSON-lines file, until killed.

    python benchmarks/lab/host_monitor.py --out host.jsonl &

Each line: the wall time, the share of all CPUs busy, and the busiest processes of the
interval (pid, name, CPUs used), each with its busiest threads. It answers whether a
host-bound step (a GPU encode whose time is Python and kernel launches) shares its cores:
`ray_gpu.py`'s rounds carry wall times to line up with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(stat: Path) -> int:
    """utime + stime of a /proc stat file (the fields after the command's closing paren)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_by_id(folder: Path) -> dict[int, tuple[str, int]]:
    """Name and CPU ticks of each numbered entry of `folder`: /proc's processes, or a
    process's task folder's threads (those that end while read are left out)."""
    found = {}
    try:
        entries = [entry for entry in folder.iterdir() if entry.name.isdigit()]
    except OSError:
        return found
    for entry in entries:
        try:
            found[int(entry.name)] = (
                (entry / "comm").read_text().strip(),
                cpu_ticks(entry / "stat"),
            )
        except (OSError, IndexError):
            continue
    return found


def total_busy() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    before, busy_before, last = cpu_by_id(Path("/proc")), total_busy(), time.time()
    tasks_before: dict[int, dict[int, tuple[str, int]]] = {}
    with args.out.open("a") as out:
        while True:
            time.sleep(args.every)
            now, busy, seen = time.time(), total_busy(), cpu_by_id(Path("/proc"))
            span = (now - last) * TICKS
            used = sorted(
                (
                    (ticks - before[pid][1], pid, name)
                    for pid, (name, ticks) in seen.items()
                    if pid in before
                ),
                reverse=True,
            )[: args.top]
            top = []
            for ticks, pid, name in used:
                now_tasks = cpu_by_id(Path(f"/proc/{pid}/task"))
                old = tasks_before.get(pid, {})
                busiest = sorted(
                    ((t - old[tid][1], n) for tid, (n, t) in now_tasks.items() if tid in old),
                    reverse=True,
                )[:3]
                tasks_before[pid] = now_tasks
                top.append(
                    {
                        "pid": pid,
                        "name": name,
                        "cpus": round(ticks / span, 2),
                        "threads": [(n, round(t / span, 2)) for t, n in busiest],
                    }
                )
            total = (busy[0] - busy_before[0]) / max(1, busy[1] - busy_before[1])
            out.write(json.dumps({"t": now, "busy": round(total, 3), "top": top}) + "\n")
            out.flush()
            before, busy_before, last = seen, busy, now


if __name__ == "__main__":
    main()
