"""The local runner: every step in this process, one batch at a time, deterministic.

The loop reads the source and hands each batch to the shared data path
(`tideflow.pipelines.runners.data_path.DataPath`: the data-path operators, then every
learn step, strategies' raised events delivered ``event_lag`` batches later), writes
the batch to the sinks and gives the collector its record. A broker source
acknowledges each batch once it is processed (the local runner takes no
checkpoints, so nothing would replay it).
"""

from __future__ import annotations

from typing import Any

from tideflow.connectors.base import Source
from tideflow.pipelines.collector import Collector
from tideflow.pipelines.graph import Graph
from tideflow.pipelines.learn_step import make_learner
from tideflow.pipelines.options import RunOptions
from tideflow.pipelines.runners.data_path import DataPath, Mailbox, held_out_sets, unlabeled_rows
from tideflow.stream.schema import Schema


def run_local(graph: Graph, schema: Schema, collector: Collector, options: RunOptions) -> dict[str, Any]:
    """Run ``graph`` (whose operators are the run's own copies) here; returns the trained strategies."""
    held_out, unlabeled = held_out_sets(graph), unlabeled_rows(graph)
    learners = {s.name: make_learner(graph, s.name, schema, label_delay=options.label_delay,
                                     keep_predictions=options.keep_predictions, held_out=held_out,
                                     unlabeled=unlabeled)
                for s in graph.learners}
    path = DataPath([s.op for s in graph.chain], learners, Mailbox(options.event_lag))
    sinks = [s.op for s in graph.sinks]
    source = graph.source.op
    # a broker source acknowledges a batch once it is processed (no checkpoints here)
    acks = isinstance(source, Source) and type(source).commit is not Source.commit
    try:
        for seq, batch in enumerate(source.batches()):
            if options.max_batches is not None and seq >= options.max_batches:
                break
            rows = len(batch)
            out, _, side, results = path.step(seq, batch)
            if out is not None and len(out):
                for sink in sinks:
                    sink.write(out)
            collector.add(seq, rows, side, results)
            if acks:
                source.commit(source.snapshot())
    finally:
        if isinstance(source, Source):
            source.close()  # broker connections (a later run reconnects)
    collector.finish(path.finish())
    for sink in sinks:
        sink.close()
    return {name: lrn.strategies() for name, lrn in learners.items()}
