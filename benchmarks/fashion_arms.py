"""The arms of the Fashion-MNIST frontier: each turns the shared trained base into one finished arm folder.

An arm folder holds `result.json` (family, method, level, seed, test top-1, params, MACs), `test_pred.npy` (the
predicted class of every test image, for paired bootstraps) and `model.onnx` (dynamic batch, validated) with its
params/MACs sidecar. `result.json` is written last, so an arm with it is finished and a re-run skips it.

VTP and prune-only arms are `vtpdeploy pipeline` runs of recipes/fashion_mnist.yaml that load the base
(`model.checkpoint`). Sparse training does not depend on the level, so it runs once per seed (`--until sparsify`)
and each level's run dir starts as a copy of that one: the pipeline sees the same stage keys and goes on from prune.
Torch-Pruning arms prune the base with TP's own timm-ViT recipe (benchmarks/peer_torch_pruning.py) and are
fine-tuned by the same loop, section and seed as the pipeline's finetune stage. The scratch arm is a dense ViT
of matched MACs trained from scratch by the pipeline's train stage for as many epochs as base + sparsify + fine-tune.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import vtpdeploy
from vtpdeploy.fileio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fashion_mnist.yaml"
KEPT_BASE = Path(__file__).resolve().parent / "fashion_base"  # the trained base, kept in the repo (see its README)
TP_MAC_TOLERANCE = 0.015


@dataclass(frozen=True)
class Arm:
    """One method of the frontier: who it is and what makes it differ from the others."""

    method: str
    family: str  # unpruned | vtpdeploy | prune-only | torch-pruning | scratch
    kind: str  # pipeline | tp | scratch
    sparse: bool = True  # pipeline arms: sparse-trained gates (else the prune-only dense gates)
    prune: tuple[str, ...] = ()  # pipeline arms: --set overrides of the prune section
    tp_mode: str = ""
    gates: tuple[str, ...] = ()  # pipeline arms: --set overrides that change the gate layout (sparse training too)
    gates_tag: str = ""  # names the gates run dir of a non-default layout (gates/sparse-<tag>-s<seed>)
    finetune: tuple[str, ...] = ()  # pipeline and tp arms: --set overrides of the finetune section


ARMS = {a.method: a for a in (  # in the order a partial run finishes them: the key comparisons first
    Arm("vtp-sparse-cpu", "vtpdeploy", "pipeline", prune=("prune.hardware=cpu",)),
    Arm("prune-only-l1", "prune-only", "pipeline", sparse=False,
        prune=("prune.hardware=cpu", "prune.importance=weight_l1")),
    Arm("tp-uniform", "torch-pruning", "tp", tp_mode="uniform"),
    Arm("tp-bottleneck", "torch-pruning", "tp", tp_mode="bottleneck"),
    Arm("scratch", "scratch", "scratch"),
    Arm("vtp-sparse-drop", "vtpdeploy", "pipeline", prune=("prune.hardware=cpu", "prune.drop_sublayers=true")),
    Arm("vtp-sparse-heads", "vtpdeploy", "pipeline", prune=("prune.hardware=cpu", "prune.granularity=head+dim")),
    # Acting on the 3x result: VTP's gates never reach Q/K, so a 3x budget had to cut the block inputs. Tied Q/K
    # gates prune each head's Q/K dims with its V dims, and the inputs stay full (what TP's bottleneck keeps).
    Arm("vtp-sparse-qk", "vtpdeploy", "pipeline", prune=("prune.hardware=cpu-nogather",),
        gates=("sparsify.qk_dims=tied",), gates_tag="qk"),
    # The sparse training itself costs accuracy here (val 88.8 -> 86.3 % at lam 5e-4: the L1 term outweighs the CE):
    # the paper's lam 1e-4 keeps the model nearer the base while still ranking the dims.
    Arm("vtp-sparse-qk-lam1e-4", "vtpdeploy", "pipeline", prune=("prune.hardware=cpu-nogather",),
        gates=("sparsify.qk_dims=tied", "sparsify.lam=0.0001"), gates_tag="qk-lam1e-4"),
    # The same gates, and the trained gates may remove whole MLPs (the only cut that sheds a block's fixed cost):
    # 3x then keeps wider attention and first/last MLPs and removes 3-4 middle MLPs outright.
    Arm("vtp-sparse-qk-lam1e-4-drop", "vtpdeploy", "pipeline",
        prune=("prune.hardware=cpu-nogather", "prune.drop_sublayers=true"),
        gates=("sparsify.qk_dims=tied", "sparsify.lam=0.0001"), gates_tag="qk-lam1e-4"),
    # Acting on the scratch arm (a dense 3x model trained 18 epochs beats every pruned one): fine-tuning with soft
    # distillation from the unpruned base, for a vtpdeploy arm and its Torch-Pruning peer alike.
    Arm("vtp-sparse-qk-lam1e-4-kd", "vtpdeploy", "pipeline", prune=("prune.hardware=cpu-nogather",),
        gates=("sparsify.qk_dims=tied", "sparsify.lam=0.0001"), gates_tag="qk-lam1e-4",
        finetune=("finetune.distill=soft",)),
    Arm("tp-bottleneck-kd", "torch-pruning", "tp", tp_mode="bottleneck", finetune=("finetune.distill=soft",)),
)}


@dataclass
class Study:
    """Where the study lives and the settings every arm shares."""

    out: Path
    overrides: tuple[str, ...] = ()  # --set applied to every pipeline run (quick mode shrinks data and epochs)
    threads: int = 2
    keep_base: bool = True  # start from benchmarks/fashion_base when OUT/base does not exist
    log: list[str] = field(default_factory=list)

    @property
    def base(self) -> Path:
        return self.out / "base"

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log.append(line)

    def pipeline(self, run_dir: Path, until: str | None, *sets: str) -> None:
        cmd = [sys.executable, "-m", "vtpdeploy", "pipeline", str(RECIPE), "--out", str(run_dir),
               *(["--until", until] if until else [])]
        for s in (*self.overrides, f"threads={self.threads}", *sets):
            cmd += ["--set", s]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline {run_dir} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
        self.say(f"pipeline {run_dir.relative_to(self.out)} until {until or 'end'} ({time.time() - t0:.0f}s)")

    def recipe(self, *sets: str):
        from vtpdeploy.train.recipe import load_recipe

        return load_recipe(RECIPE, [*self.overrides, f"threads={self.threads}", *sets])


# -- data and evaluation -----------------------------------------------------------------------------------------
def data_config(study: Study) -> dict:
    """The preprocessing every arm is trained and tested with: the recipe's, on the base model."""
    return _data_config(study.base, study.overrides)


