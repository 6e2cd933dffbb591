"""The Jinja2 environment every page is rendered with."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from fairsqueeze.store.studies import short_params

from .stats import metric_bounds

TEMPLATES = Path(__file__).parent / "templates"


def environment() -> Environment:
    """Jinja2 with autoescaping on every template: names, labels, parameters and errors
    come from users and are always escaped."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short_params"] = short_params
    env.globals["metric_bounds"] = metric_bounds  # intervals are clipped to them (reports.stats)
    return env
