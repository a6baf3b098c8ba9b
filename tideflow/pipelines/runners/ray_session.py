"""Joining or starting Ray for a run, and telling the user why a cluster cannot be used.

``ray.init`` is called only when no Ray is running in this process. Without an
address (argument or ``RAY_ADDRESS``) a local Ray starts, bound to 127.0.0.1 with
its dashboard off and Ray's token authentication on (Ray's default for a local
start). With an address the run joins that cluster, and `join_cluster` first makes
sure the cluster can be used, so that every way of failing is one clear error within
a bounded time instead of a run that sits at 0 events:

* a loopback address stays on loopback: Ray 2.60 replaces ``127.0.0.1``/``localhost``
  in an address by the machine's own address (``resolve_ip_for_localhost``) unless
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and a head started on 127.0.0.1 with that
  setting listens there only: the client then knocked at ``MACHINE_IP:PORT``, where
  nothing listens, and retried for minutes (`loopback_only`);
* the token is found the way Ray's own ``ray start --head`` finds it: ``RAY_AUTH_TOKEN``,
  else the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``; when
  ``RAY_AUTH_MODE`` is unset and a token is found, token authentication is switched on
  for this client (Ray itself never does that for an explicit address, and a head that
  found a token refuses a client without one) (`join_auth`);
* the GCS must answer at the address and accept the token, and the raylet of this
  machine's node (a Ray driver always attaches to a node on its own machine) must
  answer too (`check_cluster`).

Once actors are created, `wait_for_actors` bounds the wait for them to start (an actor
that no node can place, or whose worker never comes up, would otherwise hold the run
at 0 events forever).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable

#: seconds a join, and the start of a run's actors, may take without progress (0: no limit)
START_TIMEOUT_ENV = "TIDEFLOW_RAY_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 60.0
#: where Ray looks for the cluster's token, in Ray's own order (its C++ token loader)
TOKEN_ENV, TOKEN_PATH_ENV, AUTH_MODE_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
_TOKEN_HELP = (f"put the cluster's token (`ray get-auth-token` on the head prints it) in {TOKEN_ENV}, "
               f"in a file named by {TOKEN_PATH_ENV}, or in {DEFAULT_TOKEN_FILE}")


class ClusterUnreachable(ConnectionError):
    """The Ray cluster at an address cannot be used from here; the message (one line) says why
    and what to check."""


class ActorsNotStarted(TimeoutError):
    """A run's actors did not start within the bound; the message names them and what they need."""


