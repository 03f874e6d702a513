"""The training loop: model, optimizer, schedule and loss from a Config, trained on device-resident tensors.

Design for speed: the data set already lives on the device, each epoch draws one permutation there and slices
batches from it, and losses/accuracies are accumulated on the device and read once per epoch, so the hot
loop never synchronises with the host. Design for safety: the first non-finite loss is recorded on the device
and reported as divergence at the end of the epoch; a signal asks the loop to stop after the current step.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import distributed
from cnn import ReferenceCNN
from config import Config, UserError
from cpu_dropout import use_fast_cpu_dropout
from data import DeviceData, epoch_batches
from metrics import scores
from symmetry import Views, augment_batch, shift_unit, view_averaged_logits
from vision_transformer import VisionTransformer

EVAL_BATCH = 2048


class Diverged(Exception):
    """A non-finite loss, weights or predictions: training stops, the best checkpoint so far is kept."""


class NonFinitePredictions(Diverged):
    """Finite weights whose forward pass overflows: some predictions are NaN or infinite."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the partial epoch is abandoned, last.pt holds the last complete one."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum  # the exit code is 128 + signum, as if the signal had killed the process


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def lr_advice(lr: float) -> str:
    """What to try after a divergence, wherever it shows: in training, evaluation or prediction."""
    return f"the learning rate (--lr {lr:g}) is probably too high, try --lr {lr / 10:g}"


def overflow_message(e: NonFinitePredictions, where: str, lr: float) -> str:
    """One line for predictions that overflow: where, how many, and the advice for a divergence."""
    return f"{where}: {e}; {lr_advice(lr)}"


