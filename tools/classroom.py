"""The whole nbgrader loop over every notebook with exercises (`make classroom`, docs/TEACHERS.md).

In a course folder (temporary unless --keep DIR), for each notebooks/NN_name.ipynb with exercises,
as assignment psNN: `generate_assignment` -> `release_assignment` to a local exchange -> two
simulated students fetch and submit it ("instructor" hands in the instructor notebook, solutions
filled in; "student" hands in the released version untouched) -> `collect` -> `autograde` ->
`generate_feedback`. Scores are read back from nbgrader's gradebook: the instructor version must
get full marks and the student version 0, for every notebook. Prints a table; exits 1 otherwise.

nbgrader runs the notebooks with the `python3` kernel. Here that kernel is a spec written into
the course folder (found first through JUPYTER_PATH): this Python, importing this checkout's
`minidalle`, in fast mode. Teachers set it up once (docs/TEACHERS.md).
Usage: python tools/classroom.py [--only 00 01 ...] [--keep DIR] [--timeout SECONDS]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COURSE_ID = "minidalle"
STUDENTS = ("instructor", "student")  # who hands in what: the solutions, and the untouched release
CONFIG = '''\
c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = {course_id!r}
c.Exchange.root = {exchange!r}
c.Execute.timeout = {timeout}  # seconds per cell (nbgrader's default, 30, is short for a shared CPU)
# what students get carries no execution timestamps and no widget state (like assignments/)
c.ClearOutput.remove_metadata_fields = ["collapsed", "scrolled", "execution"]
c.NotebookExporter.preprocessors = ["nbconvert.preprocessors.ClearMetadataPreprocessor"]
c.ClearMetadataPreprocessor.clear_cell_metadata = False
c.ClearMetadataPreprocessor.preserve_nb_metadata_mask = ["kernelspec", "language_info"]
c.ExchangeCollect.check_owner = False  # the simulated students share one OS user
'''


def assignment_id(notebook: Path) -> str:
    """notebooks/00_shapes_world.ipynb -> 'ps00'."""
    return "ps" + notebook.name[:2]


def notebooks_with_exercises(notebooks: Path = ROOT / "notebooks", only=()) -> list[Path]:
    """The instructor notebooks that hold at least one solution region, in order."""
    import nbformat

    found = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        if only and path.name[:2] not in only:
            continue
        if any("### BEGIN SOLUTION" in cell.source for cell in nbformat.read(path, as_version=4).cells):
            found.append(path)
    return found


def kernel_spec(folder: Path) -> Path:
    """A `python3` kernel spec under folder/kernels: this Python, this checkout's minidalle, fast mode."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MINIDALLE_FAST": "1"}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minidalle)", "language": "python", "env": env}, indent=1))
    return folder


def environment(course: Path) -> dict[str, str]:
    """Variables nbgrader needs: the course's kernel spec first, and `alembic` on PATH (gradebook)."""
    def first(path, variable):
        return os.pathsep.join(filter(None, [str(path), os.environ.get(variable)]))
    return {"JUPYTER_PATH": first(course / "jupyter", "JUPYTER_PATH"),
            "PATH": first(Path(sys.executable).parent, "PATH")}


@contextmanager
def environ(values: dict[str, str]):
    """Set environment variables for the duration of a with block."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_course(course: Path, notebooks: list[Path], timeout: int = 600):
    """An nbgrader course in `course`: config, kernel spec, source/psNN/; returns nbgrader's API on it."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    course.mkdir(parents=True, exist_ok=True)
    (course / "exchange").mkdir(exist_ok=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(
        root=str(course), course_id=COURSE_ID, exchange=str(course / "exchange"), timeout=timeout))
    kernel_spec(course / "jupyter")
    for notebook in notebooks:
        source = course / "source" / assignment_id(notebook)
        source.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, source / notebook.name)
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    return NbGraderAPI(config=config)


def _ok(result: dict | None, what: str) -> None:
    if not result or not result.get("success"):
        details = (result or {}).get("error") or (result or {}).get("log") or "no result"
        raise RuntimeError(f"nbgrader {what} failed:\n{details}")


def generate(api, notebook: Path) -> Path:
    """`nbgrader generate_assignment psNN`; returns the released notebook's path."""
    _ok(api.generate_assignment(assignment_id(notebook)), f"generate_assignment {assignment_id(notebook)}")
    return Path(api.coursedir.root) / "release" / assignment_id(notebook) / notebook.name


