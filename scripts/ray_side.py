"""Ray's side of `scripts/bench --vs-ray` (BENCH.md).

    python ray_side.py run [--quick] [NAME...]   Ray's own `ray microbenchmark`, as JSON rows
    python ray_side.py table SHOAL.jsonl RAY.jsonl   the table of ratios, in Markdown

`run` calls Ray's microbenchmark itself (ray._private.ray_perf.main, what `ray microbenchmark`
runs), with its output on stderr, and prints each of its rows on stdout under Shoal's name for
it, in the format of `scripts/bench`:

    {"name": "single_client_tasks_sync", "value": 545.1, "stdev": 12.0, "unit": "ops/s"}

The Ray Client rows at its end are left out (Shoal has no Ray Client). `--quick` drops the
10 s pause Ray makes before each row (its guard against noisy neighbours); the rows' own
method (1 s warm-up, 4 rounds of 2 s) is Ray's either way. NAMEs (Shoal's names) keep only
those rows.
"""

import json
import re
import sys


def shoal_name(ray_name):
    """Shoal's name for a row of Ray's: "1:1 async-actor calls sync" is
    "1_1_async_actor_calls_sync"."""
    name = ray_name.lower().replace("(plasma store)", "")
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def unit(name):
    return "GB/s" if name.endswith("gigabytes") else "ops/s"


def run(args):
    quick = "--quick" in args
    wanted = {a for a in args if not a.startswith("--")}
    out = sys.stdout
    # Ray's prints (its rows as text, its tips) go to stderr: stdout is the JSON rows.
    sys.stdout = sys.stderr

    import ray._private.ray_perf as perf

    ray_timeit = perf.timeit

    def timeit(name, fn, multiplier=1, warmup_time_sec=10):
        ours = shoal_name(name)
        if wanted and ours not in wanted:
            return [None]
        if quick:
            warmup_time_sec = 0
        rows = ray_timeit(name, fn, multiplier, warmup_time_sec)
        for row in rows:
            if row is not None:
                _, mean, sd = row
                line = {"name": ours, "value": round(float(mean), 2),
                        "stdev": round(float(sd), 2), "unit": unit(ours)}
                print(json.dumps(line), file=out, flush=True)
        return rows

    perf.timeit = timeit
    perf.client_microbenchmark_main = lambda results: results
    perf.main()


def rows(path):
    found = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                found[row["name"]] = row
    return found


def figure(row):
    """A row's value, to three significant figures or so, with its unit."""
    v = row["value"]
    text = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
    return f"{text} {row['unit']}"


def table(shoal_path, ray_path):
    shoal, ray = rows(shoal_path), rows(ray_path)
    print("| row | Shoal | Ray | ratio |")
    print("| --- | ---: | ---: | ---: |")
    under = []
    for name, r in ray.items():
        s = shoal.get(name)
        if s is None:
            print(f"| {name} | - | {figure(r)} | - |")
            continue
        # Every row of Ray's is a rate: higher is better.
        ratio = s["value"] / r["value"] if r["value"] else float("inf")
        mark = "" if ratio >= 10 else " (under 10x)"
        if ratio < 10:
            under.append(name)
        print(f"| {name} | {figure(s)} | {figure(r)} | {ratio:,.2f}{mark} |")
    if under:
        print(f"\nunder 10x Ray: {', '.join(under)}")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        run(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
