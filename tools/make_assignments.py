"""Student versions of the course notebooks (`make assignments`).

For every notebooks/NN_name.ipynb, writes assignments/NN_name.ipynb:

- each region between `### BEGIN SOLUTION` and `### END SOLUTION` becomes nbgrader's stub
  (`# YOUR CODE HERE` and `raise NotImplementedError()`, indented like the marker);
- outputs, execution counts and execution metadata are cleared;
- exercise cells (with a solution region) and check cells (calling a `check_...` function of
  minidalle.checks) get nbgrader metadata: solution cells are editable, check cells are
  locked grade cells worth `points` (1 unless the instructor cell says otherwise);
- everything else is kept as it is.

Also writes assignments/README.md, the list of exercises. The output depends only on the
notebooks (same input, byte-identical files). `--check` writes nothing and exits with 1 when
assignments/ is out of date. Usage: python tools/make_assignments.py [--check] [--notebooks DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")  # nbgrader's default stub
TEXT_STUB = ("YOUR ANSWER HERE",)
NOTEBOOK = re.compile(r"^\d\d_\w+\.ipynb$")
CHECK_CALL = re.compile(r"(?<!def )\b(check_\w+)\s*\(")
DEFINITION = re.compile(r"^def (\w+)\s*\(", re.MULTILINE)
SCHEMA_VERSION = 3
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled")


def strip_solutions(source: str, stub=CODE_STUB, where: str = "") -> tuple[str, int]:
    """Replace every solution region of a cell's source by the stub; returns (source, regions)."""
    lines, regions, inside = [], 0, False
    for line in source.split("\n"):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}: nested '{BEGIN}'")
            inside, regions = True, regions + 1
            indent = line[: line.index(BEGIN)]
            lines += [indent + stub_line for stub_line in stub]
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}: '{END}' without '{BEGIN}'")
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise ValueError(f"{where}: '{BEGIN}' without '{END}'")
    return "\n".join(lines), regions


def check_name(source: str) -> str | None:
    """The check a cell calls (`check_caption_of(caption_of)` -> 'check_caption_of'), or None."""
    match = CHECK_CALL.search(source)
    return match.group(1) if match else None


def _nbgrader(**fields) -> dict:
    meta = {"grade": False, "locked": False, "schema_version": SCHEMA_VERSION, "solution": False, "task": False}
    meta.update(fields)
    return meta


def student_notebook(nb: nbformat.NotebookNode, stem: str) -> tuple[nbformat.NotebookNode, list[dict]]:
    """The student version of an instructor notebook, and its exercises [{name, check, points}]."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)  # widget state belongs to the cleared outputs
    nb.metadata.pop("celltoolbar", None)
    exercises, grade_ids = [], set()
    for index, cell in enumerate(nb.cells):
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if "id" in cell and not cell.id:
            cell.id = f"{stem}-{index}"
        where = f"{stem}.ipynb, cell {index}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if cell.cell_type not in ("code", "markdown"):
            continue
        given = cell.metadata.get("nbgrader", {})
        source, regions = strip_solutions(cell.source, CODE_STUB if cell.cell_type == "code" else TEXT_STUB, where)
        check = check_name(cell.source) if cell.cell_type == "code" else None
        if regions and check:
            raise ValueError(f"{where}: a cell holds both a solution and a check; put the check in its own cell")
        if regions:
            cell.source = source
            definition = DEFINITION.search(cell.source)
            grade_id = given.get("grade_id") or (definition.group(1) if definition else f"{stem}_exercise_{index}")
            cell.metadata["nbgrader"] = _nbgrader(solution=True, grade_id=grade_id)
            cell.metadata["deletable"] = False
            exercises.append({"name": grade_id, "check": None, "points": None})
        elif check:
            grade_id = given.get("grade_id") or check
            points = given.get("points", 1)
            cell.metadata["nbgrader"] = _nbgrader(grade=True, locked=True, points=points, grade_id=grade_id)
            cell.metadata["deletable"], cell.metadata["editable"] = False, False
            if exercises and exercises[-1]["check"] is None:
                exercises[-1].update(check=check, points=points)
            else:
                exercises.append({"name": None, "check": check, "points": points})
        else:
            cell.metadata.pop("nbgrader", None)
            continue
        if grade_id in grade_ids:
            raise ValueError(f"{where}: grade id {grade_id!r} used twice (nbgrader needs unique ids)")
        grade_ids.add(grade_id)
    return nb, exercises


def render(nb: nbformat.NotebookNode) -> str:
    """Notebook JSON as Jupyter writes it (sorted keys, one-space indent), ending in a newline."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def readme(table: list[tuple[str, list[dict]]]) -> str:
    lines = ["# Assignments (student versions of the notebooks)", "",
             "Generated by `make assignments` from `notebooks/`: do not edit by hand. Each exercise's solution",
             "is replaced by `raise NotImplementedError()`; the locked cell after it runs a check from",
             "`minidalle/checks/`. How to hand out, grade and time them: `docs/TEACHERS.md`.", "",
             "| notebook | exercise (function to write) | check | points |", "|---|---|---|---|"]
    total = 0
    for name, exercises in table:
        for exercise in exercises:
            total += exercise["points"] or 0
            lines.append(f"| `{name}` | `{exercise['name'] or '-'}` | `{exercise['check'] or '-'}` | "
                         f"{exercise['points'] if exercise['points'] is not None else '-'} |")
        if not exercises:
            lines.append(f"| `{name}` | (no exercise yet) | | |")
    lines += ["", f"Total: {sum(len(e) for _, e in table)} exercises, {total:g} points.", ""]
    return "\n".join(lines)


def build(notebooks: Path) -> dict[str, str]:
    """{file name: text} of everything assignments/ should hold."""
    files, table = {}, []
    for path in sorted(p for p in notebooks.iterdir() if NOTEBOOK.match(p.name)):
        nb = nbformat.read(path, as_version=4)
        student, exercises = student_notebook(nb, path.stem)
        files[path.name] = render(student)
        table.append((path.name, exercises))
    files["README.md"] = readme(table)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "assignments")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is not up to date; write nothing")
    args = parser.parse_args(argv)
    files = build(args.notebooks)
    existing = {p.name for p in args.out.glob("*") if NOTEBOOK.match(p.name) or p.name == "README.md"} \
        if args.out.is_dir() else set()
    stale = sorted(existing - set(files))
    changed = sorted(name for name, text in files.items()
                     if not (args.out / name).is_file() or (args.out / name).read_bytes() != text.encode("utf-8"))
    if args.check:
        for name in changed + stale:
            print(f"out of date: {args.out / name}", file=sys.stderr)
        if changed or stale:
            print("run `make assignments` to regenerate", file=sys.stderr)
        return 1 if changed or stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in changed:
        (args.out / name).write_bytes(files[name].encode("utf-8"))
    for name in stale:
        (args.out / name).unlink()
    print(f"{args.out.name}/: {len(files)} files, {len(changed)} written, {len(stale)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
