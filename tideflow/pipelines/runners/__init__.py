"""Runners: what executes a graph (``local``: every step in this process; ``ray``: one actor per step).

Both drive the same data path (`tideflow.pipelines.runners.data_path`) and hand the
same records to the run's `Collector`, so the same graph and input give the same
metrics on both. `tideflow.pipelines.run.run_graph` picks one.
"""
