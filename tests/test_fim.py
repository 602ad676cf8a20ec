"""Fill-in-the-middle in pretraining (codegpt.train.fim): the context-level transform on real
token shards made with a trained tokenizer, its determinism across process counts, and a killed
run with FIM on resuming bit-exactly."""

from __future__ import annotations

import inspect
import json
import string
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codegpt.checkpoint import fim_training
from codegpt.config import load_config
from codegpt.errors import ConfigError
from codegpt.tokenizer.bpe import (EOT, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, TokenizerConfig,
                                   load_tokenizer, train_tokenizer)
from codegpt.tokenizer.encode import TokenizeConfig, tokenize
from codegpt.tokenizer.shards import SequenceIndex
from codegpt.train.batches import IGNORE_INDEX, DistributedBatches, TokenWindows
from codegpt.train.config import TrainConfig
from codegpt.train.fim import SPECIAL_ID, Codec, Fim, FimWindows, make_codec

from conftest import SMOKE, kill_at_checkpoint, run_cli

PRE, MID, SUF, PAD, END = (SPECIAL_ID[t] for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD,
                                                   EOT))
# a source file that holds every special token's text, and non-ASCII characters
LITERAL = ("MARKERS = ['<|fim_prefix|>', '<|fim_middle|>', '<|fim_suffix|>', '<|fim_pad|>',\n"
           "           '<|endoftext|>']  # café, 😀\n\n\ndef strip(s):\n    return s.strip()\n")
SEQ = 128


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A trained tokenizer and token shards of a few standard-library modules and LITERAL."""
    root = tmp_path_factory.mktemp("fim")
    data = root / "data"
    data.mkdir()
    docs = [{"id": f"{i}{j}", "repo_name": f"repo{j}/{mod.__name__}",
             "text": inspect.getsource(mod) + f"\n# copy {j}\n"}
            for i, mod in enumerate([string, textwrap, json.decoder, json.encoder])
            for j in range(3)]
    docs += [{"id": f"lit{j}", "repo_name": f"repo{j}/lit", "text": LITERAL} for j in range(6)]
    docs += [{"id": f"short{j}", "repo_name": f"repo{j % 3}/short",  # many boundaries
              "text": f"def f{j}(x):\n    # add {j}: é\n    return x + {j}\n"}
             for j in range(60)]
    pq.write_table(pa.Table.from_pylist(docs), data / "00000.parquet")
    tok = train_tokenizer(TokenizerConfig(data_dir=str(data), out_dir=str(root / "tok"),
                                          vocab_size=600, sample_mb=5)).parent
    out = root / "tokens"
    tokenize(TokenizeConfig(data_dir=str(data), tokenizer=str(tok), out_dir=str(out),
                            val_fraction=0.2, tokens_per_shard=20_000))
    return tok, out


def windows(shards) -> TokenWindows:
    return TokenWindows(SequenceIndex.open(shards[1], "train", SEQ))


def decode(codec: Codec, ids) -> str:
    return codec.decode_bytes(ids).decode("utf-8")


def pieces(ids: np.ndarray) -> list[np.ndarray]:
    cuts = np.flatnonzero(ids == END)
    return np.split(ids, cuts)  # each after the first starts with its <|endoftext|>


def untransform(piece: list[int], spm: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(prefix, suffix, middle) ids of a piece transformed in PSM (or SPM) order. In SPM the
    prefix and the middle follow <|fim_middle|> together (ids cannot tell where one ends):
    returned as the middle, with an empty prefix. (PSM with an empty prefix and SPM read the
    same: there the two orders are one.)"""
    head = [PRE, SUF] if spm else [PRE]
    assert piece[:len(head)] == head, piece[:5]
    suf, mid = piece.index(SUF), piece.index(MID)
    assert suf < mid and piece.count(PRE) == piece.count(SUF) == piece.count(MID) == 1
    if spm:
        return [], piece[2:mid], piece[mid + 1:]
    return piece[1:suf], piece[suf + 1:mid], piece[mid + 1:]


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_every_document_piece_becomes_prefix_suffix_middle_of_the_same_text(shards, spm_rate):
    """fim_rate=1: every piece (between <|endoftext|> ids) of every window is laid out in PSM
    (or SPM) order, and its parts put back in order are the original text exactly. The window
    is cut back to its length, so its last piece is cut short (and later ones pushed out); a
    piece whose bytes are not whole characters (cut by the window's edge) stays as it was."""
    tok, _ = shards
    codec = make_codec(tok)
    src = windows(shards)
    fim = FimWindows(src, Fim(1.0, spm_rate), codec, seed=3)
    ids = np.arange(len(src))
    plain_in, plain_out = src.batch(ids)
    x, y = fim.batch(ids)
    assert x.shape == plain_in.shape == (len(ids), SEQ) and y.shape == plain_out.shape
    checked = 0
    for row in range(len(ids)):
        original = np.concatenate([plain_in[row], plain_out[row, -1:]])
        window = np.concatenate([x[row], y[row, -1:]])
        window = np.where(window == IGNORE_INDEX, PAD, window)
        new_pieces, old_pieces = pieces(window), pieces(original)
        assert 1 <= len(new_pieces) <= len(old_pieces)
        last = len(new_pieces) - 1
        for k, (new, old) in enumerate(zip(new_pieces, old_pieces)):
            new, old = new.tolist(), old.tolist()
            if k:
                assert new[0] == old[0] == END  # the boundaries stay where they were
                new, old = new[1:], old[1:]
            if not old:
                continue
            if k == last:  # cut short: it still starts as the layout says
                assert new[:2] in ([PRE, SUF] if spm_rate else [PRE],) or new[:1] == [PRE] \
                    or new == old[:len(new)]
                continue
            try:
                text = codec.decode_bytes(old).decode("utf-8")
            except UnicodeDecodeError:
                assert new == old
                continue
            prefix, suffix, middle = untransform(new, spm=bool(spm_rate))
            assert decode(codec, prefix) + decode(codec, middle) + decode(codec, suffix) == text
            checked += 1
    assert checked > 20


