"""Joining or starting Ray for a run.

``ray.init`` is called only when no Ray is running in this process; with an
address (argument or ``RAY_ADDRESS``) it joins that cluster, otherwise it
starts a local one bound to 127.0.0.1 with its dashboard off. Ray's token
authentication is left as Ray sets it (on by default for local clusters).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def loopback_only() -> None:
    """Keep a Ray started from this process on 127.0.0.1.

    Ray 2.60 takes ``_node_ip_address="127.0.0.1"`` but then registers the node under the
    machine's own address and its GCS, raylet and workers listen on every interface,
    unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the switch Ray uses on laptops). The
    variable is read when Ray is imported, so it is set here for the processes Ray
    starts, and Ray's constant is set too in case Ray was imported already.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None:
        consts.ENABLE_RAY_CLUSTER = False


def enable_token_auth() -> None:
    """What ``ray.init`` does before it starts a local cluster, for ``ray.cluster_utils.Cluster``
    (which does not): token authentication on unless ``RAY_AUTH_MODE`` says otherwise, and a
    token created when there is none."""
    from ray._private.authentication.authentication_token_setup import (enable_token_auth_by_default,
                                                                         ensure_token_if_auth_enabled)

    loopback_only()
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


def ensure_ray(address: str | None = None) -> Any:
    """Connect to Ray: reuse a running session, join ``address``/``RAY_ADDRESS``, or start locally.

    A local start listens on 127.0.0.1 only (`loopback_only`), with the dashboard off and
    Ray's token authentication as Ray sets it (on).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        loopback_only()
    import ray

    if ray.is_initialized():
        return ray
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # inside a Ray Job (tideflow submit) the job's runtime_env and ours are merged, ours
    # winning where both set a variable (Ray refuses the overlap otherwise)
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        ray.init(
            include_dashboard=False,
            runtime_env={"env_vars": env},
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            configure_logging=False,
        )
    return ray
