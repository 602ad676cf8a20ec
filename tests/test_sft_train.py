"""Codex-S fine-tuning: `codegpt train configs/train/sft.yaml model.init_from=...` on the pairs of
`codegpt sft-data` (codegpt/train/sft.py, and init_from / data.format=sft in the trainer)."""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from codegpt.cli import main
from codegpt.config import load_config, to_dict
from codegpt.errors import ConfigError
from codegpt.model import GPT, ModelConfig
from codegpt.tokenizer.bpe import EOT, load_tokenizer
from codegpt import checkpoint as cp
from codegpt.train import checkpoint as ckpt
from codegpt.train.batches import IGNORE_INDEX, DistributedBatches
from codegpt.checkpoint import list_checkpoints, load_checkpoint_model
from codegpt.train.config import TrainConfig
from codegpt.train.metrics import read_metrics
from codegpt.pairs import read_pairs
from codegpt.train.sft import open_sft_data
from codegpt.train.trainer import Trainer

from conftest import REPO, kill_at_checkpoint, run_cli

SFT_YAML = REPO / "configs" / "train" / "sft.yaml"
MODEL = dict(n_layer=2, n_head=4, d_model=32, block_size=64)
GLOBAL_BATCH = 8  # pairs per update: batch.global_batch_tokens=512 at block_size 64


def pair(i: int) -> dict:
    """A HumanEval-shaped pair; completions of 2..4 lines, so micro-batches hold different
    numbers of loss tokens."""
    prompt = f'def add_{i}(x):\n    """Return x plus {i}."""\n'
    body = "".join(f"    y = y * {k + 1}\n" for k in range(i % 3))
    return {"prompt": prompt, "completion": f"    y = x + {i}\n{body}    return y\n"}


def write_pairs(folder: Path) -> None:
    """24 ordinary train pairs, one whose completion holds the text <|endoftext|>, and (last) one
    too long for a 64-token context; 6 val pairs."""
    folder.mkdir(parents=True)
    train = [pair(i) for i in range(24)]
    train.append({"prompt": 'def end():\n    """The end marker."""\n',
                  "completion": '    return "<|endoftext|>"\n'})
    train.append({"prompt": 'def long():\n    """' + "Words and more words. " * 20 + '"""\n',
                  "completion": "    return 1\n"})
    val = [pair(i) for i in range(100, 106)]
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        (folder / name).write_text("".join(json.dumps({**r, "id": str(n)}) + "\n"
                                           for n, r in enumerate(rows)))


def pretrained(run_dir: Path, tokenizer: Path, tokenizer_path: str | None = None,
               **model_kw) -> Path:
    """A random model saved as a pretraining run's checkpoint that records its tokenizer (its
    hash, as the trainer records it; its config names it as ``tokenizer_path``, by default
    ``tokenizer``); the run folder (init_from takes its newest checkpoint)."""
    from codegpt.tokenizer.bpe import tokenizer_hash

    torch.manual_seed(0)
    vocab = load_tokenizer(tokenizer).get_vocab_size()
    cfg = TrainConfig(tokenizer=tokenizer_path or str(tokenizer),
                      model=ModelConfig(**{**MODEL, "vocab_size": vocab, **model_kw}))
    model = GPT(cfg.model)
    ckpt.save_checkpoint(
        run_dir / "checkpoints", 7, model_state=model.state_dict(),
        optim_state={"state": {}, "param_groups": []}, sched_state={},
        trainer_state={"step": 7, "data": {}, "tokens_seen": 0, "world_size": 1},
        config_yaml=yaml.safe_dump(to_dict(cfg), sort_keys=False), rank=0,
        barrier=lambda: None, keep_last=3, tokenizer_hash=tokenizer_hash(tokenizer),
        tied=cfg.model.tie_embeddings)
    return run_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from test_generate import make_tokenizer

    root = tmp_path_factory.mktemp("sft")
    tok = make_tokenizer(root)
    other = make_tokenizer(root / "other", other=True)  # the same size, trained on other data
    write_pairs(root / "pairs")
    return SimpleNamespace(root=root, tok=tok, other_tok=other, pairs=root / "pairs",
                           start=pretrained(root / "pretrain", tok))


