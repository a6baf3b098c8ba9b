"""Ray's own ``ray start`` command, for a worker node that stays on 127.0.0.1.

Used by ``test_join_cluster.py``: ``python ray_worker_node.py start --address=127.0.0.1:PORT ...``
takes exactly the arguments of ``ray start`` and runs Ray's CLI code with one
difference. In Ray 2.60, ``ray start --address=...`` refuses to start a worker node
when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the flag's name says laptops), and with
the flag on it replaces every loopback address (the head's and its own) by the
machine's address and listens on every interface. So the real CLI cannot join a
worker to a head that listens on 127.0.0.1 only. Here the flag is 0 for everything
(addresses stay on loopback, servers bind 127.0.0.1, as for the head) and only the
CLI's refusal reads it as on.
"""

from __future__ import annotations

import os
import sys
import types

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when Ray is imported


def main() -> None:
    import ray._private.ray_constants as constants
    import ray.scripts.scripts as cli

    # the CLI module's own view of the constants: a copy in which multi-node clusters are on
    view = types.ModuleType(constants.__name__)
    view.__dict__.update(constants.__dict__)
    view.ENABLE_RAY_CLUSTER = True
    cli.ray_constants = view  # type: ignore[attr-defined]
    sys.argv = ["ray", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
