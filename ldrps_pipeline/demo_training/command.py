"""Train the project's own small latent diffusion model (the demo model) from packaged photos.

One seeded, resumable command trains, in diffusers format:

1. an ``AutoencoderKL`` (4 latent channels, downsampling factor 4) on random crops of the
   training photos (``ldrps_pipeline.evaluation.photos.TRAIN_PHOTOS``) with an L1 + MSE + tiny-KL loss; its
   ``scaling_factor`` is then set to 1 / (measured std of the latents);
2. a ``UNet2DConditionModel`` with cross-attention (epsilon prediction, Stable Diffusion's
   scaled-linear noise schedule) jointly with a small ``CLIPTextModel`` and the byte-level
   CLIP tokenizer, on captions of the photos, with the caption dropped (replaced by "") with
   probability 0.15 for classifier-free guidance. The UNet and text encoder that are saved are
   an exponential moving average (EMA) of the trained weights.

Both phases run for a wall-clock budget (``--vae-minutes``, ``--unet-minutes``) or a step count,
with AdamW, linear warm-up and cosine decay driven by the fraction of the budget used, and a final
part of each phase at a higher crop size (``--hires-size``). Checkpoints are written under
``--work-dir``; re-running the same command continues where it stopped. The training curve goes
to ``<work-dir>/training_log.json``. At the end the VAE's reconstruction PSNR on held-out 128x128
crops (``ldrps_pipeline.evaluation.photos.heldout_crops``) is measured, and ``--output`` receives ``vae/``,
``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` (safetensors) and a ``README.md``.

Presets: ``--preset cpu`` (default) completes in under 60 minutes on a 2-core CPU;
``--preset gpu`` uses larger batches, crops and budgets for one CUDA GPU (about 30 minutes).
Every preset value can be overridden by its own option.

Example::

    python -m ldrps_pipeline.demo_training.command --output ldrps_pipeline/demo_model --work-dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Passive OpenMP waiting: with the default spinning, a CPU shared with other processes slows torch's
# threads down up to tenfold (measured here: 20 s instead of 3 s per VAE step). libgomp reads this
# when torch is first imported, so the command line should set it too when torch is imported earlier.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ldrps_pipeline.evaluation.photos import CAPTIONS, HELDOUT_PHOTOS, TRAIN_PHOTOS, heldout_crops, load_photo
from ldrps_pipeline.scheduling_ldrps import STABLE_DIFFUSION_DDIM_CONFIG

__all__ = ["PRESETS", "build_parser", "main", "parse_args", "save_demo_pipeline", "train"]

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "vae_minutes": 18.0,
        "unet_minutes": 36.0,
        "vae_channels": (32, 64, 64),
        "vae_layers": 2,
        "vae_norm_groups": 8,
        "unet_channels": (64, 128, 128),
        "unet_layers": 1,
        "unet_norm_groups": 16,
        "unet_heads": 4,
        "text_hidden": 64,
        "text_layers": 2,
        "text_heads": 2,
        "crop_size": 64,
        "hires_size": 128,
        "hires_fraction": 0.2,
        "vae_batch": 16,
        "unet_batch": 32,
        "vae_lr": 5e-4,
        "unet_lr": 4e-4,
        "latent_bank": 16384,
    },
    "gpu": {
        "vae_minutes": 8.0,
        "unet_minutes": 22.0,
        "vae_channels": (64, 96, 96),
        "vae_layers": 2,
        "vae_norm_groups": 16,
        "unet_channels": (64, 128, 128),
        "unet_layers": 1,
        "unet_norm_groups": 16,
        "unet_heads": 4,
        "text_hidden": 64,
        "text_layers": 3,
        "text_heads": 2,
        "crop_size": 128,
        "hires_size": 256,
        "hires_fraction": 0.15,
        "vae_batch": 32,
        "unet_batch": 128,
        "vae_lr": 5e-4,
        "unet_lr": 4e-4,
        "latent_bank": 65536,
    },
}
"""Default sizes and budgets per preset; every entry can be overridden by its command-line option."""

ARCHITECTURE_KEYS = (
    "vae_channels",
    "vae_layers",
    "vae_norm_groups",
    "unet_channels",
    "unet_layers",
    "unet_norm_groups",
    "unet_heads",
    "text_hidden",
    "text_layers",
    "text_heads",
    "seed",
)
"""Options that a resumed run must not change (they define the models)."""


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(" ", "").split(",") if part)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``ldrps-train-demo``."""
    parser = argparse.ArgumentParser(
        prog="ldrps-train-demo",
        description="Train the small demo latent diffusion model (VAE, UNet, text encoder) from packaged "
        "photos. Resumable: re-run the same command to continue.",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the diffusers-format model")
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for checkpoints and logs")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="default sizes and budgets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="training compute precision (weights stay fp32); auto: bf16 autocast where the hardware has "
        "native bf16 (CUDA, or CPUs with AVX512-BF16/AMX), else fp32",
    )
    group = parser.add_argument_group("budgets (a phase ends at whichever limit comes first)")
    group.add_argument("--vae-minutes", type=float, help="wall-clock minutes of VAE training")
    group.add_argument("--unet-minutes", type=float, help="wall-clock minutes of UNet + text encoder training")
    group.add_argument("--vae-steps", type=int, default=0, help="step limit of the VAE phase (0: none)")
    group.add_argument("--unet-steps", type=int, default=0, help="step limit of the UNet phase (0: none)")
    group = parser.add_argument_group("sizes")
    group.add_argument("--vae-channels", type=_int_tuple, help="3 comma-separated block widths")
    group.add_argument("--vae-layers", type=int, help="resnet layers per VAE block")
    group.add_argument("--vae-norm-groups", type=int)
    group.add_argument("--unet-channels", type=_int_tuple, help="3 comma-separated block widths")
    group.add_argument("--unet-layers", type=int, help="resnet layers per UNet block")
    group.add_argument("--unet-norm-groups", type=int)
    group.add_argument("--unet-heads", type=int, help="attention heads of the UNet")
    group.add_argument("--text-hidden", type=int, help="text encoder width (= UNet cross-attention dim)")
    group.add_argument("--text-layers", type=int)
    group.add_argument("--text-heads", type=int)
    group.add_argument("--max-mb", type=float, default=40.0, help="limit on all weights together (1e6 bytes)")
    group = parser.add_argument_group("data and optimisation")
    group.add_argument("--crop-size", type=int, help="training crop size in pixels (multiple of 16)")
    group.add_argument("--hires-size", type=int, help="crop size of the final part of each phase")
    group.add_argument("--hires-fraction", type=float, help="fraction of each phase at --hires-size (0: off)")
    group.add_argument("--vae-batch", type=int, help="VAE batch at --crop-size (divided by the area ratio at hires)")
    group.add_argument("--unet-batch", type=int, help="UNet batch at --crop-size (same rule)")
    group.add_argument("--vae-lr", type=float)
    group.add_argument("--unet-lr", type=float)
    group.add_argument("--warmup", type=float, default=0.03, help="warm-up fraction of each phase")
    group.add_argument("--kl-weight", type=float, default=1e-6)
    group.add_argument("--text-dropout", type=float, default=0.15, help="probability of the empty caption")
    group.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting (0: plain MSE)")
    group.add_argument("--ema-decay", type=float, default=0.999)
    group.add_argument("--latent-bank", type=int, help="pre-encoded training crops for the UNet phase")
    group.add_argument("--crop-scale-min", type=float, default=0.5, help="smallest crop side / shorter side")
    group = parser.add_argument_group("logging and checkpoints")
    group.add_argument("--log-every", type=int, default=25, help="steps per logged loss")
    group.add_argument("--checkpoint-minutes", type=float, default=4.0)
    group.add_argument("--eval-crops", type=int, default=4, help="held-out 128x128 crops per photo for PSNR")
    group.add_argument(
        "--stop-after-steps",
        type=int,
        default=0,
        help="stop (after a checkpoint) once this many steps ran in this invocation; for testing resumption",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse options and fill the unset ones from the preset."""
    args = build_parser().parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.vae_channels = tuple(args.vae_channels)
    args.unet_channels = tuple(args.unet_channels)
    if len(args.vae_channels) != 3 or len(args.unet_channels) != 3:
        raise SystemExit("--vae-channels and --unet-channels need exactly 3 values")
    for size in (args.crop_size, args.hires_size):
        if size % 16:
            raise SystemExit("crop sizes must be multiples of 16")
    args.command = " ".join(shlex.quote(a) for a in ["ldrps-train-demo", *(sys.argv[1:] if argv is None else argv)])
    return args


# ----------------------------------------------------------------------------------------------
# models


def make_vae(args: argparse.Namespace) -> Any:
    """The VAE: 3 blocks (downsampling factor 4), 4 latent channels, no attention (fully convolutional)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=args.vae_channels,
        layers_per_block=args.vae_layers,
        latent_channels=4,
        norm_num_groups=args.vae_norm_groups,
        sample_size=args.hires_size,
        mid_block_add_attention=False,
        scaling_factor=1.0,
    )


