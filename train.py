"""The training loop and what it builds on (model, optimizer, schedule, loss, precision, DDP, compile): device-
resident data, one host sync per epoch, divergence and signals checked without stalling the steps; and how every
command ends (exit_code)."""
import dataclasses
import math
import signal
import sys
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import distributed
from reference import ReferenceCNN
from config import Config, UserError
from data import DeviceData, epoch_batches
from metrics import scores
from symmetry import SymmetryPlan, augment_batch, view_averaged_logits
from vision_transformer import VisionTransformer


class Diverged(Exception):
    """A non-finite loss, weights or predictions: training stops, the best checkpoint so far is kept."""


class NonFinitePredictions(Diverged):
    """Finite weights whose forward pass overflows: some predictions are NaN or infinite."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the exit code is 128 + signum, as if the signal had killed the process."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


def overflow_message(problem: Exception | str, where: str, lr: float) -> str:
    """The one line of a non-finite loss, weights or predictions: where, what, and the likely cause."""
    return f"{where}: {problem}; the learning rate (--lr {lr:g}) is probably too high, try --lr {lr / 10:g}"


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # TF32 matmuls: ample precision here
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def build_model(cfg: Config, in_channels: int, image_size: int) -> nn.Module:
    if cfg.model == "cnn":
        if image_size % 4:
            raise UserError(f"--model cnn pools twice by 2, so the grid size must divide by 4 (got {image_size}); "
                            f"use --model vit")
        return ReferenceCNN(in_channels=in_channels, image_size=image_size)
    if image_size % cfg.patch_size:
        divisors = ", ".join(str(d) for d in range(1, image_size) if image_size % d == 0)
        raise UserError(f"--patch-size {cfg.patch_size} does not divide the image size {image_size}; "
                        f"use a divisor such as {divisors}")
    if cfg.emb_dim % cfg.heads:
        raise UserError(f"--emb-dim {cfg.emb_dim} is not divisible by --heads {cfg.heads}")
    return VisionTransformer(in_channels=in_channels, image_size=image_size, patch_size=cfg.patch_size,
                             emb_dim=cfg.emb_dim, depth=cfg.depth, heads=cfg.heads, mlp_dim=cfg.mlp_dim,
                             dropout=cfg.dropout, emb_dropout=cfg.emb_dropout, patch_norm=cfg.patch_norm,
                             block_norm=cfg.block_norm, init=cfg.init, pool=cfg.pool)


def build_optimizer(cfg: Config, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on matrices and kernels only: biases, norms, CLS and position embeddings are left alone."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        (keep if p.ndim < 2 or name.endswith(("cls_token", "pos_embedding")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    fast = {"fused" if device.type == "cuda" else "foreach": True}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fast)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fast)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per step: sgd LinearLR 1.0 -> 0.1 over all epochs; adamw linear warmup, then cosine decay to zero."""
    total = steps_per_epoch * cfg.epochs
    if cfg.optimizer == "sgd":
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=total)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_loss(cfg: Config) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """bce: BCE with logits; mse: MSE on sigmoid(logits); smooth: BCE on targets y(1-eps) + eps/2."""
    if cfg.loss == "mse":
        return lambda logits, y: F.mse_loss(torch.sigmoid(logits), y)
    eps = cfg.smoothing if cfg.loss == "smooth" else 0.0
    return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y * (1 - eps) + 0.5 * eps)


