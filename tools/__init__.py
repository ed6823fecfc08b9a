"""Developer tools, run from the checkout root: `python -m tools.NAME --help`."""