def hand_in(api, notebook: Path, student: str, replacement: Path | None = None) -> None:
    """A student fetches psNN into their own folder, optionally replaces the notebook, and submits it."""
    from nbgrader.utils import temp_attrs

    home = Path(api.coursedir.root) / "home" / student
    home.mkdir(parents=True, exist_ok=True)
    with temp_attrs(api.coursedir, assignment_id=assignment_id(notebook), student_id=student):
        shutil.rmtree(home / assignment_id(notebook), ignore_errors=True)
        for action in ("FetchAssignment", "Submit"):
            if action == "Submit" and replacement is not None:
                shutil.copyfile(replacement, home / assignment_id(notebook) / notebook.name)
            app = getattr(api.exchange, action)(coursedir=api.coursedir, authenticator=api.authenticator,
                                                parent=api, assignment_dir=str(home))
            app.start()


def score(api, notebook: Path, student: str) -> tuple[float, float]:
    """(score, max_score) of a student's autograded psNN, read back from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url, COURSE_ID) as gradebook:
        submission = gradebook.find_submission(assignment_id(notebook), student)
        return float(submission.score), float(submission.max_score)


def grade_round(api, notebook: Path) -> dict:
    """release -> both students hand in -> collect -> autograde -> generate_feedback, for one notebook."""
    ps = assignment_id(notebook)
    _ok(api.release_assignment(ps), f"release_assignment {ps}")
    hand_in(api, notebook, "instructor", replacement=notebook)
    hand_in(api, notebook, "student")
    _ok(api.collect(ps), f"collect {ps}")
    row = {"notebook": notebook.name}
    for student in STUDENTS:
        start = time.perf_counter()
        _ok(api.autograde(ps, student), f"autograde {ps} {student}")
        row[f"{student}_seconds"] = time.perf_counter() - start
        row[student] = score(api, notebook, student)
    _ok(api.generate_feedback(ps), f"generate_feedback {ps}")
    root = Path(api.coursedir.root)
    row["feedback"] = {student: root / "feedback" / student / ps / notebook.with_suffix(".html").name
                       for student in STUDENTS}
    return row


def table(rows: list[dict]) -> str:
    lines = [f"{'notebook':<28} {'instructor':>10} {'student':>8} {'autograde s (instr., student)':>30}"]
    for row in rows:
        (got_i, max_i), (got_s, max_s) = row["instructor"], row["student"]
        lines.append(f"{row['notebook']:<28} {f'{got_i:g}/{max_i:g}':>10} {f'{got_s:g}/{max_s:g}':>8} "
                     f"{row['instructor_seconds']:>21.0f}, {row['student_seconds']:>6.0f}")
    return "\n".join(lines)


def problems(rows: list[dict]) -> list[str]:
    """What is wrong with the grades: instructor not full marks, student not zero, feedback missing."""
    found = []
    for row in rows:
        (got_i, max_i), (got_s, _) = row["instructor"], row["student"]
        if max_i <= 0 or got_i != max_i:
            found.append(f"{row['notebook']}: the instructor version got {got_i:g}/{max_i:g}, not full marks")
        if got_s != 0:
            found.append(f"{row['notebook']}: the untouched student version got {got_s:g}, not 0")
        found += [f"{row['notebook']}: no feedback for {student}" for student, path in row["feedback"].items()
                  if not path.is_file()]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=(), help="notebook numbers (default: all with exercises)")
    parser.add_argument("--keep", type=Path, help="build the course here and keep it (default: a temporary folder)")
    parser.add_argument("--timeout", type=int, default=600, help="nbgrader's Execute.timeout, seconds per cell")
    args = parser.parse_args(argv)
    from sqlalchemy.exc import SAWarning
    warnings.simplefilter("ignore", SAWarning)  # nbgrader 0.9.6 on SQLAlchemy 2; the scores are read back and checked
    notebooks = notebooks_with_exercises(only=tuple(args.only))
    if not notebooks:
        print("no notebook with exercises", file=sys.stderr)
        return 1
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="minidalle-course-") as temporary:
        course = (args.keep or Path(temporary) / "course").resolve()
        if args.keep and course.exists() and any(course.iterdir()):
            print(f"{course} is not empty: give --keep a new folder", file=sys.stderr)
            return 1
        with environ(environment(course)):
            api = make_course(course, notebooks, timeout=args.timeout)
            for notebook in notebooks:
                generate(api, notebook)
            for notebook in notebooks:
                rows.append(grade_round(api, notebook))
                print(table(rows[-1:]).split("\n")[1], flush=True)
        found = problems(rows)  # while the course (and its feedback) still exists
    print()
    print(table(rows))
    for problem in found:
        print("FAIL:", problem, file=sys.stderr)
    verdict = "FAILED" if found else "instructor versions full marks, student versions 0"
    print(f"\n{len(rows)} notebooks, {verdict}; {time.perf_counter() - start:.0f} s in all")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
