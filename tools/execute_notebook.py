"""Execute course notebooks in full mode and save them so they read well everywhere (docs/NOTEBOOKS.md).

    python tools/execute_notebook.py 03 05        # run notebooks/03_*.ipynb and 05_* in full mode, in place
    python tools/execute_notebook.py --tidy-only 03   # no kernel: only tidy what is saved
    python tools/execute_notebook.py --check      # exit 1 if a saved notebook needs tidying
    python tools/execute_notebook.py 08 --timings t.json   # also write each cell's wall time (slowest first)

Executing uses nbclient with the widget state stored (JupyterLab then draws the saved progress bars),
in full mode (MINIDALLE_FAST unset), with this checkout's `minidalle` on PYTHONPATH. Tidying:

- a `tqdm.auto` progress bar is saved as a widget plus a text/plain fallback, which GitHub and
  other renderers without widgets show. The fallback is the bar's text when it was first drawn
  ("  0%|          | 0/800"); it is rewritten to the bar's final state, read from the stored
  widget state ("train clip: 100%|██████████| 800/800 [06:12<00:00, 2.15it/s]");
- per-cell execution timestamps (`metadata.execution`) are dropped: they change on every run and
  say nothing to a reader.

Arguments are notebook numbers (`03`) or paths.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")


def widget_models(nb: nbformat.NotebookNode) -> dict:
    """model id -> {model_name, state, ...} of the widget state stored in the notebook's metadata."""
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def progress_text(model_id: str, models: dict) -> str | None:
    """The text of a tqdm.notebook bar (HBox of HTML, progress, HTML) in its stored state, else None."""
    from tqdm.std import Bar

    box = models.get(model_id)
    if not box or box.get("model_name") != "HBoxModel":
        return None
    children = [models.get(str(child).removeprefix("IPY_MODEL_")) for child in box["state"].get("children", [])]
    if len(children) != 3 or None in children:
        return None
    left, bar, right = children
    if (left["model_name"], right["model_name"]) != ("HTMLModel", "HTMLModel") or \
            bar["model_name"] not in PROGRESS_MODELS:
        return None

    def text(model):  # tqdm writes spaces as figure spaces and escapes the HTML
        return html.unescape(model["state"].get("value", "")).replace("\u2007", " ")

    if not text(left):  # no total: tqdm puts everything on the right, without a bar
        return text(right)
    value, total = bar["state"].get("value", 0), bar["state"].get("max", 0)
    fraction = min(max(value / total, 0.0), 1.0) if total else 0.0
    return f"{text(left)}|{Bar(fraction, default_len=10)}|{text(right)}"


# an absolute path to a file of the package in a traceback: the checkout's folder names this machine
CHECKOUT_PATH = re.compile(r"/[^\s\x1b'\"]*/(?=minidalle/[\w/]+\.py)")


def tidy(nb: nbformat.NotebookNode) -> int:
    """Rewrite progress bars' text fallbacks to their final state, drop execution timestamps, make tracebacks'
    package paths relative to the checkout (minidalle/world.py); returns changes."""
    models, changes = widget_models(nb), 0
    for cell in nb.cells:
        if cell.metadata.pop("execution", None) is not None:
            changes += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                relative = [CHECKOUT_PATH.sub("", line) for line in output.traceback]
                if relative != output.traceback:
                    output.traceback = relative
                    changes += 1
            view = output.get("data", {}).get(WIDGET_VIEW)
            final = progress_text(view.get("model_id", ""), models) if view else None
            if final is not None and output.data.get("text/plain") != final:
                output.data["text/plain"] = final
                changes += 1
    return changes


def cell_seconds(nb: nbformat.NotebookNode) -> list[dict]:
    """Wall time of each executed code cell, slowest first, from the timestamps nbclient records (before tidy)."""
    from datetime import datetime

    rows = []
    for index, cell in enumerate(nb.cells):
        stamps = cell.metadata.get("execution", {})
        start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            seconds = (datetime.fromisoformat(end.replace("Z", "+00:00")) -
                       datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            rows.append({"cell": index, "id": cell.get("id"), "seconds": round(seconds, 1),
                         "first_line": cell.source.splitlines()[0][:80] if cell.source else ""})
    return sorted(rows, key=lambda row: -row["seconds"])


def execute(nb: nbformat.NotebookNode, timeout: int = 3600) -> None:
    """Run every cell in full mode, in the notebooks' folder, keeping the widget state (and, until tidied,
    each cell's execution timestamps)."""
    from nbclient import NotebookClient

    os.environ.pop("MINIDALLE_FAST", None)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True, record_timing=True,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()


def resolve(names: list[str]) -> list[Path]:
    """'03' -> notebooks/03_clip.ipynb; paths stay paths. No names: every course notebook."""
    if not names:
        return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    paths = []
    for name in names:
        matches = sorted(NOTEBOOKS.glob(f"{name}_*.ipynb")) if name.isdigit() else [Path(name)]
        if len(matches) != 1 or not matches[0].is_file():
            raise SystemExit(f"no notebook {name!r}: give a number like 03 or a path to an .ipynb")
        paths += matches
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers (03) or paths; --check defaults to all")
    parser.add_argument("--tidy-only", action="store_true", help="do not execute, only tidy the saved outputs")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook needs tidying")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--timings", type=Path, help="write each executed cell's wall time to this JSON file")
    args = parser.parse_args(argv)
    if not args.notebooks and not args.check:
        parser.error("name the notebooks to execute (or use --check)")
    stale, timings = [], {}
    for path in resolve(args.notebooks):
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        if not (args.check or args.tidy_only):
            execute(nb, args.timeout)
            timings[path.name] = {"total_s": round(time.perf_counter() - start, 1), "cells": cell_seconds(nb)}
        changes = tidy(nb)
        if args.check:
            if changes:
                stale.append(path)
                print(f"needs tidying ({changes} changes): {path}", file=sys.stderr)
            continue
        nbformat.write(nb, path)
        ran = "" if args.tidy_only else f"executed in {time.perf_counter() - start:.0f} s, "
        print(f"{path.name}: {ran}{changes} outputs/cells tidied")
    if args.timings and timings:
        args.timings.write_text(json.dumps(timings, indent=1) + "\n")
    if stale:
        print("run `python tools/execute_notebook.py --tidy-only NN` (or re-execute them)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