def overrides(env, out, *extra) -> list[str]:
    return [f"data_dir={env.pairs}", f"tokenizer={env.tok}", f"model.init_from={env.start}",
            f"out_dir={out}", f"batch.global_batch_tokens={GLOBAL_BATCH * 64}",
            "batch.micro_batch_size=4", "run.max_steps=4", "optim.warmup_steps=1",
            "data.val_every=0", "checkpoint.every=0", *extra]


def sft_config(env, out, *extra) -> TrainConfig:
    return load_config(TrainConfig, SFT_YAML, overrides(env, out, *extra))


def token_mean_loss(model, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """The mean cross-entropy over the targets that take loss, computed apart from the trainer."""
    logits, _ = model(torch.from_numpy(x))
    total = F.cross_entropy(logits.flatten(0, 1).float(), torch.from_numpy(y).flatten(),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / int((y != IGNORE_INDEX).sum())


def step_records(run: Path, key: str = "loss") -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if key in r}


# --- the examples ------------------------------------------------------------------------------

def test_loss_tokens_are_the_completion_and_the_end_of_text(env):
    data = open_sft_data(str(env.pairs), str(env.tok), 64, with_val=True)
    rows = read_pairs(env.pairs, "train")
    assert data.train.dropped == 1 and len(data.train) == len(rows) - 1  # the long one
    assert len(data.val) == 6
    tok = plain = load_tokenizer(env.tok)
    eot = tok.token_to_id(EOT)
    x, y = data.train.batch(range(len(data.train)))
    straddled = 0
    for (prompt, completion), xr, yr in zip(rows[:-1], x, y):
        ids = plain.encode(prompt + completion, add_special_tokens=False).ids
        assert xr[: len(ids)].tolist() == ids and (xr[len(ids):] == eot).all()  # eot padding
        loss_ids = yr[yr != IGNORE_INDEX]
        assert loss_ids[-1] == eot and eot not in loss_ids[:-1]  # a literal <|endoftext|> is text
        assert (yr[len(ids):] == IGNORE_INDEX).all()  # nothing after the appended eot
        text = tok.decode(loss_ids[:-1].tolist())
        assert text.endswith(completion)
        head = text[: len(text) - len(completion)]  # the prompt's tail in the straddling token
        assert prompt.endswith(head) and len(head) < len(tok.decode(loss_ids[:1].tolist()))
        straddled += bool(head)
        # every loss token is a completion token: the targets before them are all ignored
        first = int(np.flatnonzero(yr != IGNORE_INDEX)[0])
        assert (yr[first: len(ids)] != IGNORE_INDEX).all()
        assert ids[first + 1:] == loss_ids[:-1].tolist()
    assert straddled > 0, "no pair exercises a token that straddles the prompt's end"


def test_prompt_positions_get_exactly_zero_gradient(env, monkeypatch):
    data = open_sft_data(str(env.pairs), str(env.tok), 64, with_val=False)
    x, y = data.train.batch(range(6))
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MODEL, vocab_size=load_tokenizer(env.tok).get_vocab_size()))
    seen, cross_entropy = {}, F.cross_entropy

    def spy(logits, targets, **kw):  # the logits GPT.forward takes the loss of
        logits.retain_grad()
        seen["logits"] = logits
        return cross_entropy(logits, targets, **kw)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
    loss.backward()
    grad = seen["logits"].grad.view(*y.shape, -1)
    ignored = torch.from_numpy(y == IGNORE_INDEX)
    assert ignored.any() and (~ignored).any()
    assert torch.count_nonzero(grad[ignored]) == 0  # prompt and padding: exactly zero
    assert (grad[~ignored].abs().sum(-1) > 0).all()  # every completion position: some gradient
    for row in range(6):  # ignored = the prompt up to the straddling token, and the padding
        tokens, first = data.train.example(row)
        assert ignored[row, : first - 1].all()
        assert not ignored[row, first - 1: len(tokens) - 1].any()


