"""Compute's own throttling of scale-set instance updates, behind ARM's.

Microsoft's Compute throttling document: limits per resource and per subscription, per region,
counted per minute ("up to 12 update requests for each VM in one minute", and an aggregate
limit for the subscription's update requests). A refused request gets 429 with Retry-After
and error code ``OperationNotAllowed``; every Compute response names its policies and what is
left of each in ``x-ms-ratelimit-remaining-resource`` (``<policy>;<count>,...``).

The policy names below are UNVERIFIED (Microsoft documents the header's form, e.g.
``Microsoft.Compute/GetVMScaleSet3Min;197``, not the name of every policy); they say which
bucket refused, which is what a client can act on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from azure_cni_sim.armstate import ArmError
from azure_cni_sim.throttling import ServerBucket

RESOURCE_POLICY = "Microsoft.Compute/PutVMScaleSetVMResource1Min"
SUBSCRIPTION_POLICY = "Microsoft.Compute/PutVMScaleSetVMSubscription1Min"


@dataclass(frozen=True)
class ComputeLimits:
    #: update requests per instance per minute
    per_instance: int = 12
    #: update requests of instances per subscription per minute
    per_subscription: int = 1500


class ComputeThrottle:
    """One bucket per instance and one per subscription, each refilled over a minute."""

    def __init__(self, limits: ComputeLimits, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.enabled = enabled
        self._clock = clock
        self._buckets: dict[str, ServerBucket] = {}

    def _bucket(self, key: str, per_minute: int) -> ServerBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = ServerBucket(float(per_minute), per_minute / 60.0, at=self._clock())
            self._buckets[key] = bucket
        return bucket

    def admit_update(self, subscription: str, instance_id: str) -> dict[str, str]:
        """Take a token for an instance update, or raise the 429 Compute answers."""
        mine = self._bucket(instance_id.lower(), self.limits.per_instance)
        shared = self._bucket(f"/subscriptions/{subscription.lower()}",
                              self.limits.per_subscription)
        now = self._clock()
        waits = {RESOURCE_POLICY: mine.wait(now), SUBSCRIPTION_POLICY: shared.wait(now)}
        refused = {p: w for p, w in waits.items() if w > 0} if self.enabled else {}
        if not refused:
            mine.take()
            shared.take()
        headers = {"x-ms-ratelimit-remaining-resource":
                   f"{SUBSCRIPTION_POLICY};{max(0, math.floor(shared.tokens))},"
                   f"{RESOURCE_POLICY};{max(0, math.floor(mine.tokens))}"}
        if refused:
            policy, wait = max(refused.items(), key=lambda item: item[1])
            seconds = max(1, math.ceil(wait))
            raise ArmError(
                429, "OperationNotAllowed",
                "The server rejected the request because too many requests have been received "
                f"for this {'resource' if policy == RESOURCE_POLICY else 'subscription'}. "
                f"Policy {policy.rsplit('/', 1)[-1]}; please retry after {seconds} seconds.",
                {"Retry-After": str(seconds), **headers})
        return headers
