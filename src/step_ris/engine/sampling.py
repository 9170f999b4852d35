"""Training batches as pure functions of the step, so a resumed run sees exactly what an uninterrupted one would."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler):
    """Batches of sample indices for steps ``start .. stop - 1``, a pure function of the step.

    The global order is one seeded permutation per epoch; step ``k`` takes global positions
    ``[k * B * world, (k + 1) * B * world)`` and rank ``r`` its ``r``-th block of ``B``.
    """

    def __init__(self, n: int, batch_size: int, start: int, stop: int, *, seed: int = 0, world: int = 1,
                 rank: int = 0):
        self.n, self.batch, self.start, self.stop = n, batch_size, start, stop
        self.seed, self.world, self.rank = seed, world, rank
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng((self.seed, epoch)).permutation(self.n)}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        first = (step * self.world + self.rank) * self.batch
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(first, first + self.batch)]

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class ImageGroupedBatchSampler(StepBatchSampler):
    """Batches of B/K images x K sentences each, for steps ``start .. stop - 1`` (a pure function of the step).

    The images follow one seeded permutation per epoch (an epoch = every image once); the K
    sentences of an image at a step are drawn by a generator seeded with (seed, step, image),
    without replacement when the image has K or more. ``image_of[i]``: the image of sample i.
    """

    def __init__(self, image_of: list[int], batch_size: int, per_image: int, start: int, stop: int, *,
                 seed: int = 0, world: int = 1, rank: int = 0):
        groups: dict[int, list[int]] = {}
        for index, image in enumerate(image_of):
            groups.setdefault(image, []).append(index)
        self.groups = list(groups.values())
        self.per_image = per_image
        super().__init__(len(self.groups), batch_size // per_image, start, stop, seed=seed, world=world, rank=rank)
        self.batch_size = batch_size

    def indices(self, step: int) -> list[int]:
        out = []
        for g in super().indices(step):  # B/K image groups
            members = self.groups[g]
            rng = np.random.default_rng((self.seed, step, g))
            pick = rng.choice(len(members), size=self.per_image, replace=len(members) < self.per_image)
            out.extend(members[int(k)] for k in pick)
        return out


__all__ = ["ImageGroupedBatchSampler", "StepBatchSampler"]