# --- the trainer -------------------------------------------------------------------------------

def test_first_step_is_the_checkpoints_global_token_mean_for_any_micro_batch_split(env, tmp_path):
    """Step 1's loss is the checkpoint's mean over the loss tokens of the global batch, the same
    for 1 micro-batch of 8 pairs and 4 of 2 (padding gives them different token counts)."""
    cfg = sft_config(env, tmp_path / "probe")
    data = open_sft_data(str(env.pairs), str(env.tok), 64, with_val=False)
    batches = DistributedBatches(data.train, GLOBAL_BATCH, GLOBAL_BATCH, 0, 1, cfg.run.seed)
    x, y = data.train.batch(batches.global_indices())
    model, _ = load_checkpoint_model(env.start)
    expected = token_mean_loss(model, x, y)
    expected.backward()
    expected_norm = float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
    with torch.no_grad():
        micro_means = [float(token_mean_loss(model, x[i: i + 2], y[i: i + 2]))
                       for i in (0, 2, 4, 6)]
    expected = expected.item()
    assert np.mean(micro_means) != pytest.approx(expected, rel=1e-6), "a split that matters"
    for micro in (8, 2):
        run = tmp_path / f"micro{micro}"
        Trainer(sft_config(env, run, f"batch.micro_batch_size={micro}", "run.max_steps=1")).fit()
        first = step_records(run)[1]
        assert first["loss"] == pytest.approx(expected, rel=1e-5), micro
        assert first["grad_norm"] == pytest.approx(expected_norm, rel=1e-4), micro
        assert first["loss_tokens"] == int((y != IGNORE_INDEX).sum())


