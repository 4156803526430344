"""The training loop: gradient accumulation equals one big batch, EMA, checkpoints with RNG state."""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch

from vtpdeploy.train.loop import LoopSetup, fit
from vtpdeploy.train.recipe import OptimSection


def _model():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                             num_classes=4)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def _loader(micro):
    x, y = _data()
    return lambda epoch, skip: [(x[i:i + micro], y[i:i + micro]) for i in range(skip * micro, len(y), micro)]


def _cfg(**kw):
    return OptimSection(**{"epochs": 2, "lr": 1e-3, "warmup_epochs": 0, "weight_decay": 0.0, "clip_grad": None, **kw})


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulated_micro_batches_equal_one_global_batch():
    big, small = _model(), _model()
    fit(big, _loader(64), _cfg(), seed=0, stage_key="a")
    fit(small, _loader(16), _cfg(), seed=0, stage_key="a", setup=LoopSetup(accum_steps=4, clip_grad=None))
    assert torch.allclose(_flat(big), _flat(small), atol=2e-6)
    # ...and not equal to taking a step per micro-batch:
    eager = _model()
    fit(eager, _loader(16), _cfg(), seed=0, stage_key="a", setup=LoopSetup(accum_steps=1, clip_grad=None))
    assert not torch.allclose(_flat(big), _flat(eager), atol=1e-4)


def test_ema_result_is_the_average_not_the_last_weights():
    start = _flat(_model())
    plain, averaged = _model(), _model()
    fit(plain, _loader(16), _cfg(), seed=0, stage_key="a")
    fit(averaged, _loader(16), _cfg(ema_decay=0.999999), seed=0, stage_key="a")
    moved = (_flat(plain) - start).abs().max()
    assert moved > 1e-3
    # timm's EMA copies the weights after the first step, then barely moves with decay ~1.
    assert (_flat(averaged) - start).abs().max() < moved * 0.5


def test_step_checkpoint_holds_state_and_resumes(tmp_path):
    ckpt = tmp_path / "c.pt"
    model = _model()
    fit(model, _loader(16), _cfg(epochs=3), seed=0, stage_key="k", checkpoint_path=ckpt,
        setup=LoopSetup(checkpoint_every_steps=2, clip_grad=None))
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "micro_step", "history"} <= set(state)
    assert state["stage_key"] == "k"
    stale = tmp_path / "stale.pt"
    stale.write_bytes(ckpt.read_bytes())
    # A stale key is ignored: training restarts from scratch rather than loading foreign state.
    logs = []
    fit(_model(), _loader(16), _cfg(epochs=3), seed=0, stage_key="other", checkpoint_path=stale, log=logs.append)
    assert not logs
    fit(_model(), _loader(16), _cfg(epochs=3), seed=0, stage_key="k", checkpoint_path=ckpt, log=logs.append)
    assert logs and "resuming from epoch checkpoint 2/3" in logs[0]


def test_mid_epoch_step_checkpoint_resumes_at_its_micro_batch(tmp_path):
    ckpt = tmp_path / "c.pt"
    fit(_model(), _loader(16), _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt,
        setup=LoopSetup(checkpoint_every_steps=2, clip_grad=None))
    assert torch.load(ckpt, weights_only=True)["micro_step"] == 2
    logs = []
    resumed = _model()
    fit(resumed, _loader(16), _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt, log=logs.append,
        setup=LoopSetup(clip_grad=None))
    assert logs == ["train: resuming from epoch checkpoint 0/1, micro-batch 2"]
    whole = _model()
    fit(whole, _loader(16), _cfg(epochs=1), seed=0, stage_key="k", setup=LoopSetup(clip_grad=None))
    assert torch.allclose(_flat(resumed), _flat(whole), atol=1e-6)


