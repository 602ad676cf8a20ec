"""Distributed batches of numbered training examples: token-shard windows or SFT pairs.

The global order is a permutation of all examples drawn from ``(seed, epoch)``; step k of an
epoch takes the next ``global_batch`` examples of it, and each rank reads its own slice of
those (a function of the world size). So the set of sequences behind every optimizer update
is the same for 1 or N processes, no two ranks read the same sequence, and the position is two
integers (epoch, cursor) that go into the checkpoint — no iterator state to replay.

What is drawn from is anything with ``len``, ``seq_len`` and ``batch(indices)``: the trainer
gives it (inputs, targets) pairs of [b, T] arrays — ``TokenWindows`` over token shards,
``codegpt.train.fim.FimWindows`` (the same with fill-in-the-middle), or
``codegpt.train.sft.SftExamples`` — where a target of ``IGNORE_INDEX`` takes no loss. Examples
whose random draws depend on the epoch say so (``draws_per_epoch``) and are given it:
``batch(indices, epoch)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import torch

from codegpt.errors import ConfigError
from codegpt.tokenizer.encode import check_tokenizer
from codegpt.tokenizer.shards import SequenceIndex, read_meta

BatchConfigError = ConfigError  # a batch that cannot be formed is a config problem

# A target the loss skips: F.cross_entropy's ignore_index in GPT.forward (its default, -100).
IGNORE_INDEX = -100


class Examples(Protocol):
    """Numbered examples of one length that batches are drawn from."""

    seq_len: int

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> np.ndarray | tuple[np.ndarray, ...]: ...


class TrainData(NamedTuple):
    """What training reads: the train and val examples, the vocabulary their ids come from,
    and the hash of the tokenizer that made them (None where nothing records it)."""

    train: Examples
    val: Examples | None
    vocab_size: int
    tokenizer_hash: str | None


class TokenWindows:
    """Windows of token shards as (inputs, targets): the targets are the inputs shifted by one,
    every position takes loss."""

    def __init__(self, index: SequenceIndex):
        self.index = index
        self.seq_len = index.seq_len

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        windows = self.index.batch(indices)  # [b, T + 1]
        return windows[:, :-1], windows[:, 1:]


def loss_tokens(targets: torch.Tensor) -> int:
    """How many targets of a batch take loss."""
    return int((targets != IGNORE_INDEX).sum())


def as_tensors(batch):
    """A batch of arrays (one, or a tuple such as (inputs, targets)) as tensors."""
    if isinstance(batch, tuple):
        return tuple(torch.from_numpy(a) for a in batch)
    return torch.from_numpy(batch)


@dataclass
class DataPosition:
    epoch: int = 0
    cursor: int = 0  # examples of this epoch's order already consumed


def plan_batch(global_batch_tokens: int, seq_len: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """Return (global batch in sequences, gradient-accumulation steps), or explain the mismatch."""
    if global_batch_tokens % seq_len:
        raise BatchConfigError(
            f"batch.global_batch_tokens={global_batch_tokens} is not a multiple of the sequence "
            f"length {seq_len} (data.seq_len, or model.block_size)")
    global_batch = global_batch_tokens // seq_len
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        raise BatchConfigError(
            f"a global batch of {global_batch} sequences cannot be split into micro-batches of "
            f"{micro_batch} on {world_size} process(es); make batch.global_batch_tokens a multiple "
            f"of {per_pass * seq_len} or change batch.micro_batch_size")
    return global_batch, global_batch // per_pass


class DistributedBatches:
    def __init__(self, data: Examples, global_batch: int, micro_batch: int, rank: int,
                 world_size: int, seed: int, position: DataPosition | None = None):
        if len(data) < global_batch:
            raise BatchConfigError(
                f"the train split has {len(data)} sequences of {data.seq_len} tokens, fewer than "
                f"one global batch ({global_batch}); add data or lower batch.global_batch_tokens")
        self.data = data
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
            n = len(self.data)
            dtype = np.uint32 if n < 2**32 else np.uint64
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n).astype(dtype)
            self._order_epoch = epoch
        return self._order

    def global_indices(self) -> np.ndarray:
        """Advance one optimizer step; the example ids of the whole global batch."""
        pos = self.position
        if pos.cursor + self.global_batch > len(self.data):  # drop the ragged end of an epoch
            pos.epoch, pos.cursor = pos.epoch + 1, 0
        ids = self.order(pos.epoch)[pos.cursor: pos.cursor + self.global_batch]
        pos.cursor += self.global_batch
        return ids

    def next_step(self) -> list:
        """This rank's micro-batches for the next update: ``accum`` of ``data.batch``'s results
        as tensors (an (inputs, targets) pair of [b, T] from the trainer's data)."""
        ids = self.global_indices().reshape(self.accum, self.world_size, self.micro_batch)
        # examples whose draws depend on the epoch get the one these were drawn from
        epoch = {"epoch": self.position.epoch} if getattr(self.data, "draws_per_epoch",
                                                          False) else {}
        return [as_tensors(self.data.batch(ids[a, self.rank], **epoch))
                for a in range(self.accum)]

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = DataPosition(**state)


def val_batches(data: Examples, n_sequences: int, micro_batch: int, rank: int, world_size: int):
    """This rank's share (every world_size-th) of the first n val examples, in micro-batches."""
    n = min(n_sequences, len(data))
    mine = np.arange(rank, n, world_size)
    for i in range(0, len(mine), micro_batch):
        yield as_tensors(data.batch(mine[i: i + micro_batch]))


def open_token_data(data_dir: str, tokenizer: str, seq_len: int, with_val: bool) -> TrainData:
    """Token shards (``codegpt tokenize``), refused if ``tokenizer`` is given and did not make
    them."""
    meta = read_meta(data_dir)
    if tokenizer:
        check_tokenizer(data_dir, tokenizer)
    val = TokenWindows(SequenceIndex.open(data_dir, "val", seq_len)) if with_val else None
    return TrainData(TokenWindows(SequenceIndex.open(data_dir, "train", seq_len)), val,
                     int(meta["vocab_size"]), meta.get("tokenizer_hash"))
