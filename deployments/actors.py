"""The application's named, detached Ray actors (the voice store and the task manager)."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

NAMESPACE = "cosyvoice-serve"


def actor_name(app_name: str, role: str) -> str:
    return f"{app_name}-{role}"


def named_detached_actor(actor_class: type, app_name: str, role: str, *args: Any, **options: Any) -> Any:
    """The application's actor `role`, created with `args` by whichever caller asks first.

    Named, so every replica finds the same one; detached, so it outlives the replica that created
    it; restarted by Ray whenever it dies (it restores itself from its store). Placed beside its
    creator (the HTTP edge, on the head node of a cluster) rather than wherever a zero-CPU actor
    lands: a worker node that is lost with the model replicas on it then does not take the task
    manager's running tasks with it. Soft, so a restart goes elsewhere when that node is gone.
    """
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    remote_class = ray.remote(num_cpus=0, max_restarts=-1, **options)(actor_class)
    return remote_class.options(name=actor_name(app_name, role), namespace=NAMESPACE, lifetime="detached",
                                get_if_exists=True, scheduling_strategy=here).remote(*args)


def existing_actor(app_name: str, role: str) -> Any:
    """The actor `role` of a running application (ValueError if there is none)."""
    return ray.get_actor(actor_name(app_name, role), namespace=NAMESPACE)