@lru_cache(maxsize=2)
def _data_config(base: Path, overrides: tuple[str, ...]) -> dict:
    # Loads the base model: asked for by every arm's training, test and export, so read once per study.
    from vtpdeploy.data import data_config_for
    from vtpdeploy.prune.arch import describe
    from vtpdeploy.train.recipe import load_recipe

    model_config = describe(vtpdeploy.load(base / "unpruned")).data_config
    return data_config_for(model_config, load_recipe(RECIPE, list(overrides)).data)


def test_set(study: Study):
    from vtpdeploy.data import build_dataset, make_transform

    section = study.recipe().data
    return build_dataset(section, "test", make_transform(data_config(study)))


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) of every image of `dataset`, in order."""
    model.eval()
    preds, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    for x, y in loader:
        preds.append(model(x).argmax(-1).numpy())
        labels.append(y.numpy())
    return np.concatenate(preds).astype(np.int16), np.concatenate(labels).astype(np.int16)


def calibration_images(study: Study, n: int = 256, seed: int = 0) -> np.ndarray:
    """`n` seeded train images, preprocessed for evaluation (also the export's validation sample)."""
    from vtpdeploy.data import build_dataset, make_transform

    ds = build_dataset(study.recipe().data, "train", make_transform(data_config(study)))
    idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
    return torch.stack([ds[int(i)][0] for i in idx]).numpy()


def finish_arm(study: Study, arm_dir: Path, model: torch.nn.Module, info: dict) -> dict:
    """Test the model, export it (dynamic batch, validated), then write result.json (the done marker)."""
    from vtpdeploy.deploy.export import export_onnx

    model = model.float().eval()
    preds, labels = predict(model, test_set(study))
    np.save(arm_dir / "test_pred.npy", preds)
    counts = vtpdeploy.count(model, (28, 28))
    onnx = arm_dir / "model.onnx"
    sample = calibration_images(study, 16, seed=1)
    export_onnx(model, onnx, dynamic_batch=True, sample=sample, atol=1e-3, threads=study.threads)
    atomic_write_json(onnx.with_suffix(".onnx.json"), counts)
    result = {**info, "precision": "fp32", "test_top1": round(100.0 * float((preds == labels).mean()), 3),
              "params": counts["params"], "macs": counts["macs"], "onnx": str(onnx.relative_to(study.out))}
    atomic_write_json(arm_dir / "result.json", result)
    study.say(f"{info['method']} L{info['level']} s{info['seed']}: test top-1 {result['test_top1']:.2f} %, "
              f"MACs {counts['macs']:,}")
    return result


def read_result(arm_dir: Path) -> dict | None:
    path = arm_dir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


# -- the arms ----------------------------------------------------------------------------------------------------
def run_base(study: Study) -> dict:
    """The shared trained base (pipeline `--until train`) as the `unpruned` row."""
    arm_dir = study.out / "arms" / "unpruned"
    done = read_result(arm_dir)
    if done:
        return done
    if study.keep_base and not study.base.exists() and KEPT_BASE.is_dir():
        shutil.copytree(KEPT_BASE, study.base, ignore=shutil.ignore_patterns("README.md"))
        study.say(f"base: starting from {KEPT_BASE.relative_to(ROOT)} (the pipeline retrains it if its key changed)")
    study.pipeline(study.base, "train")
    arm_dir.mkdir(parents=True, exist_ok=True)
    model = vtpdeploy.load(study.base / "unpruned")
    return finish_arm(study, arm_dir, model, {"family": "unpruned", "method": "unpruned", "level": "1x", "seed": 0,
                                               "macs_share": 1.0})


def _gates_dir(study: Study, arm: Arm, seed: int) -> Path:
    """The run dir holding the gated model of `seed`: sparse-trained, or the dense prune-only gates."""
    name = "-".join(filter(None, ("sparse" if arm.sparse else "dense", arm.gates_tag, f"s{seed}")))
    run_dir = study.out / "gates" / name
    study.pipeline(run_dir, "sparsify", *_gate_sets(study, arm, seed))
    return run_dir


# The gate layout and lam of the paper-faithful arms, pinned so that every arm keeps its meaning (and its stage
# keys) whatever recipes/fashion_mnist.yaml defaults to; an arm's own `gates` overrides come after and win.
PAPER_GATES = ("sparsify.qk_dims=full", "sparsify.lam=0.0005")
PINNED_PRUNE = ("prune.drop_sublayers=false",)  # likewise: only the arms that ask for it remove whole sublayers


def _gate_sets(study: Study, arm: Arm, seed: int) -> tuple[str, ...]:
    return (f"model.checkpoint={study.base / 'unpruned.safetensors'}", f"seed={seed}", *PAPER_GATES,
            *(() if arm.sparse else ("sparsify.enabled=false",)), *arm.gates)


def run_pipeline_arm(study: Study, arm: Arm, level: str, share: float, seed: int) -> dict:
    arm_dir = study.out / "arms" / arm.method / f"{level}-s{seed}"
    done = read_result(arm_dir)
    if done:
        return done
    gates = _gates_dir(study, arm, seed)
    run_dir = arm_dir / "run"
    if not (run_dir / "manifest.json").is_file():
        shutil.copytree(gates, run_dir, ignore=shutil.ignore_patterns(".lock", "ckpt", "bench_cache"))
    study.pipeline(run_dir, None, *_gate_sets(study, arm, seed), *PINNED_PRUNE, *arm.prune,
                   f"prune.target_macs={share}", *arm.finetune)
    report = json.loads((run_dir / "report.json").read_text())
    info = {"family": arm.family, "method": arm.method, "level": level, "seed": seed, "macs_share": share,
            "val_top1": report["accuracy"]["finetuned"], "val_top1_pruned": report["accuracy"]["pruned"],
            "removed_sublayers": report["plan"].get("removed_sublayers")}
    return finish_arm(study, arm_dir, vtpdeploy.load(run_dir / "model"), info)


def _finetune(study: Study, model: torch.nn.Module, seed: int, sets: tuple[str, ...] = ()) -> float:
    """The pipeline's finetune stage on a plain module: same section, loop, data order, seed and teacher (the
    unpruned base, where `finetune.distill` asks for one); val top-1."""
    from vtpdeploy.data import ResumableSampler, build_dataset, make_loader, make_mixup, make_transform
    from vtpdeploy.train.checkpoints import seed_everything
    from vtpdeploy.train.loop import LoopSetup, distill_setup, evaluate, fit

    r = study.recipe(f"seed={seed}", *sets)
    cfg, dc = r.data, data_config(study)
    teacher = vtpdeploy.load(study.base / "unpruned").eval() if r.finetune.distill != "none" else None
    train_ds = build_dataset(cfg, "train", make_transform(dc, train=True, section=cfg))

    def loader(epoch: int, skip: int):
        sampler = ResumableSampler(train_ds, 1, 0, seed=r.seed, epoch=epoch, skip=skip * cfg.batch_size)
        return make_loader(train_ds, cfg, shuffle=False, sampler=sampler, batch_size=cfg.batch_size)

    seed_everything(r.seed)
    torch.set_num_threads(study.threads)
    fit(model.train(), loader, r.finetune, seed=r.seed + 2, stage_key=f"tp-finetune-{seed}",
        setup=LoopSetup(clip_grad=r.finetune.clip_grad, **distill_setup(r.finetune, teacher)),
        mixup=make_mixup(cfg, 10, r.finetune.label_smoothing))
    return round(evaluate(model, make_loader(build_dataset(cfg, "val", make_transform(dc)), cfg, shuffle=False)), 3)


def run_tp_arm(study: Study, arm: Arm, level: str, share: float, seed: int) -> dict:
    import peer_torch_pruning as tp_peer

    arm_dir = study.out / "arms" / arm.method / f"{level}-s{seed}"
    done = read_result(arm_dir)
    if done:
        return done
    arm_dir.mkdir(parents=True, exist_ok=True)
    r = study.recipe()
    base = vtpdeploy.load(study.base / "unpruned")
    target = int(round(share * vtpdeploy.count(base, (28, 28))["macs"]))
    # round_to=1: TP >= 1.5's own example; 2 leaves MAC steps of ~8 % on this small model. Even at 1, TP's one
    # ratio moves embed, head and MLP widths together and its MAC steps reach ~4 % here: matched within 1.5 %.
    model, info = tp_peer.prune_to_macs(r.model.name, target, arm.tp_mode, model_kwargs=dict(r.model.kwargs),
                                        weights=base.state_dict(), round_to=1, tol=TP_MAC_TOLERANCE)
    val = _finetune(study, model, seed, arm.finetune)
    return finish_arm(study, arm_dir, model, {"family": arm.family, "method": arm.method, "level": level,
                                              "seed": seed, "macs_share": share, "val_top1": val,
                                              "torch_pruning": {k: v for k, v in info.items() if k != "params"}})


def scratch_kwargs(study: Study, share: float) -> dict:
    """Model kwargs of a dense ViT (same depth, heads, tokens) with `share` of the base's MACs (±1 %)."""
    import timm

    kw = dict(study.recipe().model.kwargs)
    name = study.recipe().model.name
    full = vtpdeploy.count(timm.create_model(name, **kw), (28, 28))["macs"]
    heads = kw["num_heads"]
    best = None
    for width in range(8 * heads, kw["embed_dim"] + 1, 8 * heads):  # head dims that are multiples of 8
        lo, hi = 0.25, 8.0
        for _ in range(30):
            ratio = (lo + hi) / 2
            macs = vtpdeploy.count(timm.create_model(name, **{**kw, "embed_dim": width, "mlp_ratio": ratio}),
                                   (28, 28))["macs"]
            lo, hi = (lo, ratio) if macs > share * full else (ratio, hi)
        err = abs(macs / (share * full) - 1)
        if err <= 0.01 and 1.0 <= ratio <= 6.0 and (best is None or abs(ratio - 4) < abs(best[1] - 4)):
            best = (width, round(ratio, 4))
    if best is None:
        raise RuntimeError(f"no dense width matches {share:.3f} of the MACs within 1 %")
    return {"embed_dim": best[0], "mlp_ratio": best[1]}


def run_scratch_arm(study: Study, arm: Arm, level: str, share: float, seed: int) -> dict:
    arm_dir = study.out / "arms" / arm.method / f"{level}-s{seed}"
    done = read_result(arm_dir)
    if done:
        return done
    r = study.recipe()
    epochs = r.train.epochs + r.sparsify.epochs + r.finetune.epochs
    kw = scratch_kwargs(study, share)
    run_dir = arm_dir / "run"
    study.pipeline(run_dir, "train", f"seed={seed}", f"train.epochs={epochs}",
                   *(f"model.kwargs.{k}={v}" for k, v in kw.items()))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    info = {"family": arm.family, "method": arm.method, "level": level, "seed": seed, "macs_share": share,
            "val_top1": manifest["stages"]["train"]["metrics"]["accuracy"], "epochs": epochs, "model_kwargs": kw}
    return finish_arm(study, arm_dir, vtpdeploy.load(run_dir / "unpruned"), info)


RUNNERS = {"pipeline": run_pipeline_arm, "tp": run_tp_arm, "scratch": run_scratch_arm}


def run_arm(study: Study, method: str, level: str, share: float, seed: int) -> dict:
    arm = ARMS[method]
    return RUNNERS[arm.kind](study, arm, level, share, seed)
