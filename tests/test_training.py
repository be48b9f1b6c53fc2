"""Training loop: determinism, resume after an interruption (in-process and kill -9), atomic checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TEST, small_config
from kolmotok.checkpoint import list_checkpoints
from kolmotok.evaluation.metrics import l1_per_image
from kolmotok.training import KARLObjective, train
from kolmotok.training.objective import build_objective, halting_labels, sample_budget


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_losses(tmp_path):
    cfg = small_config("train.steps=4", "train.data=shapes")
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    la = [r["loss"] for r in _rows(tmp_path / "a")]
    lb = [r["loss"] for r in _rows(tmp_path / "b")]
    assert la == lb and len(la) == 4
    other = small_config("train.steps=4", "train.data=shapes", "train.seed=1")
    train(other, tmp_path / "c", progress=False)
    assert [r["loss"] for r in _rows(tmp_path / "c")] != la


class Interrupt(Exception):
    pass


class DiesAt:
    """The KARL objective, interrupted when it reaches a given step."""

    def __init__(self, cfg, step):
        self.inner, self.calls, self.step = KARLObjective(cfg.objective), 0, step

    def __call__(self, model, images, g):
        if self.calls == self.step:
            raise Interrupt
        self.calls += 1
        return self.inner(model, images, g)


def test_resume_matches_uninterrupted_run(tmp_path):
    cfg = small_config("train.steps=8", "train.data=photos@3+shapes")
    train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Interrupt):
        train(small_config("train.steps=8", "train.data=photos@3+shapes"), tmp_path / "cut",
              objective=DiesAt(cfg, 5), progress=False)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step_0000004"
    train(small_config("train.steps=8", "train.data=photos@3+shapes"), tmp_path / "cut", resume=True, progress=False)
    full, cut = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 9)), "each step logged once, in order"
    assert [r["loss"] for r in cut] == [r["loss"] for r in full]
    times = [r["time"] for r in cut]
    assert times == sorted(times), "training time keeps counting across the resume"
    wa = load_file(str(list_checkpoints(tmp_path / "full")[-1] / "model.safetensors"))
    wb = load_file(str(list_checkpoints(tmp_path / "cut")[-1] / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_below_the_checkpoint_step_is_refused_before_any_write(tmp_path):
    cfg = small_config("train.steps=4", "train.data=shapes", "train.eval_every=0")
    run = train(cfg, tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(ValueError, match="at step 4, past --steps 2; give --steps 4 or more"):
        train(small_config("train.steps=2", "train.data=shapes", "train.eval_every=0"), tmp_path / "r", resume=True,
              progress=False)
    assert (tmp_path / "r" / "config.json").read_text() == before and list_checkpoints(tmp_path / "r")[-1] == run


def test_logged_learning_rate_follows_the_schedule(tmp_path):
    from kolmotok.training.trainer import lr_factor

    cfg = small_config("train.steps=6", "train.data=shapes", "train.eval_every=0", "optim.warmup_steps=2")
    train(cfg, tmp_path / "r", progress=False)
    logged = [r["lr"] for r in _rows(tmp_path / "r")]
    want = [cfg.optim.lr * lr_factor(s, 2, 6, cfg.optim.min_lr_ratio) for s in range(1, 7)]
    assert logged == pytest.approx(want) and logged[-1] == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio)
    assert logged == sorted(logged, reverse=True) and logged[0] > logged[-1]


def test_existing_run_needs_resume(tmp_path):
    cfg = small_config("train.steps=2", "train.data=shapes")
    train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, tmp_path / "r", progress=False)


def test_zero_counts_are_refused_before_any_work(tmp_path):
    for key in ("train.checkpoint_every=0", "train.grad_accum=0", "train.batch_size=0", "train.steps=-5"):
        with pytest.raises(ValueError, match=key.split("=")[0]):
            train(small_config(key, "train.data=shapes"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_keep_checkpoints_zero_keeps_them_all(tmp_path):
    train(small_config("train.steps=3", "train.data=shapes", "train.checkpoint_every=1", "train.keep_checkpoints=0"),
          tmp_path / "r", progress=False)
    assert len(list_checkpoints(tmp_path / "r")) == 3


def test_resume_without_a_checkpoint_says_it_starts_anew(tmp_path, caplog):
    train(small_config("train.steps=1", "train.data=shapes"), tmp_path / "new", resume=True, progress=False)
    assert "holds no checkpoint yet" in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_finishes_the_step_and_checkpoints_it(tmp_path, signum):
    cfg = small_config("train.steps=6", "train.data=shapes", "train.checkpoint_every=100")
    before = signal.getsignal(signum)

    def interrupt(step, model):
        if step == 3:
            os.kill(os.getpid(), signum)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "r", progress=False, on_step_end=interrupt)
    assert [c.name for c in list_checkpoints(tmp_path / "r")] == ["step_0000003"]
    assert signal.getsignal(signum) is before  # the handler is put back
    final = train(cfg, tmp_path / "r", resume=True, progress=False)
    assert final.name == "step_0000006"
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_drops_a_metrics_line_cut_off_mid_write(tmp_path):
    cfg = small_config("train.steps=2", "train.data=shapes", "train.eval_every=0")
    train(cfg, tmp_path / "r", progress=False)
    with (tmp_path / "r" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.5')  # a crash during the write of a row past the checkpoint
    cfg.train.steps = 3
    train(cfg, tmp_path / "r", resume=True, progress=False)
    assert [r["step"] for r in _rows(tmp_path / "r")] == [1, 2, 3]
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    cfg.train.steps = 4
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        train(cfg, tmp_path / "r", resume=True, progress=False)


def test_kill_9_then_resume(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "kolmotok", "train", "--preset", "tiny", "--out", str(run), "--data", "shapes",
            "--no-progress"]
    extra = ["train.eval_every=0", "optim.min_lr_ratio=1.0"]  # no decay: the lr does not depend on --steps
    for s in TINY_TEST + extra:
        args += ["--set", s]
    proc = subprocess.Popen(args + ["--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(run)) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpts = list_checkpoints(run)
    assert ckpts, "no checkpoint was written before the kill"
    last = int(ckpts[-1].name.split("_")[1])
    target = last + 3
    subprocess.run(args + ["--steps", str(target), "--resume"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    steps = [r["step"] for r in _rows(run)]
    assert steps == list(range(1, target + 1)), "rows past the checkpoint are dropped, then continued"
    assert list_checkpoints(run)[-1].name == f"step_{target:07d}"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "no partial checkpoint left"
    # the same losses as a run never interrupted: same weights, optimizer state and data order
    train(small_config(*extra, "train.data=shapes", f"train.steps={target}"), tmp_path / "whole", progress=False)
    whole = [r["loss"] for r in _rows(tmp_path / "whole")]
    assert [r["loss"] for r in _rows(run)] == pytest.approx(whole, rel=1e-4)


@pytest.mark.parametrize("group, workers", [(False, 0), (True, 2)])
def test_sigterm_to_the_command_checkpoints_the_step_it_was_on(tmp_path, group, workers):
    """What a cluster scheduler does before preempting a job (to the process, or to its whole
    group, data-loading workers included): the run ends with exit status 130 and a checkpoint of
    the last step it finished, so --resume loses nothing."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "kolmotok", "train", "--preset", "tiny", "--out", str(run), "--data", "shapes",
            "--no-progress", "--steps", "100000", "--data-workers", str(workers)]
    for s in TINY_TEST + ["train.eval_every=0", "train.checkpoint_every=1000"]:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_rows(run) if (run / "metrics.jsonl").exists() else []) < 3:
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "terminated: finishing this step" in err
    last = list_checkpoints(run)[-1]
    assert int(last.name.split("_")[1]) == _rows(run)[-1]["step"] >= 3
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "a partial checkpoint"


