"""Metric observers: one metric per module, each watching a run's batches (see `base.Observer`)."""

from tideflow.pipelines.metrics.base import BatchRecord, Observer

__all__ = ["BatchRecord", "Observer"]