def resolve_precision(cfg: Config, device: torch.device) -> Config:
    """--precision auto made concrete: bf16 where `device` has it natively (emulated bf16 is slower), else fp32."""
    if cfg.precision != "auto":
        return cfg
    native = (torch.cuda.is_bf16_supported() if device.type == "cuda" else
              torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dataclasses.replace(cfg, precision="bf16" if native else "fp32")


@dataclass
class Training:
    model: nn.Module  # eager and unwrapped: evaluation and checkpoints
    step_model: nn.Module  # what the training steps call: `model` under DDP and torch.compile, same parameters
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int  # per process
    autocast: AbstractContextManager
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_training(cfg: Config, in_channels: int, image_size: int, n_train: int, device: torch.device
                   ) -> Training:
    """Model, optimizer, schedule, autocast and loss; compiled with CUDA graphs on one GPU (launch-bound)."""
    model = build_model(cfg, in_channels, image_size).to(device)
    step_model = model
    if distributed.active():  # DDP shares `model`'s parameters; SyncBatchNorm converts in place, keeping the keys
        if cfg.sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        graphs = device.type == "cuda" and not distributed.active()
        step_model = torch.compile(step_model, mode="reduce-overhead" if graphs else None)
    steps_per_epoch = max(n_train // (cfg.batch_size * distributed.world()), 1)
    optimizer = build_optimizer(cfg, model, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    return Training(model, step_model, optimizer, build_scheduler(cfg, optimizer, steps_per_epoch), steps_per_epoch,
                    autocast, training_loss(cfg))


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, plan: SymmetryPlan | None = None) -> torch.Tensor:
    """Eval-mode logits of state 1, (N,), averaged over the plan's views; NonFinitePredictions where a forward pass
    overflows."""
    forward = model if plan is None else lambda images: view_averaged_logits(model, images, model.shift_unit, plan)
    model.eval()  # train_epoch switches back
    logits = torch.cat([forward(x[i:i + 2048]).float().squeeze(1) for i in range(0, len(x), 2048)])
    bad = int((~torch.isfinite(logits)).sum())
    if bad:
        raise NonFinitePredictions(f"{bad} of {len(logits)} predictions are NaN or infinite (forward pass overflows)")
    return logits


@dataclass
class TrainState:
    """Everything that must survive an interruption, besides model/optimizer/scheduler state."""
    epoch: int = 0  # completed epochs
    best_epoch: int = 0  # the first with the lowest validation loss in `history`
    history: list[dict[str, float]] = field(default_factory=list)


class StopFlag:
    """fit's SIGINT/SIGTERM handler: the loop checks `signum` between steps, so no write is torn."""
    signum: int | None = None

    def handle(self, signum: int, frame) -> None:
        self.signum = signum


def train_epoch(training: Training, data: DeviceData, cfg: Config, epoch: int, stop: StopFlag, progress: bool
                ) -> dict[str, float]:
    """One pass over the training set; one host sync at its end, which also checks every weight and buffer."""
    x, y, model = data.x["train"], data.y["train"], training.step_model
    batches = epoch_batches(len(x), cfg.batch_size, epoch, cfg.seed, x.device, distributed.rank(),
                            distributed.world())
    sums = torch.zeros(3, device=x.device)  # objective, log loss, correct
    first_bad = torch.full((), float("inf"), device=x.device)  # the first step with a non-finite loss
    model.train()
    for step, idx in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                                    disable=not progress, file=sys.stderr)):
        if stop.signum is not None and not distributed.active():  # under DDP all ranks stop after the epoch
            name = signal.Signals(stop.signum).name
            raise Interrupted(f"{name} during epoch {epoch + 1}, step {step + 1}", stop.signum)
        if cfg.compile and x.is_cuda:  # CUDA graphs may now overwrite the previous step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        xb, yb = x[idx], y[idx]
        if data.symmetry.augments:
            xb, yb = augment_batch(xb, yb, data.symmetry)
        with training.autocast:
            logits = model(xb).float().squeeze(1)
        loss = training.loss_fn(logits, yb)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        training.scheduler.step()
        with torch.no_grad():
            first_bad = torch.where(loss.isfinite() | (first_bad < step), first_bad, float(step))
            hard = F.binary_cross_entropy_with_logits(logits, yb)
            sums += torch.stack([loss * len(idx), hard * len(idx), ((logits > 0).float() == yb).sum()])
    sums, first_bad = distributed.all_reduce(sums), distributed.all_reduce(first_bad, "min")
    tensors = [t.detach().flatten() for t in (*training.model.parameters(), *training.model.buffers())
               if t.is_floating_point()]  # a non-finite last gradient leaves no bad loss, only bad weights
    finite = torch.cat(tensors).isfinite().all().to(sums.dtype)
    objective, hard_loss, correct, bad, weights_finite = torch.cat([sums, first_bad.view(1), finite.view(1)]).tolist()
    count = sum(len(idx) for idx in batches) * distributed.world()
    if math.isfinite(bad) or not weights_finite:
        step = int(bad) + 1 if math.isfinite(bad) else len(batches)
        what = ("the loss became NaN or infinite (or the gradient of the step before did)" if math.isfinite(bad) else
                "the weights became NaN or infinite (a non-finite gradient)")
        where = f"training diverged at epoch {epoch + 1}, step {step} of {len(batches)}"
        raise Diverged(overflow_message(what, where, cfg.lr))
    return {"train_objective": objective / count, "train_loss": hard_loss / count, "train_acc": correct / count}


