"""Evaluation: the metrics behind one `Metric` interface, their references, and the evaluator.

A metric is one class with `@register_metric("name")` (the registry `METRICS`, filled as methods
fill `sidbench.methods.METHODS`). Importing this package imports no metric (nor torch): the
built-ins are declared here lazily, by name, class and the line `sidbench list` shows, and
imported on the first `METRICS.get(name)`. A plugin needs only the decorator, in a module named in
`$SIDBENCH_PLUGINS`, or an entry point in the group `sidbench.metrics`. `Metric` (in
`sidbench.eval.base`, which imports torch) is imported on first use.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sidbench.registry import Registry

if TYPE_CHECKING:
    from sidbench.eval.base import Metric


class MetricRegistry(Registry["type[Metric]"]):
    """The registry of metrics: a metric's `name` (its MLflow key, `eval/<name>`) is the name it is
    registered under, set by the registration when the class does not state it itself."""

    def register(self, name: str, description: str = "") -> Callable[[Any], Any]:
        add = super().register(name, description)

        def decorator(cls: Any) -> Any:
            own = cls.__dict__.get("name")
            if own is not None and own != name:
                raise ValueError(f"metric class {cls.__qualname__} says its name is {own!r} but is registered as {name!r}")
            cls.name = name
            return add(cls)

        return decorator


METRICS = MetricRegistry("metric", "sidbench.metrics")
register_metric = METRICS.register

# The built-ins: name, "module:Class", and the class's `description` (the decorator checks both).
METRICS.register_lazy("fd_pixel", "sidbench.eval.digits:FDPixel",
                      "Frechet distance of pixel vectors to the 1797 scikit-learn digits (offline; not FID)")
METRICS.register_lazy("fd_digits", "sidbench.eval.digits:FDDigits",
                      "Frechet distance of the shipped digits classifier's features to the 1797 digits (offline; not FID)")
METRICS.register_lazy("fid", "sidbench.eval.fid:FID",
                      "FID: Inception-v3 features against the dataset's reference statistics (dataset.ref_stats)")
METRICS.register_lazy("fd_dinov2", "sidbench.eval.fd_dinov2:FDDINOv2",
                      "FD-DINOv2: DINOv2 ViT-L/14 features against the dataset's statistics (sidbench stats --metric fd_dinov2)")
METRICS.register_lazy("precision_recall", "sidbench.eval.precision_recall:PrecisionRecall",
                      "precision and recall (k=3) of VGG16 features against the dataset's (sidbench stats --metric precision_recall)")


def __getattr__(name: str) -> Any:  # PEP 562: the torch-importing contract, on first use
    if name == "Metric":
        from sidbench.eval.base import Metric

        globals()["Metric"] = Metric
        return Metric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METRICS", "Metric", "register_metric"]