def test_a_special_token_s_text_in_a_source_file_stays_text(shards):
    """LITERAL holds every special token's text: the shards hold it as text, and after the
    transform the only special ids of its pieces are the three the transform inserted."""
    tok, _ = shards
    codec = make_codec(tok)
    ids = np.asarray(codec.encode(LITERAL))
    assert not np.isin(ids, list(SPECIAL_ID.values())).any()
    assert codec.decode_bytes(ids).decode() == LITERAL
    fim = Fim(1.0, 0.0)
    assert fim.piece(np.asarray(codec.encode("😀"))[:1], np.random.default_rng(0),
                     codec) is None  # not whole characters: left as it is
    for seed in range(20):
        out = fim.piece(ids, np.random.default_rng(seed), codec)
        assert [out.count(i) for i in (PRE, SUF, MID, END, PAD)] == [1, 1, 1, 0, 0]
        prefix, suffix, middle = untransform(out)
        assert decode(codec, prefix) + decode(codec, middle) + decode(codec, suffix) == LITERAL


def test_padding_takes_no_loss():
    """A transformed window shorter than the original is padded with <|fim_pad|>, and no
    target of the padding takes loss; the special ids the transform inserted do."""
    codec = Codec(encode=lambda text: [],  # each part encodes to nothing: a piece is 3 ids
                  decode_bytes=lambda ids: b"x" * len(ids))

    class Shards:
        seq_len = 12

        def batch(self, indices):
            return np.stack([np.array([7] * 6 + [END] + [8] * 6) for _ in indices])

    src = TokenWindows.__new__(TokenWindows)
    src.index, src.seq_len = Shards(), 12
    x, y = FimWindows(src, Fim(1.0, 0.0), codec, seed=0).batch([0, 1])
    for row in range(2):
        window = np.concatenate([x[row], np.where(y[row, -1:] == IGNORE_INDEX, PAD, y[row, -1:])])
        assert (y[row] == IGNORE_INDEX).sum() == 6  # 13 ids became 3 + 1 + 3
        assert ((window == PAD)[1:] == (y[row] == IGNORE_INDEX)).all()
        assert window.tolist()[:1] == [PRE] and (y[row] == MID).sum() == 2