def make_unet(args: argparse.Namespace) -> Any:
    """The UNet: 3 levels, cross-attention on the two lower levels and the middle, epsilon prediction."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=args.hires_size // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=args.unet_channels,
        layers_per_block=args.unet_layers,
        norm_num_groups=args.unet_norm_groups,
        cross_attention_dim=args.text_hidden,
        attention_head_dim=args.unet_heads,  # diffusers' legacy name: the number of heads
    )


def make_text_encoder(args: argparse.Namespace, tokenizer: Any) -> Any:
    """A small CLIP text encoder matching the byte-level tokenizer (vocabulary 514, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.text_hidden,
        intermediate_size=4 * args.text_hidden,
        num_hidden_layers=args.text_layers,
        num_attention_heads=args.text_heads,
        max_position_embeddings=77,
        projection_dim=args.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# data


class PhotoCrops:
    """Random augmented square crops of the training photos, as tensors in [-1, 1].

    Each crop takes a photo uniformly, a square whose side is a fraction in [scale_min, 1] of the
    shorter side, resizes it (antialiased bilinear), flips it horizontally with probability 0.5 and
    jitters brightness, contrast and saturation by up to 10 %.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device, scale_min: float = 0.5) -> None:
        self.names = names
        self.device = device
        self.scale_min = scale_min
        self.photos = [torch.from_numpy(load_photo(n)).permute(2, 0, 1).contiguous().to(device) for n in names]

    def sample(self, batch: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (images of shape (batch, 3, size, size) in [-1, 1], photo indices of shape (batch,))."""
        u = torch.rand(batch, 7, generator=generator).tolist()
        indices = torch.randint(0, len(self.photos), (batch,), generator=generator)
        crops = []
        for i, photo_index in enumerate(indices.tolist()):
            photo = self.photos[photo_index]
            height, width = photo.shape[1:]
            short = min(height, width)
            side = max(8, round(short * (self.scale_min + (1.0 - self.scale_min) * u[i][0])))
            top = int(u[i][1] * (height - side + 1))
            left = int(u[i][2] * (width - side + 1))
            crop = photo[None, :, top : top + side, left : left + side]
            if side != size:
                crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if u[i][3] < 0.5:
                crop = crop.flip(-1)
            brightness, contrast, saturation = (0.9 + 0.2 * u[i][k] for k in (4, 5, 6))
            grey = crop.mean(dim=1, keepdim=True)
            crop = grey + saturation * (crop - grey)
            crop = crop.mean() + contrast * (crop - crop.mean())
            crops.append((crop * brightness).clamp(0.0, 1.0))
        return torch.cat(crops) * 2.0 - 1.0, indices


# ----------------------------------------------------------------------------------------------
# training helpers


def learning_rate(progress: float, peak: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction, then cosine decay to 2 % of ``peak``."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    q = min(1.0, (progress - warmup) / max(1e-8, 1.0 - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * q)))


class Ema:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().clone() for p in parameters]
        self.updates = 0

    @torch.no_grad()
    def update(self, parameters: list[torch.nn.Parameter]) -> None:
        """Move the average towards the current parameters."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: list[torch.nn.Parameter]) -> None:
        """Write the averaged values into the parameters."""
        for target, value in zip(parameters, self.shadow, strict=True):
            target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state."""
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from ``state_dict``."""
        for target, value in zip(self.shadow, state["shadow"], strict=True):
            target.copy_(value)
        self.updates = int(state["updates"])


def _use_bf16(args: argparse.Namespace, device: torch.device) -> bool:
    if args.precision != "auto":
        return args.precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images with values in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def heldout_vae_psnr(vae: Any, device: torch.device, count_per_photo: int = 4, size: int = 128) -> float:
    """Mean reconstruction PSNR (dB, fp32, posterior mode) of the VAE on held-out crops."""
    vae.eval()
    values = []
    for crop in heldout_crops(size=size, count_per_photo=count_per_photo, seed=0):
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].to(device) * 2.0 - 1.0
        latent = vae.encode(x).latent_dist.mode()
        y = ((vae.decode(latent).sample.clamp(-1.0, 1.0) + 1.0) / 2.0)[0].permute(1, 2, 0).cpu().numpy()
        values.append(psnr(y, crop))
    return float(np.mean(values))


@dataclass
class Phase:
    """Budget bookkeeping of one training phase."""

    minutes: float
    max_steps: int
    hires_fraction: float
    step: int = 0
    elapsed: float = 0.0

    def progress(self) -> float:
        """Fraction of the phase done: the larger of time used and steps done."""
        values = [0.0]
        if self.minutes > 0:
            values.append(self.elapsed / (60.0 * self.minutes))
        if self.max_steps > 0:
            values.append(self.step / self.max_steps)
        if self.minutes <= 0 and self.max_steps <= 0:
            return 1.0
        return max(values)

    def hires(self) -> bool:
        """Whether the phase is in its final, higher-resolution part."""
        return self.hires_fraction > 0 and self.progress() >= 1.0 - self.hires_fraction


class _Stop(Exception):
    """Raised when --stop-after-steps is reached (after a checkpoint was written)."""


# ----------------------------------------------------------------------------------------------
# phases


def _batch_for(args: argparse.Namespace, base: int, hires: bool) -> tuple[int, int]:
    if not hires:
        return base, args.crop_size
    ratio = (args.hires_size / args.crop_size) ** 2
    return max(1, round(base / ratio)), args.hires_size


def train_vae(args: argparse.Namespace, ctx: dict[str, Any]) -> Any:
    """Phase 1: train the VAE; returns it with ``scaling_factor`` set, saved to ``<work-dir>/vae``."""
    device, work, log = ctx["device"], args.work_dir, ctx["log"]
    torch.manual_seed(args.seed)
    vae = make_vae(args).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    phase = Phase(args.vae_minutes, args.vae_steps, args.hires_fraction)
    generator = torch.Generator().manual_seed(args.seed + 1)
    ckpt_path = work / "vae_checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        phase.step, phase.elapsed = state["step"], state["elapsed"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"[vae] resuming at step {phase.step} ({phase.elapsed / 60:.1f} min done)", flush=True)

    def checkpoint() -> None:
        state = {
            "model": vae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": phase.step,
            "elapsed": phase.elapsed,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        _save_atomic(state, ckpt_path)
        ctx["account"]()
        _write_json(log, work / "training_log.json")

    data: PhotoCrops = ctx["data"]
    vae.train()
    window: list[float] = []
    last_ckpt = time.monotonic()
    steps_this_run = 0
    while phase.progress() < 1.0:
        start = time.monotonic()
        progress = phase.progress()
        lr = learning_rate(progress, args.vae_lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch, size = _batch_for(args, args.vae_batch, phase.hires())
        x, _ = data.sample(batch, size, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["bf16"]):
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
        reconstruction = reconstruction.float()
        mse = F.mse_loss(reconstruction, x)
        loss = F.l1_loss(reconstruction, x) + mse + args.kl_weight * posterior.kl().float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        phase.step += 1
        steps_this_run += 1
        phase.elapsed += time.monotonic() - start
        # PSNR of the training batch in [0, 1] units (the MSE of [-1, 1] images is 4x larger)
        window.append(10.0 * math.log10(4.0 / max(mse.item(), 1e-12)))
        window.append(loss.item())
        if phase.step % args.log_every == 0:
            record = {
                "step": phase.step,
                "minutes": round(phase.elapsed / 60, 3),
                "loss": round(float(np.mean(window[1::2])), 6),
                "train_psnr": round(float(np.mean(window[0::2])), 3),
                "lr": lr,
                "size": size,
                "batch": batch,
            }
            log["vae"].append(record)
            print(f"[vae] {json.dumps(record)}", flush=True)
            window.clear()
        if time.monotonic() - last_ckpt > 60 * args.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.monotonic()
        if args.stop_after_steps and steps_this_run >= args.stop_after_steps:
            checkpoint()
            raise _Stop
    checkpoint()

    vae.eval()
    with torch.no_grad():
        generator_scale = torch.Generator().manual_seed(args.seed + 2)
        latents = []
        for _ in range(8):
            x, _ = data.sample(32, args.crop_size, generator_scale)
            latents.append(vae.encode(x).latent_dist.sample())
        std = float(torch.cat(latents).float().std())
    vae.register_to_config(scaling_factor=1.0 / std)
    log["vae_latent_std"] = std
    log["vae_steps"] = phase.step
    log["vae_minutes"] = round(phase.elapsed / 60, 3)
    vae.save_pretrained(work / "vae")
    print(f"[vae] done: {phase.step} steps, latent std {std:.4f}, scaling_factor {1 / std:.5f}", flush=True)
    return vae


def _encode_bank(
    vae: Any, data: PhotoCrops, count: int, size: int, seed: int, ctx: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Pre-encode ``count`` random training crops: latent mean, std and photo index."""
    generator = torch.Generator().manual_seed(seed)
    means, stds, indices = [], [], []
    chunk = max(1, 4096 // size)
    done = 0
    with torch.no_grad():
        while done < count:
            n = min(chunk, count - done)
            x, idx = data.sample(n, size, generator)
            with torch.autocast(ctx["device"].type, dtype=torch.bfloat16, enabled=ctx["bf16"]):
                dist = vae.encode(x).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
            indices.append(idx)
            done += n
    return {"mean": torch.cat(means), "std": torch.cat(stds), "index": torch.cat(indices)}


def train_unet(args: argparse.Namespace, ctx: dict[str, Any], vae: Any) -> tuple[Any, Any, Any]:
    """Phase 2: train the UNet and the text encoder jointly.

    Returns:
        (unet, text_encoder, tokenizer), the two models holding their EMA weights.
    """
    from diffusers import DDIMScheduler

    from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer

    device, work, log = ctx["device"], args.work_dir, ctx["log"]
    tokenizer = byte_level_clip_tokenizer()
    torch.manual_seed(args.seed + 10)
    unet = make_unet(args).to(device)
    text_encoder = make_text_encoder(args, tokenizer).to(device)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.unet_lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = Ema(parameters, args.ema_decay)
    scheduler = DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG)
    alphas = scheduler.alphas_cumprod.to(device)
    phase = Phase(args.unet_minutes, args.unet_steps, args.hires_fraction)
    generator = torch.Generator().manual_seed(args.seed + 11)
    ckpt_path = work / "unet_checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        phase.step, phase.elapsed = state["step"], state["elapsed"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"[unet] resuming at step {phase.step} ({phase.elapsed / 60:.1f} min done)", flush=True)

    def checkpoint() -> None:
        state = {
            "unet": unet.state_dict(),
            "text_encoder": text_encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
            "step": phase.step,
            "elapsed": phase.elapsed,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        _save_atomic(state, ckpt_path)
        ctx["account"]()
        _write_json(log, work / "training_log.json")

    # caption table: one row per training photo, the last row is the empty caption
    captions = [CAPTIONS[name] for name in ctx["data"].names] + [""]
    token_ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    token_ids = token_ids.input_ids.to(device)
    empty_row = len(captions) - 1
    scaling = float(vae.config.scaling_factor)

    banks: dict[int, dict[str, torch.Tensor]] = {}

    def bank_for(size: int) -> dict[str, torch.Tensor]:
        if size not in banks:
            path = work / f"latent_bank_{size}.pt"
            if path.exists():
                banks[size] = torch.load(path, weights_only=True)
            else:
                count = max(64, round(args.latent_bank * (args.crop_size / size) ** 2 / 2))
                if size == args.crop_size:
                    count = args.latent_bank
                begin = time.monotonic()
                banks[size] = _encode_bank(vae, ctx["data"], count, size, args.seed + 100 + size, ctx)
                _save_atomic(banks[size], path)
                print(
                    f"[unet] encoded {count} crops of {size}px in {time.monotonic() - begin:.0f} s",
                    flush=True,
                )
        return banks[size]

    unet.train()
    text_encoder.train()
    window: list[float] = []
    last_ckpt = time.monotonic()
    steps_this_run = 0
    while phase.progress() < 1.0:
        start = time.monotonic()
        progress = phase.progress()
        lr = learning_rate(progress, args.unet_lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch, size = _batch_for(args, args.unet_batch, phase.hires())
        bank = bank_for(size)
        pick = torch.randint(0, bank["index"].shape[0], (batch,), generator=generator)
        eps_latent = torch.randn(bank["mean"][pick].shape, generator=generator)
        latents = ((bank["mean"][pick] + bank["std"][pick] * eps_latent) * scaling).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        timesteps = timesteps.to(device)
        rows = bank["index"][pick].clone()
        rows[torch.rand(batch, generator=generator) < args.text_dropout] = empty_row
        unique_rows, inverse = torch.unique(rows, return_inverse=True)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["bf16"]):
            states = text_encoder(token_ids[unique_rows.to(device)])[0]
            prediction = unet(noisy, timesteps, states[inverse.to(device)]).sample
        error = (prediction.float() - noise).pow(2).mean(dim=(1, 2, 3))
        if args.snr_gamma > 0:
            snr = alphas[timesteps] / (1.0 - alphas[timesteps])
            error = error * torch.clamp(snr, max=args.snr_gamma) / snr
        loss = error.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        ema.update(parameters)
        phase.step += 1
        steps_this_run += 1
        phase.elapsed += time.monotonic() - start
        window.append(loss.item())
        if phase.step % args.log_every == 0:
            record = {
                "step": phase.step,
                "minutes": round(phase.elapsed / 60, 3),
                "loss": round(float(np.mean(window)), 6),
                "lr": lr,
                "size": size,
                "batch": batch,
            }
            log["unet"].append(record)
            print(f"[unet] {json.dumps(record)}", flush=True)
            window.clear()
        if time.monotonic() - last_ckpt > 60 * args.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.monotonic()
        if args.stop_after_steps and steps_this_run >= args.stop_after_steps:
            checkpoint()
            raise _Stop
    checkpoint()
    ema.copy_to(parameters)
    log["unet_steps"] = phase.step
    log["unet_minutes"] = round(phase.elapsed / 60, 3)
    print(f"[unet] done: {phase.step} steps", flush=True)
    return unet, text_encoder, tokenizer


# ----------------------------------------------------------------------------------------------
# output


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def _final_loss(records: list[dict[str, Any]], key: str = "loss") -> float | None:
    values = [r[key] for r in records[-4:]]
    return round(float(np.mean(values)), 5) if values else None


def _write_readme(args: argparse.Namespace, log: dict[str, Any], sizes: dict[str, Any]) -> None:
    machine = log["machine"]
    lines = [
        "# LD-RPS demo model",
        "",
        "A small latent diffusion model (VAE + UNet + CLIP text encoder + byte-level tokenizer + DDIM",
        "scheduler with Stable Diffusion's noise schedule) trained from scratch by",
        "`ldrps_pipeline.demo_training.command` on photos that ship inside scikit-image, scikit-learn and",
        "matplotlib. It is a toy prior for tests and demonstrations, not a general image model.",
        "",
        "## Command",
        "",
        "```",
        args.command,
        "```",
        "",
        f"Preset `{args.preset}`, seed {args.seed}. Resumable: the same command continues from the",
        "checkpoints in its `--work-dir`.",
        "",
        "## Data",
        "",
        f"- training photos: {', '.join(TRAIN_PHOTOS)}",
        f"- held out (never seen in training): {', '.join(HELDOUT_PHOTOS)}",
        f"- random square crops (side {args.crop_scale_min:g}-1 of the shorter side) resized to "
        f"{args.crop_size}px, the last {args.hires_fraction:.0%} of each phase at {args.hires_size}px; "
        "horizontal flips; brightness/contrast/saturation jitter of up to 10 %",
        "- captions from `ldrps_pipeline.evaluation.photos.CAPTIONS`, replaced by the empty caption with "
        f"probability {args.text_dropout:g}",
        "",
        "## Models",
        "",
        "| part | configuration | parameters |",
        "|---|---|---|",
        f"| vae | AutoencoderKL, blocks {list(args.vae_channels)}, {args.vae_layers} layers/block, 4 latent "
        f"channels, factor 4, scaling_factor {sizes['scaling_factor']:.5f} | {sizes['vae']:,} |",
        f"| unet | UNet2DConditionModel, blocks {list(args.unet_channels)}, {args.unet_layers} layer/block, "
        f"cross-attention dim {args.text_hidden}, epsilon prediction, EMA weights | {sizes['unet']:,} |",
        f"| text_encoder | CLIPTextModel, hidden {args.text_hidden}, {args.text_layers} layers, "
        f"77 positions, EMA weights | {sizes['text_encoder']:,} |",
        "| tokenizer | byte-level CLIPTokenizer (`ldrps_pipeline.demo_training.byte_tokenizer`), vocabulary 514 | - |",
        "| scheduler | DDIMScheduler, scaled-linear betas 0.00085-0.012, 1000 steps, leading spacing | - |",
        "",
        f"All weights (fp32 safetensors) together: {sizes['bytes'] / 1e6:.1f} MB.",
        "",
        "## Training",
        "",
        f"- machine: {machine['device']}, {machine['threads']} torch threads, {machine['platform']}, "
        f"torch {machine['torch']}, compute precision {machine['precision']}",
        f"- VAE: {log.get('vae_steps')} steps in {log.get('vae_minutes')} min "
        f"(AdamW, peak lr {args.vae_lr:g}, L1 + MSE + {args.kl_weight:g} KL), "
        f"final loss {_final_loss(log['vae'])}, "
        f"final training-batch PSNR {_final_loss(log['vae'], 'train_psnr')} dB",
        f"- UNet + text encoder: {log.get('unet_steps')} steps in {log.get('unet_minutes')} min "
        f"(AdamW, peak lr {args.unet_lr:g}, min-SNR gamma {args.snr_gamma:g}, EMA {args.ema_decay:g}), "
        f"final loss {_final_loss(log['unet'])}",
        f"- total wall clock: {log.get('total_minutes')} min",
        f"- **VAE reconstruction PSNR on held-out 128x128 crops** ({args.eval_crops} per held-out photo, "
        f"`heldout_crops(128, {args.eval_crops}, seed=0)`): **{log.get('vae_heldout_psnr'):.2f} dB**",
        "",
        "The training curve is in `training_log.json` of the work dir.",
        "",
    ]
    (args.output / "README.md").write_text("\n".join(lines))


def _check_size(args: argparse.Namespace) -> dict[str, int]:
    from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer

    with torch.device("meta"):
        counts = {
            "vae": count_parameters(make_vae(args)),
            "unet": count_parameters(make_unet(args)),
            "text_encoder": count_parameters(make_text_encoder(args, byte_level_clip_tokenizer())),
        }
    total = 4 * sum(counts.values())
    if total > args.max_mb * 1e6:
        raise SystemExit(f"the models would need {total / 1e6:.1f} MB of fp32 weights, over --max-mb {args.max_mb}")
    return counts


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or continue) the whole training described by parsed ``args``; returns the log."""
    torch.set_num_threads(max(1, args.threads))
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    counts = _check_size(args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.work_dir / "training_log.json"
    architecture = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in ARCHITECTURE_KEYS}
    if log_path.exists():
        log = json.loads(log_path.read_text())
        if log.get("architecture") != architecture:
            raise SystemExit(
                f"{args.work_dir} holds a run with other model options {log.get('architecture')}; "
                "use the same options or a fresh --work-dir"
            )
    else:
        log = {"architecture": architecture, "vae": [], "unet": [], "wall_seconds": 0.0, "parameters": counts}
    if log.get("done") and (args.output / "unet").exists():
        print(f"already finished; the model is in {args.output}", flush=True)
        return log
    bf16 = _use_bf16(args, device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    log["machine"] = {
        "device": device_name,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "precision": "bf16 autocast" if bf16 else "fp32",
    }
    log["command"] = args.command
    print(f"device {device_name}, precision {log['machine']['precision']}, parameters {counts}", flush=True)
    started = time.monotonic()
    wall_before = float(log.get("wall_seconds", 0.0))
    ctx = {
        "device": device,
        "bf16": bf16,
        "log": log,
        "data": PhotoCrops(TRAIN_PHOTOS, device, args.crop_scale_min),
    }

    def account() -> None:
        log["wall_seconds"] = wall_before + time.monotonic() - started

    ctx["account"] = account

    try:
        if (args.work_dir / "vae" / "config.json").exists():
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(args.work_dir / "vae").to(device)
            print("[vae] already trained; loaded from the work dir", flush=True)
        else:
            vae = train_vae(args, ctx)
            log["vae_heldout_psnr_after_phase"] = heldout_vae_psnr(vae, device, args.eval_crops)
            print(f"[vae] held-out PSNR {log['vae_heldout_psnr_after_phase']:.2f} dB", flush=True)
            account()
            _write_json(log, log_path)
        vae.requires_grad_(False)
        vae.eval()
        unet, text_encoder, tokenizer = train_unet(args, ctx, vae)
    except _Stop:
        account()
        _write_json(log, log_path)
        print("stopped after --stop-after-steps; re-run the same command to continue", flush=True)
        return log

    log["vae_heldout_psnr"] = heldout_vae_psnr(vae, device, args.eval_crops)
    args.output.mkdir(parents=True, exist_ok=True)
    save_demo_pipeline(vae, text_encoder, tokenizer, unet, args.output)
    size = sum(_folder_bytes(args.output / part) for part in ("vae", "unet", "text_encoder"))
    if size > args.max_mb * 1e6:
        raise SystemExit(f"the saved weights take {size / 1e6:.1f} MB, over --max-mb {args.max_mb}")
    account()
    log["total_minutes"] = round(log["wall_seconds"] / 60, 2)
    log["weights_bytes"] = size
    log["done"] = True
    sizes = {**counts, "bytes": size, "scaling_factor": float(vae.config.scaling_factor)}
    _write_readme(args, log, sizes)
    _write_json(log, log_path)
    print(
        f"done in {log['total_minutes']} min; VAE held-out PSNR {log['vae_heldout_psnr']:.2f} dB; "
        f"weights {size / 1e6:.1f} MB; model in {args.output}",
        flush=True,
    )
    return log


def save_demo_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, output: Path) -> None:
    """Save the trained prior as a complete ``LDRPSPipeline`` folder (default aligner and posterior scheduler)."""
    from diffusers import DDIMScheduler

    from ldrps_pipeline.alignment_ldrps import AlignmentModule
    from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
    from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler

    pipeline = LDRPSPipeline(
        vae=vae.to("cpu", torch.float32),
        text_encoder=text_encoder.to("cpu", torch.float32),
        tokenizer=tokenizer,
        unet=unet.to("cpu", torch.float32),
        scheduler=DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG),
        aligner=AlignmentModule(),
        posterior_scheduler=RecurrentPosteriorScheduler(),
    )
    pipeline.save_pretrained(output, safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``ldrps-train-demo``."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