def fit(training: Training, data: DeviceData, cfg: Config, state: TrainState,
        on_epoch: Callable[[TrainState, bool], None], log: Callable[[str], None] = print,
        progress: bool = False) -> TrainState:
    """Train until cfg.epochs or early stopping on validation log loss, calling on_epoch(state, improved)."""
    model, device, stop = training.model, data.x["train"].device, StopFlag()
    views = data.symmetry.epoch_views()  # image and partner, unshifted: the best epoch of all views in 12 of 12 runs
    n = views.view_count()
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while state.epoch < cfg.epochs and state.epoch - state.best_epoch < cfg.patience:
            epoch = state.epoch
            row = {"epoch": epoch + 1, "lr": training.optimizer.param_groups[0]["lr"],
                   **train_epoch(training, data, cfg, epoch, stop, progress)}
            # rank 0's BatchNorm statistics (an epoch's last step updates them after DDP's broadcast) on every rank
            distributed.from_main(*model.buffers())
            try:
                val = scores(torch.sigmoid(predict_logits(model, data.x["valid"], views)), data.y["valid"])
            except NonFinitePredictions as e:
                raise Diverged(overflow_message(e, f"training diverged at epoch {epoch + 1} on the validation "
                                                   f"split", cfg.lr)) from None
            numbers = torch.tensor([val["loss"], val["acc"], val["auc"]], dtype=torch.float64, device=device)
            distributed.from_main(numbers)  # rank 0's: early stopping must decide identically everywhere
            row.update(zip(("val_loss", "val_acc", "val_auc"), numbers.tolist()), val_views=n)
            row.update(gap_acc=row["train_acc"] - row["val_acc"], gap_loss=row["val_loss"] - row["train_loss"])
            improved = row["val_loss"] < min((r["val_loss"] for r in state.history), default=math.inf)
            state.epoch, state.best_epoch = epoch + 1, epoch + 1 if improved else state.best_epoch
            state.history.append(row)
            on_epoch(state, improved)
            log(f"epoch {epoch + 1:3d}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} acc "
                f"{row['train_acc']:.4f} | val ({n} view{'s' * (n > 1)}) loss {row['val_loss']:.4f} acc "
                f"{row['val_acc']:.4f} auc {row['val_auc']:.4f} | gap acc {row['gap_acc']:+.4f} loss "
                f"{row['gap_loss']:+.4f}" + ("  *" if improved else ""))
            signum = int(distributed.all_reduce(torch.tensor(stop.signum or 0, device=device), "max"))
            if signum:  # under DDP every rank stops when any rank was signalled
                raise Interrupted(f"{signal.Signals(signum).name} after epoch {epoch + 1}", signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return state


def exit_code(body: Callable[[], int | None], hint: Callable[[Interrupted], str] = lambda e: "") -> int:
    """Every entry point's exit code, `sys.exit(exit_code(lambda: body(args), hint))`: 0 done, 2 bad input (one
    line, no traceback), 3 diverged, 128 + signal number when interrupted. SIGINT/SIGTERM raise Interrupted
    (fit's StopFlag takes over while training); a UserError is printed by every rank, a divergence or an
    interruption (with hint(e)) by rank 0 only."""
    def raise_interrupted(signum: int, frame) -> None:
        raise Interrupted(signal.Signals(signum).name, signum)
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        return body() or 0
    except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
        return e.code or 0
    except UserError as e:
        print(("" if distributed.is_main() else f"[rank {distributed.rank()}] ") + f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        if distributed.is_main():
            print(f"error: {e}", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt) as e:
        e = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT.name, signal.SIGINT)
        if distributed.is_main():
            print(f"interrupted: {e}" + (f"; {hint(e)}" if hint(e) else ""), file=sys.stderr)
        return 128 + int(e.signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # distributed.setup's group
            torch.distributed.destroy_process_group()