def test_an_interrupted_checkpoint_write_leaves_nothing(tmp_path, model, monkeypatch):
    from kolmotok import checkpoint as checkpoint_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_mod, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_mod.save_checkpoint(tmp_path / "ck", model, {})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_files_get_the_usual_permissions(tmp_path, model):
    from kolmotok.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        ck = save_checkpoint(tmp_path / "ck", model, {}, train_state={"step": 1})
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in ck.iterdir()} == {
        "model.safetensors": 0o644, "config.json": 0o644, "train_state.pt": 0o644}


def test_init_from_checkpoint(tmp_path):
    base = small_config("train.steps=2", "train.data=shapes")
    ckpt = train(base, tmp_path / "base", progress=False)
    start = load_file(str(ckpt / "model.safetensors"))
    tuned = small_config("train.steps=1", "train.data=shapes", f"train.init_from={ckpt}",
                         "train.checkpoint_every=100", "train.eval_every=0", "optim.lr=0")
    out = train(tuned, tmp_path / "tuned", progress=False)
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(start[k], after[k]) for k in start), "lr 0: weights must be exactly the start's"
    # a checkpoint written before newer config fields existed still fine-tunes (defaults fill them)
    meta = json.loads((ckpt / "config.json").read_text())
    del meta["model"]["recurrent_step"], meta["model"]["base_autoencoder"]
    (ckpt / "config.json").write_text(json.dumps(meta))
    train(small_config("train.steps=1", "train.data=shapes", f"train.init_from={ckpt}", "train.eval_every=0"),
          tmp_path / "old", progress=False)
    # switching on the direct eps halting term (a new weight) or moving the threshold (no weight) is allowed
    gained = train(small_config("train.steps=1", "train.data=shapes", f"train.init_from={ckpt}", "train.eval_every=0",
                                "model.halting_epsilon_gain=2.0", "model.halting_threshold=0.5",
                                "model.halting_hidden=8"),
                   tmp_path / "gained", progress=False)
    weights = load_file(str(gained / "model.safetensors"))
    assert "halt_eps_gain" in weights and "halt_mlp.0.weight" in weights
    # a fine-tune of such a checkpoint (the shipped model, a fit-halting output) keeps those parts
    kept = train(small_config("train.steps=1", "train.data=shapes", f"train.init_from={gained}", "train.eval_every=0"),
                 tmp_path / "kept", progress=False)
    assert json.loads((kept / "config.json").read_text())["model"]["halting_hidden"] == 8
    assert "halt_mlp.0.weight" in load_file(str(kept / "model.safetensors"))
    # ... and the same config, asked to resume that fine-tune, means those parts too
    again = small_config("train.steps=2", "train.data=shapes", f"train.init_from={gained}", "train.eval_every=0")
    assert train(again, tmp_path / "kept", resume=True, progress=False).name == "step_0000002"
    other = small_config("train.steps=1", "train.data=shapes", f"train.init_from={ckpt}", "model.width=16")
    with pytest.raises(ValueError, match=r"differs from this run's \(model.width 32 -> 16\)"):
        train(other, tmp_path / "bad", progress=False)


