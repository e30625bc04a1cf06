"""asap-runbook: the production-readiness runbook for ASAP agents.

The public surface; everything else is private to the package. Names are imported on first use:
the processes that need one module of the package (the app-introspection child, the reference
agents) do not pay for the engine, the pydantic models and the HTTP client (~0.7 s of CPU).
"""

from ._lazy import exports

__getattr__, __dir__, __all__ = exports(__name__, globals(), {
    ".catalog": ("Catalog", "CatalogItem", "load_catalog"),
    ".engine": ("run_section", "run_section_async"),
    ".errors": ("DeploymentError", "NotAnAsapAgent", "ParamsError", "ProbeError", "PrometheusError", "RunbookError",
                "TargetTimeout", "TargetUnreachable", "UsageError"),
    ".params": ("Params", "Target", "load_params"),
    ".results": ("ExitCode", "Result", "RunResults", "SectionRun", "Status"),
})