def test_the_same_step_gives_the_same_batch_on_one_or_two_processes(shards):
    """Each window's draws depend on (seed, epoch, its number): two ranks' slices of a step
    are the one-process batch's rows, transformed alike; another epoch transforms the same
    window otherwise; fim_rate=0 is the plain windows."""
    tok, _ = shards
    src = windows(shards)
    fim = FimWindows(src, Fim(0.5, 0.5), make_codec(tok), seed=11)
    one = DistributedBatches(fim, 8, 4, rank=0, world_size=1, seed=11)
    two = [DistributedBatches(fim, 8, 4, rank=r, world_size=2, seed=11) for r in (0, 1)]
    for _ in range(3):
        (a0, a1), = [one.next_step()]  # 2 micro-batches of 4
        r0, r1 = (b.next_step() for b in two)  # 1 micro-batch of 4 per rank
        for part in (0, 1):  # inputs, then targets
            single = np.concatenate([a0[part].numpy(), a1[part].numpy()])
            split = np.concatenate([r0[0][part].numpy(), r1[0][part].numpy()])
            assert np.array_equal(single, split)
    ids = np.arange(16)
    assert not np.array_equal(fim.batch(ids, epoch=0)[0], fim.batch(ids, epoch=1)[0])
    assert np.array_equal(fim.batch(ids, epoch=1)[0], fim.batch(ids, epoch=1)[0])
    off = FimWindows(src, Fim(0.0, 0.5), make_codec(tok), seed=11)
    assert np.array_equal(off.batch(ids)[0], src.batch(ids)[0])
    before = (fim.pieces, fim.transformed)
    half = fim.batch(np.arange(len(src)))[0]
    transformed = (half == PRE).any(axis=1).mean()
    assert 0.3 < transformed < 0.95  # about half the pieces, and most windows hold one
    share = (fim.transformed - before[1]) / (fim.pieces - before[0])
    assert 0.4 < share < 0.6  # the share of pieces the loader counted as transformed


def test_fim_needs_token_shards_and_a_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="data.fim_rate needs tokenizer=FOLDER"):
        load_config(TrainConfig, SMOKE, ["data.fim_rate=0.5"])
    with pytest.raises(ConfigError, match="not to Codex-S pairs"):
        load_config(TrainConfig, SMOKE, ["data.fim_rate=0.5", "data.format=sft",
                                         f"tokenizer={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data.fim_rate must be in \[0, 1\], got 1.5"):
        load_config(TrainConfig, SMOKE, ["data.fim_rate=1.5"])


@pytest.mark.slow
def test_a_killed_run_with_fim_resumes_bit_exactly(shards, tmp_path):
    tok, data = shards
    args = ["model.n_layer=4", "model.d_model=256", "model.block_size=128", "run.max_steps=20",
            "checkpoint.every=10", "data.val_every=0", "data.fim_rate=0.5",
            "batch.global_batch_tokens=1024", "batch.micro_batch_size=4"]

    def cli(run):
        return [str(SMOKE), f"data_dir={data}", f"tokenizer={tok}", f"out_dir={run}", *args]

    straight = tmp_path / "straight"
    proc = run_cli(cli(straight))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fill-in-the-middle: 50% of the train windows' documents" in proc.stderr
    killed = tmp_path / "killed"
    kill_at_checkpoint(cli(killed), killed)
    proc = run_cli(cli(killed))
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        return {r["step"]: (r["loss"], r["grad_norm"]) for r in rows if "loss" in r}
    a, b = losses(straight), losses(killed)
    assert sorted(a) == list(range(1, 21))
    assert a == b  # bit-identical floats
    assert "fim_rate: 0.5" in (straight / "config.yaml").read_text()
    assert load_tokenizer(tok).token_to_id(FIM_PREFIX) == PRE
    # a run started from it without FIM records what its start learned, and keeps that record
    # when the first run's folder is gone
    tuned = tmp_path / "tuned"
    proc = run_cli([str(SMOKE), f"data_dir={data}", f"tokenizer={tok}", f"out_dir={tuned}",
                    f"init_from={straight}", *args[:3], "run.max_steps=2", "data.val_every=0",
                    "batch.global_batch_tokens=1024", "batch.micro_batch_size=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight.rename(tmp_path / "gone")
    last = sorted((tuned / "checkpoints").iterdir())[-1]
    assert fim_training(last) == {"fim_rate": 0.5, "fim_spm_rate": 0.5,
                                  "checkpoint": str(straight)}
    assert fim_training(sorted((tmp_path / "gone" / "checkpoints").iterdir())[-1])["fim_rate"] \
        == 0.5
