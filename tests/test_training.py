"""The training loop: gradient accumulation equals one big batch, EMA, checkpoints with RNG state."""

from __future__ import annotations

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
