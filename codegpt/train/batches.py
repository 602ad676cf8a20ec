"""Distributed batches of fixed-length sequences from memory-mapped token shards.

The global order is a permutation of all windows drawn from ``(seed, epoch)``; step k of an
epoch takes the next ``global_batch`` windows of it, and each rank reads its own slice of
those (a function of the world size). So the set of sequences behind every optimizer update
is the same for 1 or N processes, no two ranks read the same sequence, and the position is two
integers (epoch, cursor) that go into the checkpoint — no iterator state to replay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from codegpt.errors import ConfigError
from codegpt.tokenizer.shards import SequenceIndex

BatchConfigError = ConfigError  # a batch that cannot be formed is a config problem


@dataclass
class DataPosition:
    epoch: int = 0
    cursor: int = 0  # windows of this epoch's order already consumed


def plan_batch(global_batch_tokens: int, seq_len: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """Return (global batch in sequences, gradient-accumulation steps), or explain the mismatch."""
    if global_batch_tokens % seq_len:
        raise BatchConfigError(
            f"batch.global_batch_tokens={global_batch_tokens} is not a multiple of the sequence "
            f"length {seq_len} (model.block_size)")
    global_batch = global_batch_tokens // seq_len
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        raise BatchConfigError(
            f"a global batch of {global_batch} sequences cannot be split into micro-batches of "
            f"{micro_batch} on {world_size} process(es); make batch.global_batch_tokens a multiple "
            f"of {per_pass * seq_len} or change batch.micro_batch_size")
    return global_batch, global_batch // per_pass


class DistributedBatches:
    def __init__(self, index: SequenceIndex, global_batch: int, micro_batch: int, rank: int,
                 world_size: int, seed: int, position: DataPosition | None = None):
        if len(index) < global_batch:
            raise BatchConfigError(
                f"the train split has {len(index)} sequences of {index.seq_len} tokens, fewer than "
                f"one global batch ({global_batch}); add data or lower batch.global_batch_tokens")
        self.index = index
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.accum = global_batch // (micro_batch * world_size)
        self.seed = seed
        self.position = position or DataPosition()
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            n = len(self.index)
            dtype = np.uint32 if n < 2**32 else np.uint64
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n).astype(dtype)
            self._order_epoch = epoch
        return self._order

    def global_indices(self) -> np.ndarray:
        """Advance one optimizer step; the window ids of the whole global batch."""
        pos = self.position
        if pos.cursor + self.global_batch > len(self.index):  # drop the ragged end of an epoch
            pos.epoch, pos.cursor = pos.epoch + 1, 0
        ids = self.order(pos.epoch)[pos.cursor: pos.cursor + self.global_batch]
        pos.cursor += self.global_batch
        return ids

    def next_step(self) -> list[torch.Tensor]:
        """This rank's micro-batches for the next update: ``accum`` tensors of [b, T+1]."""
        ids = self.global_indices().reshape(self.accum, self.world_size, self.micro_batch)
        return [torch.from_numpy(self.index.batch(ids[a, self.rank])) for a in range(self.accum)]

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(**state)


def val_batches(index: SequenceIndex, n_sequences: int, micro_batch: int, rank: int,
                world_size: int):
    """This rank's share (every world_size-th) of the first n val windows, in micro-batches."""
    n = min(n_sequences, len(index))
    mine = np.arange(rank, n, world_size)
    for i in range(0, len(mine), micro_batch):
        yield torch.from_numpy(index.batch(mine[i: i + micro_batch]))
