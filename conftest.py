"""Root pytest configuration.

nbval compares only the outputs a notebook cell marks with `# NBVAL_CHECK_OUTPUT`
(--nbval-lax); of those, never stderr (warnings, progress bars) nor rich HTML/widgets.
"""


def pytest_collectstart(collector):
    path = getattr(collector, "path", None)
    if path is not None and path.suffix == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare += ("stderr", "text/html", "application/vnd.jupyter.widget-view+json")