def start_timeout_s() -> float | None:
    """The bound on a join and on actors starting: ``TIDEFLOW_RAY_START_TIMEOUT_S`` (0: none),
    default 60 s."""
    raw = os.environ.get(START_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_START_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{START_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return value if value > 0 else None


def loopback_only() -> None:
    """Keep a Ray started or joined from this process on 127.0.0.1.

    Ray 2.60 takes ``_node_ip_address="127.0.0.1"`` (and ``--node-ip-address=127.0.0.1``,
    and a 127.0.0.1 cluster address) but then uses the machine's own address instead, and
    its GCS, raylet and workers listen on every interface, unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the switch Ray uses on laptops). The variable
    is read when Ray is imported, so it is set here for the processes Ray starts, and
    Ray's constant is set too in case Ray was imported already.
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


def split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (or ``[v6]:port``) of a GCS address; None for what Ray resolves itself
    (``auto``, ``local``, ``ray://`` client addresses) or for a string that is not one."""
    if "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_source() -> str | None:
    """Where Ray will read the token from (its own order), or None when there is no token.

    A ``RAY_AUTH_TOKEN_PATH`` that names a missing or empty file is an error here: Ray's
    token loader aborts the whole process on it (a failed C++ check, no exception).
    """
    if os.environ.get(TOKEN_ENV, "").strip():
        return TOKEN_ENV
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        p = Path(path).expanduser()
        try:
            ok = bool(p.read_text().strip())
        except OSError as exc:
            raise ClusterUnreachable(f"{TOKEN_PATH_ENV}={path} cannot be read ({exc.strerror or exc}): "
                                     f"{_TOKEN_HELP}") from None
        if not ok:
            raise ClusterUnreachable(f"{TOKEN_PATH_ENV}={path} is empty: {_TOKEN_HELP}")
        return f"{TOKEN_PATH_ENV}={path}"
    default = DEFAULT_TOKEN_FILE.expanduser()
    try:
        return str(DEFAULT_TOKEN_FILE) if default.read_text().strip() else None
    except OSError:
        return None


def join_auth() -> str:
    """Token authentication for joining a cluster, decided the way ``ray start --head`` decides it.

    ``RAY_AUTH_MODE`` is respected when set; unset, token authentication is switched on when a
    token is found (`token_source`). A client with a token is accepted by a cluster without
    authentication too, while a cluster with a token refuses a client without one, so a found
    token is always sent. Returns a phrase for messages: where the token comes from, or why
    none is sent.
    """
    mode = os.environ.get(AUTH_MODE_ENV, "").strip().lower()
    if mode and mode != "token":
        return f"no token ({AUTH_MODE_ENV}={mode})"
    source = token_source()
    if source is None:
        if mode == "token":
            raise ClusterUnreachable(f"{AUTH_MODE_ENV}=token but no token was found: {_TOKEN_HELP}")
        return "no token (none found)"
    if not mode:
        os.environ[AUTH_MODE_ENV] = "token"  # for this process and the ones it starts
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # Ray caches its configuration: re-read the mode
    AuthenticationTokenLoader.instance().reset_cache()
    return f"the token from {source}"


def _deadline_left(deadline: float | None, cap: float) -> float:
    return cap if deadline is None else max(0.1, min(cap, deadline - time.monotonic()))


def check_cluster(address: str, auth: str = "",
                  timeout_s: float | None = DEFAULT_START_TIMEOUT_S) -> None:
    """Raise `ClusterUnreachable` unless the cluster at ``address`` (``host:port``) can be joined.

    In order, each step bounded (the sum stays within ``timeout_s`` but for the GCS client,
    which Ray bounds at about 40 s by itself): something accepts a connection at the
    address; a Ray GCS answers there and accepts this client's token (``auth`` says which);
    the cluster has a live node on this machine (a Ray driver attaches to one); that node's
    raylet answers (a stopped or unreachable raylet makes ``ray.init`` fail after ~30 s or
    hang, depending on where it fails).
    """
    parts = split_address(address)
    if parts is None:
        return
    host, port = parts
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        socket.create_connection((host, port), timeout=_deadline_left(deadline, 5.0)).close()
    except OSError as exc:
        raise ClusterUnreachable(
            f"nothing answers at {address} ({exc.strerror or type(exc).__name__}): is the head running "
            f"(`ray start --head --port={port}`), and is this the address it printed?") from None

    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.exceptions import AuthenticationError, RayError

    try:
        gcs = GcsClient(address=address)
        nodes = gcs.get_all_node_info(timeout=_deadline_left(deadline, 10.0))
    except AuthenticationError:  # a RayError: caught before the others
        hint = ("use the cluster's token, not this one" if auth.startswith("the token")
                else "the cluster uses token authentication")
        raise ClusterUnreachable(f"the Ray cluster at {address} refused this client, which sent {auth} "
                                 f"(InvalidAuthToken): {hint}: {_TOKEN_HELP}") from None
    except RayError as exc:
        raise ClusterUnreachable(
            f"something listens at {address} but no Ray GCS answered ({str(exc).splitlines()[0][:160]}): "
            f"is {port} the head's --port (`ray status --address {address}` on the head)?") from None
    alive = [n for n in nodes.values() if n.state == GcsNodeInfo.GcsNodeState.ALIVE]
    if not alive:
        raise ClusterUnreachable(f"the Ray cluster at {address} answers but has no live node: "
                                 f"`ray status --address {address}` shows its nodes")
    from ray._private.services import find_node_ids

    local_ids = set(find_node_ids())
    local = [n for n in alive if n.node_id.hex() in local_ids]
    if not local:
        raise ClusterUnreachable(
            f"the Ray cluster at {address} has no node on this machine ({len(alive)} live elsewhere): a Ray "
            f"driver runs on a node of its cluster: run tideflow on the head or a node that joined it "
            f"(`ray start --address={address}`), or submit the command as a job (`tideflow submit`)")
    # the node Ray will attach the driver to: the head if it is here, else any local one
    node = next((n for n in local if n.is_head_node), local[0])
    raylet = f"{node.node_manager_address}:{node.node_manager_port}"
    import grpc

    channel = grpc.insecure_channel(raylet)
    try:
        grpc.channel_ready_future(channel).result(timeout=_deadline_left(deadline, 10.0))
    except grpc.FutureTimeoutError:
        raise ClusterUnreachable(
            f"the Ray cluster at {address} answers, but the raylet of this machine's node does not "
            f"(at {raylet}, as the node registered itself): is that address reachable from here and the "
            f"raylet running? (its log: raylet.out in the node's Ray session folder)") from None
    finally:
        channel.close()


def ensure_ray(address: str | None = None) -> Any:
    """Connect to Ray: reuse a running session, join ``address``/``RAY_ADDRESS``, or start locally.

    A local start listens on 127.0.0.1 only (`loopback_only`), with the dashboard off and
    Ray's token authentication as Ray sets it (on). A join goes through `join_cluster`
    first: a cluster that cannot be used is a `ClusterUnreachable` within the start bound
    (`start_timeout_s`), never a hang.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    parts = split_address(address) if address else None
    if not address or (parts is not None and is_loopback(parts[0])):
        loopback_only()
    import ray

    if ray.is_initialized():
        return ray
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # inside a Ray Job (tideflow submit) the job's runtime_env and ours are merged, ours
    # winning where both set a variable (Ray refuses the overlap otherwise)
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if address:
        join_cluster(address)
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


def join_cluster(address: str) -> str:
    """Prepare this process to join the cluster at ``address`` and check that it can; returns
    the phrase `join_auth` returned.

    Loopback addresses stay on loopback (`loopback_only`), the token is enabled as
    `join_auth` decides, and `check_cluster` runs within `start_timeout_s`.
    """
    parts = split_address(address)
    if parts is None:
        return ""  # auto, local, ray://: Ray resolves and authenticates these itself
    if is_loopback(parts[0]):
        loopback_only()
    auth = join_auth()
    check_cluster(address, auth, start_timeout_s())
    return auth


def wait_for_actors(ray: Any, actors: Iterable[Any], timeout_s: float | None = None) -> None:
    """Return once every actor has started (its constructor ran); raise `ActorsNotStarted` when
    none of the remaining ones starts within ``timeout_s`` (default: `start_timeout_s`; 0: no limit).

    The bound counts from the last actor that started, so a large graph on a slow cluster
    is not cut short while it makes progress. An actor whose constructor failed, or whose
    node was lost, raises Ray's own error here, as its first call would have.
    """
    timeout_s = start_timeout_s() if timeout_s is None else (timeout_s if timeout_s > 0 else None)
    pending = {a.__ray_ready__.remote(): a for a in actors}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout_s)
        if not ready:
            raise ActorsNotStarted(_not_started(ray, list(pending.values()), timeout_s))
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        ray.get(ready)  # raises the actor's creation error, if any
        for ref in ready:
            pending.pop(ref)


def _not_started(ray: Any, actors: list[Any], timeout_s: float | None) -> str:
    """One line: which actors are still waiting, what they ask for, and what the cluster has."""
    described = [_describe_actor(a) for a in actors]
    have: dict[str, float] = {}
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        for n in nodes:
            for k, v in n.get("Resources", {}).items():
                have[k] = max(have.get(k, 0.0), v)
        shown = {k: v for k, v in have.items() if not k.startswith("node:") and "memory" not in k}
        cluster = f"{len(nodes)} live node(s), at most {shown} on one"
    except Exception:  # noqa: BLE001 - the message is what matters; Ray's state API may differ
        cluster = "the cluster's resources unknown"
    # what no single node can give: such an actor waits until a node with it joins
    lacking = sorted({k for _, needs in described for k, v in needs.items()
                      if have and have.get(k, 0.0) < v})
    missing = f"no node has enough {', '.join(lacking)}; " if lacking else ""
    listed = "; ".join(text for text, _ in described[:4])
    if len(actors) > 4:
        listed += f" and {len(actors) - 4} more"
    return (f"{len(actors)} actor(s) of the run did not start within {timeout_s:g} s "
            f"({START_TIMEOUT_ENV}): {listed}; {cluster}: {missing}check that a node has what each asks for "
            f"(learn(num_cpus=, num_gpus=, resources=)) and that its workers start (`ray status`, "
            f"the node's raylet.out); on a cluster that adds nodes on demand, raise {START_TIMEOUT_ENV} "
            f"(0: no limit)")


def _describe_actor(actor: Any) -> tuple[str, dict[str, float]]:
    """``name (STATE, needs {...})`` and the resources it asks for, from the GCS actor table
    (as far as this Ray version tells: a bare handle and no needs otherwise)."""
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        raw = state._connect_and_get_accessor().get_actor_info(actor._actor_id)
        data = gcs_pb2.ActorTableData.FromString(raw)
        needs = {k: v for k, v in data.required_resources.items() if k != "memory"}
        name = data.name or data.class_name
        return f"{name} ({gcs_pb2.ActorTableData.ActorState.Name(data.state)}, needs {needs})", needs
    except Exception:  # noqa: BLE001 - a description is best effort
        return repr(actor), {}