@pytest.mark.parametrize("kind, extra, logged", [
    ("fixed", ["objective.fixed_length=2"], {"eval_l1_T2"}),
    ("prefix", [], {"eval_l1_T1", "eval_l1_T8"}),
    ("recurrent", ["model.recurrent_step=4"], {"eval_l1_T8"}),  # 1 token is not a whole rollout
])
def test_baseline_objectives_train_and_monitor_their_own_method(tmp_path, kind, extra, logged):
    base = train(small_config("train.steps=1", "train.data=shapes"), tmp_path / "base", progress=False)
    cfg = small_config("train.steps=2", "train.data=shapes", f"objective.kind={kind}", f"train.init_from={base}",
                       *extra)
    train(cfg, tmp_path / kind, progress=False)
    rows = _rows(tmp_path / kind)
    last = rows[-1]
    assert {k for k in last if k.startswith("eval_")} == logged
    assert last["loss"] > 0 and last["l1"] > 0
    kept = [r["kept"] for r in rows]
    if kind == "fixed":  # always its own length
        assert kept == [2.0, 2.0]
    elif kind == "recurrent":  # whole rollouts of 4 tokens
        assert all(k in (4.0, 8.0) for k in kept)
    else:  # a random prefix per image; the monitor sees fewer tokens reconstruct worse
        assert all(1 <= k <= 8 for k in kept) and last["eval_l1_T1"] > last["eval_l1_T8"]


