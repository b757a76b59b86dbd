"""tools/execute_notebook.py: saved progress bars read their final state outside JupyterLab too."""
import importlib.util
import json
import re

import nbformat
import pytest

from minidalle import ROOT

spec = importlib.util.spec_from_file_location("execute_notebook", ROOT / "tools" / "execute_notebook.py")
execute_notebook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebook)

VIEW, STATE = execute_notebook.WIDGET_VIEW, execute_notebook.WIDGET_STATE
BAR = re.compile(r"^(?P<desc>[^|]*)100%\|█{10}\| (?P<n>\d+)/(?P=n) \[")


def _model(name, **state):
    return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": {"_model_name": name, **state}}


def _notebook(models, outputs):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("for step in tqdm(range(5)): ...")
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    cell.outputs = outputs
    nb.cells = [cell, nbformat.v4.new_markdown_cell("text")]
    nb.metadata["widgets"] = {STATE: {"state": models, "version_major": 2, "version_minor": 0}}
    return nb


def _view(model_id, text):
    return nbformat.v4.new_output("display_data", data={VIEW: {"model_id": model_id, "version_major": 2,
                                                                "version_minor": 0}, "text/plain": text})


def test_a_bar_is_rewritten_from_its_stored_state():
    models = {
        "box": _model("HBoxModel", children=["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"]),
        "left": _model("HTMLModel", value="train: 60%"),
        "bar": _model("FloatProgressModel", value=3.0, max=5.0, bar_style="danger"),
        "right": _model("HTMLModel", value="\u20073/5\u2007[00:01&lt;00:00,\u20074.50it/s,\u2007loss=0.25]"),
        "nobox": _model("HBoxModel", children=["IPY_MODEL_left"]),  # not a tqdm bar
        "vbox": _model("VBoxModel", children=["IPY_MODEL_left"]),
        "open": _model("HBoxModel", children=["IPY_MODEL_empty", "IPY_MODEL_bar", "IPY_MODEL_right"]),
        "empty": _model("HTMLModel", value=""),
    }
    outputs = [_view("box", "train:   0%|          | 0/5 [00:00<?, ?it/s]"), _view("nobox", "HBox()"),
               _view("vbox", "VBox()"), _view("open", "0it [00:00, ?it/s]"), _view("missing", "HBox()")]
    nb = _notebook(models, outputs)
    assert execute_notebook.tidy(nb) == 3  # one timestamp, two bars
    texts = [output.data["text/plain"] for output in nb.cells[0].outputs]
    assert texts == ["train: 60%|██████    | 3/5 [00:01<00:00, 4.50it/s, loss=0.25]", "HBox()", "VBox()",
                     " 3/5 [00:01<00:00, 4.50it/s, loss=0.25]", "HBox()"]
    assert "execution" not in nb.cells[0].metadata
    assert nb.metadata["widgets"][STATE]["state"] == models  # JupyterLab still draws the widget
    assert execute_notebook.tidy(nb) == 0  # tidy twice = tidy once


def test_a_traceback_names_package_files_relative_to_the_checkout():
    nb = _notebook({}, [nbformat.v4.new_output("error", ename="ValueError", evalue="unknown word", traceback=[
        "\u001b[36mFile \u001b[39m\u001b[32m/home/someone/course/minidalle/world.py:161\u001b[39m, in parse_prompt",
        "Cell In[3], line 1", "ValueError: unknown word 'pink' (see /docs/minidalle/world.md)"])])
    assert execute_notebook.tidy(nb) == 2  # one timestamp, one traceback
    assert nb.cells[0].outputs[0].traceback == [
        "\u001b[36mFile \u001b[39m\u001b[32mminidalle/world.py:161\u001b[39m, in parse_prompt",
        "Cell In[3], line 1", "ValueError: unknown word 'pink' (see /docs/minidalle/world.md)"]  # not a .py: kept
    assert execute_notebook.tidy(nb) == 0


def test_a_real_tqdm_bar_saved_by_nbclient_reads_100_percent():
    """Run tqdm.auto in a kernel as the course's notebooks do, save the widget state, then tidy."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    source = "from tqdm.auto import tqdm\nfor i in tqdm(range(3), desc='count'):\n    pass"
    nb.cells = [nbformat.v4.new_code_cell(source)]
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True).execute()
    [output] = [o for o in nb.cells[0].outputs if VIEW in o.get("data", {})]
    assert output.data["text/plain"].startswith("count:   0%")  # what GitHub would show without the tool
    execute_notebook.tidy(nb)
    assert BAR.match(output.data["text/plain"]), output.data["text/plain"]
    assert BAR.match(output.data["text/plain"])["desc"] == "count: "


def test_the_committed_notebooks_bars_rewrite_without_executing():
    """Tidy reads the widget state nbclient/nbconvert stored in the committed notebooks: no kernel needed."""
    bars = 0
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        models = execute_notebook.widget_models(nb)
        execute_notebook.tidy(nb)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                view = output.get("data", {}).get(VIEW)
                if view and execute_notebook.progress_text(view["model_id"], models) is not None:
                    bars += 1
                    bar = models[models[view["model_id"]]["state"]["children"][1].removeprefix("IPY_MODEL_")]
                    if bar["state"]["value"] == bar["state"]["max"]:
                        assert BAR.match(output.data["text/plain"]), (path.name, output.data["text/plain"])
            assert "execution" not in cell.metadata
    assert bars >= 1, "the course's training notebooks save at least one progress bar"


def test_the_command_line(tmp_path, capsys):
    path = tmp_path / "nb.ipynb"
    models = {"box": _model("HBoxModel", children=["IPY_MODEL_l", "IPY_MODEL_b", "IPY_MODEL_r"]),
              "l": _model("HTMLModel", value="100%"), "b": _model("IntProgressModel", value=2, max=2),
              "r": _model("HTMLModel", value="\u20072/2")}
    nbformat.write(_notebook(models, [_view("box", "  0%|          | 0/2")]), path)
    assert execute_notebook.main(["--check", str(path)]) == 1
    assert execute_notebook.main(["--tidy-only", str(path)]) == 0
    assert execute_notebook.main(["--check", str(path)]) == 0
    [output] = nbformat.read(path, as_version=4).cells[0].outputs
    assert output.data["text/plain"] == "100%|██████████| 2/2"
    with pytest.raises(SystemExit, match="no notebook"):
        execute_notebook.main(["--tidy-only", "99"])
    capsys.readouterr()


def test_timings_name_each_cells_wall_time_slowest_first_and_nothing_is_saved_of_them(tmp_path):
    path, report = tmp_path / "nb.ipynb", tmp_path / "timings.json"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("why"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(1.5)")]
    nbformat.write(nb, path)
    assert execute_notebook.main([str(path), "--timings", str(report)]) == 0
    timings = json.loads(report.read_text())["nb.ipynb"]
    slow, fast = timings["cells"]
    assert (slow["cell"], slow["first_line"], fast["cell"]) == (2, "import time", 0)
    assert 1.4 <= slow["seconds"] <= timings["total_s"] and fast["seconds"] < 1.0
    assert all("execution" not in cell.metadata for cell in nbformat.read(path, as_version=4).cells)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2])
def test_committed_notebooks_are_tidy(path):
    """What is committed reads well on GitHub: no timestamps, bars in their final state (run --tidy-only)."""
    nb = nbformat.read(path, as_version=4)
    assert execute_notebook.tidy(nb) == 0, f"run: python tools/execute_notebook.py --tidy-only {path.name[:2]}"