# -- GPU-resume defects, exercised on CPU ---------------------------------------------------------
def test_empty_scaler_state_resumes_into_an_enabled_scaler(tmp_path, monkeypatch):
    """A CPU checkpoint holds an empty GradScaler state; resuming with fp16 AMP must start a fresh scaler."""
    ckpt = tmp_path / "c.pt"
    fit(_model(), _loader(16), _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt,
        setup=LoopSetup(checkpoint_every_steps=2, clip_grad=None))
    assert torch.load(ckpt, weights_only=True)["scaler"] == {}
    real = torch.amp.GradScaler
    scalers = []

    def enabled_cpu_scaler(*args, **kwargs):  # what CUDA + amp fp16 builds, on a CPU device
        scalers.append(real("cpu", init_scale=2.0**8, enabled=True))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", enabled_cpu_scaler)
    logs = []
    model = _model()
    fit(model, _loader(16), _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt, log=logs.append,
        setup=LoopSetup(clip_grad=1.0))
    assert "no GradScaler state" in logs[0] and logs[1].endswith("micro-batch 2")
    assert scalers[0].is_enabled() and scalers[0].get_scale() == 2.0**8  # it scaled the two resumed steps
    assert torch.isfinite(_flat(model)).all()


def test_backward_runs_outside_autocast(monkeypatch):
    class RecordingAutocast:
        depth = 0
        entered = 0

        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            RecordingAutocast.depth += 1
            RecordingAutocast.entered += 1

        def __exit__(self, *exc):
            RecordingAutocast.depth -= 1

    real_backward = torch.Tensor.backward
    at_backward, at_forward = [], []

    def backward(self, *args, **kwargs):
        at_backward.append(RecordingAutocast.depth)
        return real_backward(self, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", RecordingAutocast)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    model = _model()
    model.register_forward_hook(lambda mod, inp, out: at_forward.append(RecordingAutocast.depth))
    fit(model, _loader(16), _cfg(epochs=1), seed=0, stage_key="a", setup=LoopSetup(accum_steps=2, clip_grad=None))
    assert at_forward == [1, 1, 1, 1] and RecordingAutocast.entered == 4  # forward + loss inside autocast
    assert at_backward == [0, 0, 0, 0]  # backward outside: it runs in the dtypes the forward chose


def test_cuda_rng_restore_with_fewer_gpus(monkeypatch):
    """A 2-GPU checkpoint resumed on 1 GPU restores GPU 0's state and skips the missing one."""
    from vtpdeploy.train import checkpoints as loop

    state = loop.rng_state()
    state["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored = []

    def set_rng_state(new_state, device="cuda"):
        index = device if isinstance(device, int) else 0
        if index >= 1:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        restored.append((index, int(new_state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    loop.set_rng_state(state)
    assert restored == [(0, 1)]


def test_each_rank_resumes_its_own_rng_state(tmp_path):
    from vtpdeploy.train.distributed import DistInfo
    from vtpdeploy.train.checkpoints import resume_rng

    ckpt = tmp_path / "c.pt"
    fit(_model(), _loader(16), _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt,
        setup=LoopSetup(checkpoint_every_steps=2, clip_grad=None))
    state = torch.load(ckpt, weights_only=True)
    assert state["world_size"] == 1 and len(state["rng_per_rank"]) == 1
    assert resume_rng(state, DistInfo()) is state["rng_per_rank"][0]
    rank1 = dict(state["rng_per_rank"][0], torch=torch.Generator().manual_seed(7).get_state())
    two = {**state, "rng_per_rank": [state["rng_per_rank"][0], rank1], "world_size": 2}
    assert resume_rng(two, DistInfo(rank=1, world_size=2)) is rank1
    assert resume_rng(two, DistInfo(rank=0, world_size=2)) is state["rng_per_rank"][0]
    logs = []
    assert resume_rng(two, DistInfo(rank=1, world_size=3), logs.append) is None
    assert "world size 2, this run has 3" in logs[0]
    old_format = {k: v for k, v in two.items() if k != "rng_per_rank"}  # only rank 0's state: wrong for rank 1
    assert resume_rng(old_format, DistInfo(rank=1, world_size=2), logs.append) is None
    assert resume_rng(old_format, DistInfo()) is state["rng"]


def _ddp_worker(rank: int, folder: str) -> None:
    """Rank `rank` of 2 (gloo): train to a mid-epoch checkpoint, resume from it, record the first draw."""
    import torch.distributed as dist

    from vtpdeploy.train.distributed import DistInfo, shutdown

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    torch.set_num_threads(1)
    threads_before = threads()
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2)
        ckpt = __import__("pathlib").Path(folder) / "c.pt"
        x, y = _data()
        x, y = x[rank::2], y[rank::2]
        draws = []

        def loader(epoch, skip):
            if skip:  # called right after the resumed RNG state is set
                draws.append(float(torch.rand(1)))
            return [(x[i:i + 8], y[i:i + 8]) for i in range(skip * 8, len(y), 8)]

        fit(_model(), loader, _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt,
            setup=LoopSetup(dist=info, checkpoint_every_steps=2, clip_grad=None))
        dist.barrier()
        saved = torch.load(ckpt, weights_only=True)
        dist.barrier()
        fit(_model(), loader, _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt,
            setup=LoopSetup(dist=info, clip_grad=None))
        own = saved["rng_per_rank"][rank]["torch"] if "rng_per_rank" in saved else None
        expected = float(torch.rand(1, generator=torch.Generator().set_state(own))) if own is not None else None
        dist.barrier()  # both ranks are done with the group before it goes down
    finally:
        shutdown(DistInfo(rank=rank, world_size=2))
    result = {"draw": draws[0], "expected": expected, "threads_before": threads_before, "threads_after": threads()}
    (ckpt.parent / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_mid_epoch_ddp_resume_restores_each_ranks_rng(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["expected"] is not None for r in ranks), "checkpoint holds no per-rank RNG states"
    assert [r["draw"] for r in ranks] == [r["expected"] for r in ranks]
    assert ranks[0]["draw"] != ranks[1]["draw"]  # rank 1 did not get rank 0's stream
    # shutdown() joined gloo's threads: left for interpreter exit, they abort a finished run (SIGABRT)
    assert [r["threads_after"] for r in ranks] == [r["threads_before"] for r in ranks]


@pytest.mark.slow
def test_stage_key_includes_device_and_amp(tmp_path, monkeypatch):
    """A run finished on CPU is not 'up to date' for a CUDA fp16 run: its stages rerun."""
    from helpers import write_recipe

    from vtpdeploy.train import pipeline
    from vtpdeploy.train.recipe import load_recipe

    assert pipeline.compute_settings(load_recipe(None, ["device=cpu", "amp=fp16"])) == "device=cpu amp=none"
    assert pipeline.compute_settings(load_recipe(None, ["device=cuda:1", "amp=fp16"])) == "device=cuda amp=fp16"
    overrides = {"train.epochs": 0, "sparsify.epochs": 0, "finetune.epochs": 0, "data.val_fraction": 0.9}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", overrides))
    run = tmp_path / "run"
    pipeline.run_pipeline(recipe, run)
    first = json.loads((run / "manifest.json").read_text())["stages"]
    monkeypatch.setattr(pipeline, "compute_settings", lambda r: "device=cuda amp=fp16")
    pipeline.run_pipeline(recipe, run)
    second = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(second[s]["key"] != first[s]["key"] for s in ("train", "sparsify", "prune", "finetune", "compact"))
    assert second["train"]["ended"] != first["train"]["ended"]


@pytest.mark.gpu
def test_amp_fp16_training_step_on_cuda_resumes_a_cpu_checkpoint(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    ckpt = tmp_path / "c.pt"
    fit(_model(), _loader(16), _cfg(epochs=1), seed=0, stage_key="k", checkpoint_path=ckpt,
        setup=LoopSetup(checkpoint_every_steps=2, clip_grad=None))
    logs = []
    model = _model().cuda()
    history = fit(model, _loader(16), _cfg(epochs=2), seed=0, stage_key="k", checkpoint_path=ckpt,
                  device="cuda", log=logs.append, setup=LoopSetup(amp="fp16", checkpoint_every_steps=2))
    assert "no GradScaler state" in logs[0] and logs[1].endswith("micro-batch 2")
    assert all(torch.isfinite(torch.tensor(history.loss)))
    assert torch.load(ckpt, weights_only=True)["scaler"]["scale"] > 0  # fp16 AMP wrote a real scaler state
