"""The nbgrader loop, run by nbgrader itself: a course built from notebooks/ in a temporary folder.

`generate_assignment` must accept every notebook with exercises and release exactly what
assignments/ holds; `autograde` must give one notebook's instructor version full marks and its
untouched student version 0, read back from the gradebook. (`make classroom` runs the loop over
every notebook: tools/classroom.py.)
"""
import importlib.util
import re

import pytest
import torch

from minidalle import ROOT

spec = importlib.util.spec_from_file_location("classroom", ROOT / "tools" / "classroom.py")
classroom = importlib.util.module_from_spec(spec)
spec.loader.exec_module(classroom)

NOTEBOOKS = classroom.notebooks_with_exercises()
CHEAPEST = "00"  # the notebook with exercises that runs fastest in fast mode (no training)

# nbgrader 0.9.6 on SQLAlchemy 2 warns while autograding; the scores it stores are read back below
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """nbgrader's API on a course holding every notebook with exercises, each generated as psNN."""
    root = tmp_path_factory.mktemp("course")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in classroom.environment(root).items():
            patch.setenv(key, value)
        api = classroom.make_course(root, NOTEBOOKS, timeout=300)
        releases = {notebook.name: classroom.generate(api, notebook) for notebook in NOTEBOOKS}
        yield api, releases


def test_there_are_notebooks_with_exercises():
    assert len(NOTEBOOKS) >= 2 and any(p.name.startswith(CHEAPEST) for p in NOTEBOOKS)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_generate_assignment_releases_what_assignments_holds(course, notebook):
    _, releases = course
    release = releases[notebook.name].read_bytes()
    assert b"BEGIN SOLUTION" not in release
    assert release == (ROOT / "assignments" / notebook.name).read_bytes(), \
        "nbgrader's release differs from assignments/: run `make assignments`"


def test_autograde_gives_the_instructor_full_marks_and_the_student_zero(course):
    api, _ = course
    notebook = next(p for p in NOTEBOOKS if p.name.startswith(CHEAPEST))
    row = classroom.grade_round(api, notebook)
    (got, full), (student, _) = row["instructor"], row["student"]
    assert full >= 2 and got == full, row
    assert student == 0, row
    assert classroom.problems([row]) == []
    feedback = row["feedback"]["student"].read_text(encoding="utf-8")
    assert "is not implemented yet" in re.sub(r"<[^>]+>", "", feedback)  # the check's message reaches the student


def test_validate_shows_every_line_of_a_check_message_whole():
    """nbgrader validate cuts traceback lines; a wrapped check message must fit (minidalle.checks._common)."""
    from nbgrader.validator import Validator

    from minidalle import checks

    def causal_mask(T, S):
        return torch.ones(T, S, dtype=torch.bool).triu(S - T)  # the wrong way round

    with pytest.raises(AssertionError) as info:
        checks.check_causal_mask(causal_mask)
    shown = f"AssertionError: {info.value}"
    validator = Validator()
    assert "the wrong way round" in " ".join(shown.split()) and "lower triangle" in " ".join(shown.split())
    assert validator._indent(shown) == "\n".join(validator.indent + line for line in shown.split("\n"))


# ----------------------------------------------------------------------------- JupyterLab for a class
def test_make_lab_settings_are_valid_jupyterlab_settings():
    """jupyter-config/ (passed by `make lab`): no news pop-up, Markdown rendered; valid for this JupyterLab."""
    import json
    import sys
    from pathlib import Path

    import jsonschema

    overrides = json.loads((ROOT / "jupyter-config" / "labconfig" / "default_setting_overrides.json").read_text())
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    for plugin, values in overrides.items():
        package, name = plugin.split(":")
        properties = json.loads((schemas / package / f"{name}.json").read_text())["properties"]
        for key, value in values.items():
            jsonschema.validate(value, properties[key])
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    recipe = (ROOT / "Makefile").read_text().split("\nlab:")[1].split("\n\n")[0]
    assert 'JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter-config"' in recipe and "notebooks/README.md" in recipe


def test_the_course_index_links_every_notebook():
    index = (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\((\d\d_\w+\.ipynb)\)", index)
    on_disk = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(set(linked)) == on_disk, "notebooks/README.md: one row per notebook, linking an existing file"