def test_bad_objective_settings_are_clear(tmp_path):
    with pytest.raises(ValueError, match="fixed_length"):
        train(small_config("objective.kind=fixed"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="recurrent_step"):
        train(small_config("objective.kind=recurrent"), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="objective.kind"):
        train(small_config("objective.kind=magic"), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="gap_target_prob"):
        train(small_config("objective.gap_target_prob=1.5"), tmp_path / "d", progress=False)


def test_halting_labels_censor_what_a_target_does_not_tell():
    no, yes = torch.tensor([False]), torch.tensor([True])
    # plain: label length 3 of T = 5 -> keep positions 0..2, halt from 3
    label, weight = halting_labels(torch.tensor([3]), 5, 2, no, no, no, 8)
    assert label[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1] and weight.eq(1).all()
    # gap target between eps_T (T = 5) and eps_T' (T' = 2): more than 2 tokens, 5 are enough
    label, weight = halting_labels(torch.tensor([5]), 5, 2, no, no, yes, 8)
    assert label[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert weight[0].tolist() == [1, 1, 1, 0, 0, 1, 1, 1]
    # stricter: nothing past T; looser: nothing before T
    assert halting_labels(torch.tensor([5]), 5, 2, yes, no, no, 8)[1][0].tolist() == [1] * 5 + [0] * 3
    assert halting_labels(torch.tensor([5]), 5, 2, no, yes, no, 8)[1][0].tolist() == [0] * 5 + [1] * 3


def test_gap_targets_fall_between_the_two_measured_errors(model):
    cfg = small_config("objective.gap_target_prob=1.0", "objective.stricter_target_prob=0").objective
    objective, images = KARLObjective(cfg), torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    seen, encode = [], model.encode

    def recording_encode(x, eps, budget):
        seen.append((eps.clone(), budget))
        return encode(x, eps, budget)

    model.encode = recording_encode
    g = torch.Generator().manual_seed(0)
    while True:  # a draw with a shorter prefix (T > 1)
        seen.clear()
        state = g.get_state()
        out = objective(model, images, g)
        if seen[0][1] > 1:
            break
    assert torch.isfinite(torch.tensor(out.metrics["loss"]))
    # replay the phase-1 errors with the same draws: T, then T'
    g.set_state(state)
    T = sample_budget(model.cfg.max_tokens, cfg.full_budget_prob, g)
    short = int(torch.randint(1, T, (1,), generator=g))
    with torch.no_grad():
        vec = model.quantize(encode(images, torch.zeros(8), T)).vectors
        err = l1_per_image(model.decode(vec, torch.full((8,), T)), images)
        err_short = l1_per_image(model.decode(vec, torch.full((8,), short)), images)
    target = seen[1][0]
    gap = err_short > err * (1 + cfg.shorter_prefix_tolerance)
    assert gap.any()
    lo, hi = err.clamp(min=model.cfg.epsilon_floor), err_short.clamp(min=model.cfg.epsilon_floor)
    assert ((target[gap] >= lo[gap] * 0.999) & (target[gap] <= hi[gap] * 1.001)).all()
    torch.testing.assert_close(target[~gap], lo[~gap])


@pytest.mark.parametrize("gap", ["0", "1"])
def test_a_batch_without_halting_labels_has_a_finite_loss(model, gap):
    """Every image conditioned on a looser target at T = T_max leaves no position labelled."""
    cfg = small_config("objective.looser_target_prob=1", "objective.stricter_target_prob=0",
                       "objective.full_budget_prob=1", f"objective.gap_target_prob={gap}").objective
    out = KARLObjective(cfg)(model, torch.rand(4, 3, 16, 16), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.metrics["bce"] == 0


def test_mixed_precision_and_gradient_accumulation(tmp_path):
    # bf16 autocast runs on CPU too; the quantizer and the loss stay fp32
    common = ["train.steps=2", "train.data=shapes", "train.grad_accum=2", "train.eval_every=0"]
    train(small_config(*common, "train.precision=bf16"), tmp_path / "bf16", progress=False)
    train(small_config(*common), tmp_path / "fp32", progress=False)
    low, full = [r["loss"] for r in _rows(tmp_path / "bf16")], [r["loss"] for r in _rows(tmp_path / "fp32")]
    # bf16 really ran (the losses differ from fp32's) and stayed close to fp32
    assert len(low) == 2 and low != full and low == pytest.approx(full, rel=0.05)
    with pytest.raises(ValueError, match="divisible"):
        train(small_config("train.grad_accum=3"), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="precision"):
        train(small_config("train.precision=fp8"), tmp_path / "bad2", progress=False)


@pytest.mark.parametrize("kind", [["objective.kind=karl", "objective.looser_target_prob=0.3"],
                                  ["objective.gap_target_prob=0.5", "objective.halting_weight=0"],
                                  ["objective.kind=prefix"], ["objective.kind=fixed", "objective.fixed_length=4"]])
def test_grad_accumulation_matches_one_big_batch(tmp_path, kind):
    """Micro-batches draw the step's budget and per-image targets as the one batch would, and KARL's
    halting BCE is normalised by the whole batch's labelled positions. (With gap targets it is
    normalised per micro-batch, so that case runs with the BCE off: benchmarks/split_training.py.)"""
    common = ["train.steps=2", "train.data=shapes", "train.eval_every=0", *kind]
    a = train(small_config(*common), tmp_path / "a", progress=False)
    split = small_config(*common, "train.grad_accum=2")
    inner, sizes = build_objective(split), []

    def recorded(model, images, draws):
        sizes.append(len(images))
        return inner(model, images, draws)

    b = train(split, tmp_path / "b", objective=recorded, progress=False)
    assert sizes == [2, 2, 2, 2], "each step of batch 4 runs as two micro-batches of 2"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_training_runs(tmp_path):  # ~40 s on 2 CPU cores (inductor compile)
    common = ["train.steps=3", "train.data=shapes", "train.eval_every=0"]
    train(small_config(*common, "train.compile=true"), tmp_path / "c", progress=False)
    train(small_config(*common), tmp_path / "e", progress=False)
    compiled, eager = [r["loss"] for r in _rows(tmp_path / "c")], [r["loss"] for r in _rows(tmp_path / "e")]
    assert len(compiled) == 3 and compiled == pytest.approx(eager, rel=1e-3), "compiling changes speed, not results"


def test_a_run_shorter_than_its_warm_up_is_warned_about(tmp_path, caplog):
    train(small_config("train.steps=3", "train.data=shapes", "train.eval_every=0"), tmp_path / "a", progress=False)
    assert "warm-up" not in caplog.text  # 3 steps, 2 of warm-up
    train(small_config("train.steps=2", "train.data=shapes", "train.eval_every=0", "optim.warmup_steps=5"),
          tmp_path / "b", progress=False)
    assert "2 steps end inside the 5-step warm-up: the learning rate reaches 40% of optim.lr" in caplog.text
    # checkpoints record where training ran, so relative data paths can be found again (calibrate)
    meta = json.loads((list_checkpoints(tmp_path / "b")[-1] / "config.json").read_text())
    assert meta["train_cwd"] == os.getcwd()