def test_fine_tuning_a_model_of_the_new_options_with_muon_keeps_its_architecture(env, tmp_path):
    """Codex-S from a checkpoint with rotary, RMSNorm, SwiGLU, QK-norm, no biases and an untied
    head: the run's model is the checkpoint's (no model key given), its first loss is the
    checkpoint's own mean loss on the batch, and Muon trains it."""
    options = dict(positions="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False,
                   tie_embeddings=False)
    start = pretrained(tmp_path / "modern", env.tok, **options)
    run = tmp_path / "sft"
    cfg = load_config(TrainConfig, SFT_YAML, [*overrides(env, run, "run.max_steps=2"),
                                              f"model.init_from={start}", "optim.name=muon"])
    data = open_sft_data(str(env.pairs), str(env.tok), 64, with_val=False)
    batches = DistributedBatches(data.train, GLOBAL_BATCH, GLOBAL_BATCH, 0, 1, cfg.run.seed)
    x, y = data.train.batch(batches.global_indices())
    model, mcfg = load_checkpoint_model(start)
    assert all(getattr(mcfg, k) == v for k, v in options.items())
    with torch.no_grad():
        expected = float(token_mean_loss(model, x, y))
    Trainer(cfg).fit()
    records = step_records(run)
    assert records[1]["loss"] == pytest.approx(expected, rel=1e-5)
    tuned, tuned_cfg = load_checkpoint_model(run)
    assert all(getattr(tuned_cfg, k) == v for k, v in options.items())
    assert not torch.equal(tuned.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(tuned.blocks[0].mlp.c_fc.weight, model.blocks[0].mlp.c_fc.weight)


def test_a_checkpoint_of_another_tokenizer_or_model_is_refused(env, tmp_path):
    from test_generate import make_checkpoint

    with pytest.raises(ConfigError, match=r"trained with the tokenizer .*another one"):
        Trainer(sft_config(env, tmp_path / "a", f"tokenizer={env.other_tok}"))
    with pytest.raises(ConfigError, match=r"model.n_layer=3 but init_from=.* n_layer=2"):
        Trainer(sft_config(env, tmp_path / "b", "model.n_layer=3"))
    with pytest.raises(ConfigError, match=r"model.d_model=128 .* d_model=32"):
        Trainer(sft_config(env, tmp_path / "c", "model.size=tiny"))
    Trainer(sft_config(env, tmp_path / "d", "model.dropout=0.1"))  # not the weights' shape: fine
    # a checkpoint that does not record its tokenizer: checked by the vocabulary size
    unrecorded, _ = make_checkpoint(tmp_path / "e", vocab_size=300, **MODEL)
    with pytest.raises(ConfigError, match="vocabulary of 300 ids"):
        Trainer(sft_config(env, tmp_path / "f", f"model.init_from={unrecorded}"))
    with pytest.raises(ConfigError, match="data.format=sft needs tokenizer="):
        sft_config(env, tmp_path / "g", "tokenizer=")


def test_init_from_checks_the_recorded_tokenizer_from_any_working_directory(env, tmp_path,
                                                                           monkeypatch):
    """The pretraining run named its tokenizer by a path relative to where it ran. From another
    working directory, where that path is missing or holds another tokenizer, the check is the
    same: by the hash the checkpoint records, against the data's."""
    from codegpt.tokenizer.bpe import tokenizer_hash

    start = pretrained(tmp_path / "pretrain", env.tok, tokenizer_path="runs/tokenizer/default")
    missing, other = tmp_path / "missing", tmp_path / "other"
    missing.mkdir()
    shutil.copytree(env.other_tok, other / "runs" / "tokenizer" / "default")
    for cwd in (missing, other):
        monkeypatch.chdir(cwd)
        Trainer(sft_config(env, tmp_path / f"{cwd.name}_ok", f"model.init_from={start}"))
        with pytest.raises(ConfigError, match=r"init_from=.* was trained with the tokenizer "
                                              r"\w{12}, but the data's ids come from another one"):
            Trainer(sft_config(env, tmp_path / f"{cwd.name}_bad", f"model.init_from={start}",
                               f"tokenizer={env.other_tok}"))
    monkeypatch.chdir(missing)  # and the command line, from there, with relative paths
    assert main(["train", str(SFT_YAML), *overrides(env, "run", "model.init_from=../pretrain",
                                                     "run.max_steps=1")]) == 0
    saved = missing / "run" / "checkpoints" / "step_0000001"
    assert cp.checkpoint_tokenizer_hash(saved) == tokenizer_hash(env.tok)  # recorded again


def test_cli_fine_tunes_validates_on_the_val_pairs_and_plots(env, tmp_path, capsys):
    run = tmp_path / "run"
    args = overrides(env, run, "run.max_steps=6", "data.val_every=3", "data.val_sequences=100",
                     "checkpoint.every=3", "optim.lr=3e-3")
    assert main(["train", str(SFT_YAML), *args]) == 0
    steps = step_records(run)
    assert sorted(steps) == list(range(1, 7)) and steps[6]["loss"] < steps[1]["loss"]
    vals = {s: r["val_loss"] for s, r in step_records(run, "val_loss").items()}
    assert sorted(vals) == [3, 6]
    # val_loss: the token mean over all val pairs' completions, with the weights of that step
    val = open_sft_data(str(env.pairs), str(env.tok), 64, with_val=True).val
    for step, value in vals.items():
        model, _ = load_checkpoint_model(run / "checkpoints" / f"step_{step:07d}")
        with torch.no_grad():
            assert value == pytest.approx(float(token_mean_loss(model, *val.batch(range(6)))),
                                          rel=1e-5)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["format"] == "sft" and "init_from" not in saved["model"]
    assert Path(saved["init_from"]) == env.start / "checkpoints" / "step_0000007"
    assert main(["plot", str(run)]) == 0 and (run / "loss.png").is_file()
    capsys.readouterr()
    assert main(["train", str(SFT_YAML), *overrides(env, tmp_path / "x",
                                                     f"tokenizer={env.other_tok}")]) == 2
    assert "error: init_from=" in capsys.readouterr().err


# --- resume and processes (subprocesses, as test_train.py) ------------------------------------

@pytest.fixture(scope="module")
def slower_start(env):
    """A start checkpoint slow enough that a kill lands between two checkpoints."""
    return pretrained(env.root / "pretrain_big", env.tok, n_layer=4, d_model=128)


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_losses(env, slower_start, tmp_path):
    def args(run):
        return [str(SFT_YAML), *overrides(env, run, f"model.init_from={slower_start}",
                                          "run.max_steps=20", "checkpoint.every=10")]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_cli(args(straight))
    assert proc.returncode == 0, proc.stderr[-3000:]
    kill_at_checkpoint(args(killed), killed)
    assert max(step_records(killed)) < 20, "the kill came too late to test anything"
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["step_0000010"]
    proc = run_cli(args(killed))  # resume=auto: its own step 10, not init_from's weights
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = step_records(straight), step_records(killed)
    assert sorted(b) == list(range(1, 21))
    for key in ("loss", "grad_norm", "lr", "loss_tokens"):
        assert {s: r[key] for s, r in a.items()} == {s: r[key] for s, r in b.items()}, key
    assert max(r["epoch"] for r in b.values()) >= 5  # 20 updates of 8 crossed several epochs


@pytest.mark.slow
def test_two_processes_match_one_process(env, tmp_path):
    from test_train import free_port

    extra = ["run.max_steps=5", "data.val_every=5", "data.val_sequences=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_cli([str(SFT_YAML), *overrides(env, one, *extra)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    proc = run_cli([str(SFT_YAML), *overrides(env, two, *extra)], launcher=torchrun)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = step_records(one), step_records(two)
    assert sorted(a) == sorted(b) == list(range(1, 6))
    for step in a:  # each rank holds other pairs, with other numbers of loss tokens
        for key in ("loss", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5), (step, key)
        assert b[step]["loss_tokens"] == a[step]["loss_tokens"]
    va, vb = step_records(one, "val_loss"), step_records(two, "val_loss")
    assert vb[5]["val_loss"] == pytest.approx(va[5]["val_loss"], rel=1e-5)


def test_pairs_are_padded_to_data_seq_len_not_the_whole_context(env, tmp_path):
    """A model with a 512-token context fine-tuned at data.seq_len=64: its pairs are padded to
    64 tokens (the first loss is the checkpoint's on that batch), the pair too long for 64 is
    dropped, the model keeps its context; longer than the context is refused by name."""
    start = pretrained(tmp_path / "long-context", env.tok, block_size=512)
    run = tmp_path / "sft"
    cfg = load_config(TrainConfig, SFT_YAML, [*overrides(env, run, "run.max_steps=1"),
                                              f"model.init_from={start}", "data.seq_len=64"])
    assert cfg.seq_len == 64 and cfg.model.block_size == 512
    data = open_sft_data(str(env.pairs), str(env.tok), 64, with_val=False)
    assert data.train.dropped == 1 and open_sft_data(
        str(env.pairs), str(env.tok), 512, with_val=False).train.dropped == 0
    batches = DistributedBatches(data.train, GLOBAL_BATCH, GLOBAL_BATCH, 0, 1, cfg.run.seed)
    x, y = data.train.batch(batches.global_indices())
    assert x.shape == (GLOBAL_BATCH, 64)
    model, _ = load_checkpoint_model(start)
    with torch.no_grad():
        expected = float(token_mean_loss(model, x, y))
    Trainer(cfg).fit()
    assert step_records(run)[1]["loss"] == pytest.approx(expected, rel=1e-5)
    assert load_checkpoint_model(run)[1].block_size == 512
    with pytest.raises(ConfigError, match=r"data.seq_len=1024 is longer than the model's context "
                                          r"\(model.block_size=512\)"):
        load_config(TrainConfig, SFT_YAML, [*overrides(env, tmp_path / "x"),
                                            f"model.init_from={start}", "data.seq_len=1024"])
