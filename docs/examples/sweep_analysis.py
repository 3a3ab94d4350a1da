"""A sweep run and analysed from Python: plan it, run it (twice: the second run creates nothing), read the
manifest into pandas, summarise it, and save a contact sheet.

    python docs/examples/sweep_analysis.py                     # the demo spec, on a sandbox started here
    python docs/examples/sweep_analysis.py SPEC --api-base URL # any spec and API (key in EACHLABS_API_KEY)

It uses only promptgrid's documented Python API (docs/python.md); the same lines work in a notebook.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import promptgrid

DEMO_SPEC = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("spec", nargs="?", default=str(DEMO_SPEC), help="the sweep spec (YAML)")
    parser.add_argument("--api-base", help="the API to call; without it a local sandbox is started")
    parser.add_argument("--time-scale", type=float, help="how much faster than real time the API runs")
    parser.add_argument("--output", help="where images and manifest go (default: the spec's output)")
    parser.add_argument("--rows", help="the parameter down the contact sheet (default: the second swept)")
    parser.add_argument("--cols", help="the parameter across it (default: the first swept)")
    parser.add_argument("--sheet", default="contact-sheet.png", help="where to save the contact sheet")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    spec = promptgrid.load_spec(args.spec)  # every problem of the spec and its grid, before anything runs
    print(promptgrid.plan(spec), end="\n\n")

    where = {"api_base": args.api_base} if args.api_base else {"sandbox": True}
    summary = promptgrid.run(spec, output=args.output, time_scale=args.time_scale, **where)
    print(summary, end="\n\n")
    again = promptgrid.run(spec, output=args.output, time_scale=args.time_scale, **where)
    print(f"second run: {again.planned} jobs to do, {again.api_requests} API requests, {again.skipped} done")

    df = promptgrid.read_manifest(summary)  # one row per job: its latest outcome
    print("\njobs by status:")
    print(df["status"].value_counts().to_string())
    done = df[df["status"] == "success"]
    print("\nmean predict time (s) by cfg (down) and steps (across):")
    times = done.pivot_table(index="cfg", columns="steps", values="predict_time_s", aggfunc="mean")
    print(times.round(3).to_string())
    failed = df[df["status"] != "success"]
    print("\nfailures by reason:")
    print(failed.groupby(["status", "error_code"]).size().to_string() if len(failed) else "none")

    first_prompt = df[df["prompt"] == df["prompt"].iloc[0]]
    sheet = promptgrid.contact_sheet(first_prompt, rows=args.rows, cols=args.cols)
    sheet.save(args.sheet)
    prompt = first_prompt["prompt"].iloc[0]
    print(f"\ncontact sheet of {prompt!r}: {args.sheet} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