# ---- building blocks -------------------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed, ample precision here
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def build_model(cfg: Config, in_channels: int, image_size: int) -> nn.Module:
    if image_size % cfg.patch_size and cfg.model == "vit":
        divisors = ", ".join(str(d) for d in range(1, image_size) if image_size % d == 0)
        raise UserError(f"--patch-size {cfg.patch_size} does not divide the image size {image_size}; "
                        f"use a divisor such as {divisors}")
    if cfg.model == "cnn":
        if image_size % 4:
            raise UserError(f"--model cnn pools twice by 2, so the grid size must divide by 4 (got {image_size}); "
                            f"use --model vit")
        return ReferenceCNN(in_channels=in_channels, image_size=image_size)
    if cfg.emb_dim % cfg.heads:
        raise UserError(f"--emb-dim {cfg.emb_dim} is not divisible by --heads {cfg.heads}")
    return VisionTransformer(in_channels=in_channels, image_size=image_size, patch_size=cfg.patch_size,
                             emb_dim=cfg.emb_dim, depth=cfg.depth, heads=cfg.heads, mlp_dim=cfg.mlp_dim,
                             dropout=cfg.dropout, emb_dropout=cfg.emb_dropout, patch_norm=cfg.patch_norm,
                             block_norm=cfg.block_norm, init=cfg.init, pool=cfg.pool)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and kernels only: biases, norms, CLS and position embeddings are left alone."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        no_decay = p.ndim < 2 or name.endswith(("cls_token", "pos_embedding"))
        (keep if no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(cfg: Config, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fast)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fast)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Stepped every iteration. sgd: LinearLR 1.0 -> 0.1 over steps_per_epoch * epochs (the request);
    adamw: linear warmup for warmup_epochs, then cosine decay to zero (the previous baseline)."""
    total = steps_per_epoch * cfg.epochs
    if cfg.optimizer == "sgd":
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=total)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_loss(cfg: Config) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """bce: BCE with logits; mse: MSE on sigmoid(logits); smooth: BCE on targets y(1-eps) + eps/2."""
    if cfg.loss == "mse":
        return lambda logits, y: F.mse_loss(torch.sigmoid(logits), y)
    eps = cfg.smoothing if cfg.loss == "smooth" else 0.0
    return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y * (1 - eps) + 0.5 * eps)


def compile_mode(device: torch.device) -> str | None:
    """CUDA graphs ("reduce-overhead") on one GPU, where launch overhead dominates a small model. BatchNorm's
    running statistics are buffers at fixed addresses, updated in place by every replay (checked against
    eager in tests/test_train_compile.py). Under DDP and on CPU: the default mode."""
    return "reduce-overhead" if device.type == "cuda" and not distributed.active() else None


def training_model(model: nn.Module, cfg: Config, device: torch.device, backend: str = "inductor") -> nn.Module:
    """The module the training steps call: DDP under torchrun, torch.compile with --compile.

    Both wrappers share `model`'s parameters and buffers. Evaluation and checkpoints use `model` itself
    (eager, unwrapped): evaluation never triggers a recompile and checkpoint keys match single-process runs.
    Training batches all have one shape (epoch_batches yields full batches only), so one compile suffices.
    """
    step_model = distributed.wrap(model, device, cfg.sync_bn)
    if cfg.compile:
        mode = compile_mode(device) if backend == "inductor" else None
        step_model = torch.compile(step_model, backend=backend, mode=mode)
    return step_model


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX (on
    other CPUs oneDNN emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(cfg: Config, device: torch.device) -> Config:
    """--precision auto made concrete for `device`: the run's config (and its checkpoints) then say what ran.
    bf16 trained the default recipe 1.3x faster on the 2-core development CPU, at the same accuracy
    (docs/speed.md)."""
    if cfg.precision != "auto":
        return cfg
    return dataclasses.replace(cfg, precision="bf16" if native_bf16(device) else "fp32")


def autocast_context(cfg: Config, device: torch.device) -> AbstractContextManager:
    """bf16 autocast for --precision bf16 (or auto where bf16 is native), else nothing (fp32)."""
    bf16 = resolve_precision(cfg, device).precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@dataclass
class Training:
    """What the training loop needs, built in one place (build_training) for run_transformer and bench."""
    model: nn.Module  # eager and unwrapped: evaluation and checkpoints
    step_model: nn.Module  # what the training steps call (training_model's wrappers around `model`)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int  # per process
    autocast: AbstractContextManager
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_training(cfg: Config, in_channels: int, image_size: int, n_train: int, device: torch.device
                   ) -> Training:
    """Model on `device`, optimizer, per-step schedule, autocast and loss for `n_train` training images.

    --dropout-sampler fast switches the ViT's dropout to cpu_dropout's cheaper masks (CPU training only;
    evaluation, CUDA and compiled steps are unaffected). The CNN keeps torch's dropout.
    """
    model = build_model(cfg, in_channels, image_size).to(device)
    if cfg.model == "vit" and cfg.dropout_sampler == "fast":
        use_fast_cpu_dropout(model)
    steps_per_epoch = max(n_train // (cfg.batch_size * distributed.world()), 1)
    optimizer = build_optimizer(cfg, model, device)
    return Training(model, training_model(model, cfg, device), optimizer,
                    build_scheduler(cfg, optimizer, steps_per_epoch), steps_per_epoch,
                    autocast_context(cfg, device), training_loss(cfg))


def epoch_views(cfg: Config, data: DeviceData) -> Views | None:
    """The views of the validation after every epoch: with --epoch-views pair the image and its partner,
    unshifted (1/16 of the cost of 32 views; in the measured runs it picked the same best epoch)."""
    return data.symmetry.epoch_views() if cfg.epoch_views == "pair" else data.symmetry.views


# ---- evaluation ------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, views: Views | None = None, batch: int = EVAL_BATCH
                   ) -> torch.Tensor:
    """Logits of label 1, (N,), in eval mode, in fixed-size chunks (the last one padded); with `views` the
    logit averaged over them (symmetry.view_averaged_logits).

    Raises NonFinitePredictions when a logit is NaN or infinite: finite weights can still overflow in the
    forward pass, and a NaN probability would turn into a silent 0 in the predictions or a crash in log_loss."""
    unit = shift_unit(model) if views else 0
    forward = (lambda images: view_averaged_logits(model, images, unit, views)) if views else model
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch and len(x) > batch:  # keep shapes fixed so a compiled model never recompiles
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        out.append(forward(chunk).float().squeeze(1)[:n])
    model.train(was_training)
    logits = torch.cat(out)
    bad = int((~torch.isfinite(logits)).sum())  # one sync per call; every caller reads the result anyway
    if bad:
        raise NonFinitePredictions(f"{bad} of {len(logits)} predictions are NaN or infinite (the forward pass "
                                   f"overflows)")
    return logits


def predict_proba(model: nn.Module, x: torch.Tensor, views: Views | None = None, batch: int = EVAL_BATCH
                  ) -> torch.Tensor:
    """Probabilities of label 1, (N,): the sigmoid of predict_logits (uncalibrated)."""
    return torch.sigmoid(predict_logits(model, x, views, batch))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, views: Views | None = None) -> dict[str, float]:
    return scores(predict_proba(model, x, views), y)


def validate(model: nn.Module, data: DeviceData, cfg: Config, epoch: int) -> dict[str, float]:
    """evaluate on the validation split with the --epoch-views views; predictions that overflow there are a
    divergence of this epoch."""
    try:
        return evaluate(model, data.x["valid"], data.y["valid"], epoch_views(cfg, data))
    except NonFinitePredictions as e:
        raise Diverged(overflow_message(e, f"training diverged at epoch {epoch + 1} on the validation split",
                                        cfg.lr)) from None


# ---- the loop --------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """Everything that must survive an interruption, besides model/optimizer/scheduler state."""
    epoch: int = 0  # completed epochs
    best_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between steps (no work is torn mid-write)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> "StopFlag":
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@torch.no_grad()
def all_finite(model: nn.Module) -> torch.Tensor:
    """Whether every floating-point parameter and buffer (BatchNorm statistics too) is finite, as a 0-d bool
    tensor on the model's device: no sync, and three kernels rather than two per tensor (the per-tensor
    version left the GPU idle for milliseconds at every epoch end)."""
    tensors = [t.detach().flatten() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    device = next(model.parameters()).device
    return torch.cat(tensors).isfinite().all() if tensors else torch.ones((), dtype=torch.bool, device=device)


def train_epoch(training: Training, data: DeviceData, cfg: Config, epoch: int, stop: StopFlag, progress: bool
                ) -> dict[str, float]:
    """One pass over the training set. Sums stay on the device until the end of the epoch."""
    model, optimizer, scheduler = training.step_model, training.optimizer, training.scheduler
    x, y = data.x["train"], data.y["train"]
    batches = epoch_batches(len(x), cfg.batch_size, epoch, cfg.seed, x.device, distributed.rank(),
                            distributed.world())
    device = x.device
    sums = torch.zeros(3, device=device)  # objective, log loss, correct
    count = sum(len(idx) for idx in batches) * distributed.world()  # every rank runs equal full batches
    cudagraphs = cfg.compile and device.type == "cuda"
    step_ids = torch.arange(len(batches), device=device, dtype=torch.float32)
    first_bad = torch.full((), float("inf"), device=device)
    augment = not data.symmetry.augment.trivial
    model.train()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress,
               file=sys.stderr)
    for step, idx in enumerate(bar):
        if stop.signum is not None and not distributed.active():  # under DDP all ranks stop after the epoch
            raise Interrupted(f"{signal_name(stop.signum)} during epoch {epoch + 1}, step {step + 1}",
                              stop.signum)
        if cudagraphs:  # a new iteration: CUDA-graph outputs of the previous step may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        xb, yb = x[idx], y[idx]
        if augment:
            xb, yb = augment_batch(xb, yb, data.symmetry.augment)
        with training.autocast:
            logits = model(xb).float().squeeze(1)
        loss = training.loss_fn(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            first_bad = torch.where(torch.isfinite(loss) | (first_bad < step_ids[step]), first_bad, step_ids[step])
            hard = F.binary_cross_entropy_with_logits(logits, yb)
            sums += torch.stack([loss * len(idx), hard * len(idx), ((logits > 0).float() == yb).sum()])
    sums, first_bad = distributed.sum_over_ranks(sums), distributed.min_over_ranks(first_bad)
    # A non-finite gradient in the last step leaves no bad loss behind: the weights are checked too, before
    # they can reach a checkpoint. All in the one host sync of the epoch.
    finite = all_finite(training.model).to(sums.dtype)
    objective, hard_loss, correct, bad, weights_finite = torch.cat([sums, first_bad.view(1), finite.view(1)]).tolist()
    hint = lr_advice(cfg.lr)
    if math.isfinite(bad):
        raise Diverged(f"training diverged at epoch {epoch + 1}, step {int(bad) + 1} of {len(batches)}: the "
                       f"loss became NaN or infinite (or the gradient of the step before did); {hint}")
    if not weights_finite:
        raise Diverged(f"training diverged at epoch {epoch + 1}, step {len(batches)} of {len(batches)}: the "
                       f"weights became NaN or infinite (a non-finite gradient); {hint}")
    return {"train_objective": objective / count, "train_loss": hard_loss / count, "train_acc": correct / count}


def fit(training: Training, data: DeviceData, cfg: Config, state: TrainState,
        on_epoch: Callable[[TrainState, bool], None], log: Callable[[str], None] = print,
        progress: bool = False) -> TrainState:
    """Train until cfg.epochs or early stopping on validation log loss.

    After every epoch `on_epoch(state, improved)` saves checkpoints and metrics (the caller decides where).
    """
    model, device = training.model, data.x["train"].device
    with StopFlag() as stop:
        while state.epoch < cfg.epochs and state.bad_epochs < cfg.patience:
            epoch = state.epoch
            row = {"epoch": epoch + 1, "lr": training.optimizer.param_groups[0]["lr"]}
            row.update(train_epoch(training, data, cfg, epoch, stop, progress))
            distributed.sync_buffers(model)  # same BatchNorm statistics on every rank before evaluating
            val = distributed.from_main(validate(model, data, cfg, epoch), device)
            views = epoch_views(cfg, data)
            row.update({"val_loss": val["loss"], "val_acc": val["acc"], "val_auc": val["auc"],
                        "val_views": views.count() if views else 1})
            row["gap_acc"] = row["train_acc"] - row["val_acc"]
            row["gap_loss"] = row["val_loss"] - row["train_loss"]
            improved = row["val_loss"] < state.best_loss
            state.epoch = epoch + 1
            state.history.append(row)
            if improved:
                state.best_loss, state.best_epoch, state.bad_epochs = row["val_loss"], epoch + 1, 0
            else:
                state.bad_epochs += 1
            on_epoch(state, improved)
            log(format_row(row, improved))
            if distributed.any_rank(stop.signum is not None, device):
                signum = stop.signum or signal.SIGTERM  # under DDP another rank may have been signalled
                raise Interrupted(f"{signal_name(signum)} after epoch {epoch + 1}", signum)
    return state


def format_row(row: dict[str, float], improved: bool) -> str:
    views = int(row["val_views"])
    return (f"epoch {row['epoch']:3d}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f} | val ({views} view{'s' * (views > 1)}) loss {row['val_loss']:.4f} "
            f"acc {row['val_acc']:.4f} "
            f"auc {row['val_auc']:.4f} | gap acc {row['gap_acc']:+.4f} loss {row['gap_loss']:+.4f}"
            + ("  *" if improved else ""))
