import numpy as np
import pytest

from codegpt.train.batches import (BatchConfigError, DistributedBatches, plan_batch,
                          val_batches)
from codegpt.tokenizer.shards import SequenceIndex, ShardWriter, write_meta


@pytest.fixture
def index(tmp_path):
    w = ShardWriter(tmp_path, "train", 5000, eot_id=4999, tokens_per_shard=300)
    w.add(np.arange(0, 4000))  # window i starts with token 8*i: ids identify windows
    write_meta(tmp_path, 5000, 4999, "t", "h", {"train": w.finish()}, 300)
    return SequenceIndex.open(tmp_path, "train", seq_len=8)


def window_ids(batches):
    return sorted(int(b[0]) // 8 for mb in batches for b in mb.numpy())


def test_plan_batch_and_its_errors():
    assert plan_batch(8192, 128, 4, 2) == (64, 8)
    with pytest.raises(BatchConfigError, match="multiple of the sequence length"):
        plan_batch(1000, 128, 4, 1)
    with pytest.raises(BatchConfigError, match="cannot be split"):
        plan_batch(128 * 6, 128, 4, 1)


def test_ranks_read_distinct_sequences_and_the_union_does_not_depend_on_world_size(index):
    single = DistributedBatches(index, 8, 2, rank=0, world_size=1, seed=3)
    ranks = [DistributedBatches(index, 8, 2, rank=r, world_size=2, seed=3) for r in range(2)]
    for _ in range(30):  # crosses several epochs
        one = window_ids(single.next_step())
        per_rank = [window_ids(d.next_step()) for d in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == one
        assert len(one) == 8


def test_order_depends_on_seed_and_epoch_and_covers_each_window_once(index):
    d = DistributedBatches(index, 8, 8, rank=0, world_size=1, seed=1)
    n = len(index)
    steps_per_epoch = n // 8
    epoch0 = [i for _ in range(steps_per_epoch) for i in window_ids(d.next_step())]
    assert len(set(epoch0)) == len(epoch0)
    epoch1 = window_ids(d.next_step())
    assert d.position.epoch == 1
    other_seed = DistributedBatches(index, 8, 8, rank=0, world_size=1, seed=2)
    assert window_ids(other_seed.next_step()) != epoch0[:8]
    assert epoch1 != sorted(epoch0[:8])


def test_position_restores_the_exact_continuation(index):
    a = DistributedBatches(index, 8, 4, rank=0, world_size=1, seed=5)
    for _ in range(40):
        a.next_step()
    state = a.state_dict()
    expected = [window_ids(a.next_step()) for _ in range(20)]
    b = DistributedBatches(index, 8, 4, rank=0, world_size=1, seed=5)
    b.load_state_dict(state)
    assert [window_ids(b.next_step()) for _ in range(20)] == expected


def test_val_batches_partition_the_first_n_windows(index):
    seen = [window_ids(val_batches(index, 20, 3, r, 2)) for r in range(2)]
    assert sorted(seen[0] + seen[1]) == list(range(20))


def test_too_little_data_for_one_batch(index):
    with pytest.raises(BatchConfigError, match="fewer than one global batch"):
        DistributedBatches(index, len(index) + 1, 1, 0, 1, 0)
