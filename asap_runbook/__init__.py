"""asap-runbook: the production-readiness runbook for ASAP agents.

The public surface; everything else is private to the package.
"""

from .catalog import Catalog, CatalogItem, load_catalog
from .engine import run_section, run_section_async
from .errors import (
    DeploymentError, NotAnAsapAgent, ParamsError, ProbeError, PrometheusError, RunbookError,
    TargetTimeout, TargetUnreachable, UsageError,
)
from .params import Params, Target, load_params
from .results import ExitCode, Result, RunResults, SectionRun, Status

__all__ = [
    "Catalog", "CatalogItem", "load_catalog", "run_section", "run_section_async", "DeploymentError",
    "NotAnAsapAgent", "ParamsError", "ProbeError", "PrometheusError", "RunbookError", "TargetTimeout",
    "TargetUnreachable", "UsageError", "Params", "Target", "load_params", "ExitCode", "Result", "RunResults",
    "SectionRun", "Status",
]
