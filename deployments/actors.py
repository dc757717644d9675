"""The application's named, detached Ray actors (the voice store and the task manager)."""

from __future__ import annotations

from typing import Any

import ray

NAMESPACE = "cosyvoice-serve"


def actor_name(app_name: str, role: str) -> str:
    return f"{app_name}-{role}"


def named_detached_actor(actor_class: type, app_name: str, role: str, *args: Any, **options: Any) -> Any:
    """The application's actor `role`, created with `args` by whichever caller asks first.

    Named, so every replica finds the same one; detached, so it outlives the replica that created
    it; restarted by Ray whenever it dies (it restores itself from its store).
    """
    remote_class = ray.remote(num_cpus=0, max_restarts=-1, **options)(actor_class)
    return remote_class.options(name=actor_name(app_name, role), namespace=NAMESPACE, lifetime="detached",
                                get_if_exists=True).remote(*args)


def existing_actor(app_name: str, role: str) -> Any:
    """The actor `role` of a running application (ValueError if there is none)."""
    return ray.get_actor(actor_name(app_name, role), namespace=NAMESPACE)
