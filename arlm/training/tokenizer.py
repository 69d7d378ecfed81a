"""`arimg train-tokenizer`: the tokenizer's stages on the one Trainer (arlm.training.trainer).

Each stage is one switch, `stage=NAME` (conf/stage/). VQ-VAE stage (`stage=vqvae`, or `stage=gen` for the
generation tokenizer): pixel loss (L1 and/or L2) + the quantizer's losses, optionally the perceptual loss.
VQ-GAN stage (`stage=vqgan init_from=RUN`): the same plus a PatchGAN discriminator
with hinge loss, from `loss.disc_start` on; the generator's adversarial term is scaled by taming-
transformers' adaptive weight (eq. 7 of Esser et al., 2021) so it never drowns the reconstruction, and the
discriminator can be held back by LeCAM (Tseng et al., 2021).

Decoder stage (`stage=decoder init_from=RUN`, i.e. decoder_only=true): the encoder and codebook of RUN are loaded and frozen (the
quantizer stays in eval mode, so no code moves), and only the decoder trains, with the same losses; it may be
wider and deeper than the encoder (`tokenizer.decoder_channels`, `tokenizer.decoder_res_blocks`). Every image
keeps RUN's tokens, so token shards and transformers made with RUN draw with the new decoder as they are
(`arimg export --tokenizer`). Muse (Chang et al., 2023) fine-tuned a larger decoder on frozen VQGAN tokens so.
With `resample_from=TRANSFORMER` (`stage=decoder_post`) the decoder stage is RobusTok's post-training (Qiu et
al., 2025): for a share of each batch's whole images the decoder sees, instead of the image's codes, those the
transformer draws for them teacher-forced (each code drawn after the caption and the image's true codes before
it, as the sampler draws), and learns to draw the image from them: the sampler's errors are then painted over.

Codebook usage and perplexity are measured over a rolling window of the latest 65,536 tokens (LlamaGen's
protocol). The run directory gets metrics.jsonl, reconstruction grids (inputs above outputs) and a loss
plot every `trainer.image_every` steps, and checkpoints (arlm.checkpoint) every `trainer.ckpt_every`.
`resume=true` continues from the latest checkpoint: weights, optimizers, step, RNG and data position, so
the resumed losses equal those of an uninterrupted run on CPU.

Under torchrun the autoencoder and the discriminator are replicated with DDP (arlm.parallel): data.batch_size
is the global batch, each rank decodes its contiguous part of it (ShardLoader's `split`), and gradients are
averaged, so n processes give the losses of one on the same batches. What is not a gradient is made global
too: the quantizer's codebook state (k-means, EMA statistics, restarts: arlm.quantizers.vq), the adaptive
weight's two gradients, LeCAM's anchors, code usage and the logged figures. Rank 0 alone writes; the
checkpoint holds every rank's data position.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from PIL import Image

from arlm import checkpoint, parallel
from arlm.config import TokenizerConfig, TrainTokenizerConfig, to_yaml
from arlm.data.loader import ShardLoader
from arlm.device import autocast, resolve_device
from arlm.errors import ConfigError
from arlm.generation.resample import resampler
from arlm.log import log
from arlm.tokenizer.gan import LeCAM, PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from arlm.tokenizer.metrics import CodeUsage, psnr
from arlm.tokenizer.model import Tokenizer, from_unit, to_unit
from arlm.tokenizer.perceptual import build_perceptual
from arlm.training.common import Metrics, check, clip_gradients, set_lr, setup
from arlm.training.trainer import Run, Trainer
from arlm.viz import line_plot

KIND = "tokenizer"
USAGE_WINDOW = 65536
GRID_IMAGES = 8


def recon_grid(inputs: torch.Tensor, outputs: torch.Tensor, scale: int = 2) -> Image.Image:
    """uint8 (N, 3, H, W) inputs in the top row, their reconstructions below, scaled up (nearest)."""
    rows = torch.cat([torch.cat(list(inputs), dim=2), torch.cat(list(outputs), dim=2)], dim=1)  # (3, 2H, N*W)
    img = Image.fromarray(rows.permute(1, 2, 0).cpu().numpy())
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def stage_name(cfg: TrainTokenizerConfig) -> str:
    """Which of the tokenizer's registered stages a config asks for (`STAGES`)."""
    if cfg.decoder_only:
        return "decoder_post" if cfg.resample_from else "decoder"
    return "vqgan" if cfg.tokenizer.loss.disc_weight > 0 else "vqvae"


# the tokenizer's stages: one model and one objective, which these switch on and off
STAGES = {
    "vqvae": "pixel and quantizer losses (+ perceptual)",
    "vqgan": "+ a PatchGAN discriminator from loss.disc_start, its own optimizer",
    "decoder": "the decoder alone, on the frozen encoder and codebook of init_from",
    "decoder_post": "the decoder alone on a transformer's teacher-forced draws (resample_from)",
}


def check_config(cfg: TrainTokenizerConfig) -> None:
    """The config's one-line errors, before anything is built."""
    lc, tc = cfg.tokenizer.loss, cfg.trainer
    if tc.compile or tc.grad_accum != 1 or tc.optimizer != "adamw":
        raise ConfigError("trainer.compile, trainer.grad_accum and trainer.optimizer are for the transformer stages; "
                          "train-tokenizer runs without them (with AdamW)")
    if lc.token_noise and not cfg.decoder_only:
        raise ConfigError("tokenizer.loss.token_noise is for a decoder trained alone: set decoder_only=true "
                          "(and init_from)")
    if not 0 <= lc.token_noise < 1:
        raise ConfigError(f"tokenizer.loss.token_noise must lie in [0, 1), got {lc.token_noise}")
    if cfg.resample_from and not cfg.decoder_only:
        raise ConfigError("resample_from is for a decoder trained alone: set decoder_only=true (and init_from)")
    if not 0 < cfg.resample_share <= 1:
        raise ConfigError(f"resample_share must lie in (0, 1], got {cfg.resample_share}")
    if not 0 <= lc.caption_dropout <= 1:
        raise ConfigError(f"tokenizer.loss.caption_dropout must lie in [0, 1], got {lc.caption_dropout}")
    if cfg.tokenizer.caption != "none" and cfg.data.crop_size:
        raise ConfigError("a caption-aware decoder reads the caption of the whole image: train on whole images "
                          "(data.crop_size=null)")
    if cfg.resample_from and cfg.data.crop_size:
        raise ConfigError("resample_from draws whole token grids after each image's caption: train on whole images "
                          "(data.crop_size=null)")


def train(cfg: TrainTokenizerConfig, yaml: str | None = None) -> Path:
    """Train a tokenizer; returns the run directory. `yaml` is the resolved config as the user composed it."""
    with parallel.launched(resolve_device(cfg.trainer.device), writes=cfg.run_dir) as (rank, world, device):
        check_config(cfg)
        check(cfg.trainer)
        if world > 1 and cfg.trainer.parallel != "ddp":
            raise ConfigError(f"train-tokenizer replicates its models on every process: trainer.parallel must be "
                              f"ddp, got {cfg.trainer.parallel!r}")
        precision = setup(cfg.trainer)[1]  # and the same seeds in every process; the device is this process's own
        model = Tokenizer(cfg.tokenizer).to(device)  # validates the architecture before anything is written
        run = Run(cfg.run_dir, KIND, cfg.resume, cfg.overwrite, cfg.init_from, rank)
        stage = TokenizerStage(cfg, model, run, device, precision, rank, world)
        trainer = Trainer(cfg.trainer, run, stage, device, precision, rank, world)
        run.start(yaml if yaml is not None else to_yaml(cfg), {"world_size": world, "stage": stage_name(cfg)})
        trainer.start()
        trainer.fit(cfg.trainer.max_steps)
        stage.loader.skips.log_summary()
        return run.path


class TokenizerStage:
    """The autoencoder and its quantizer on the one Trainer: the losses of `STAGES`, the discriminator's step
    after each applied one, code usage over a rolling window, reconstruction grids."""

    kind = KIND
    n_stats = 0  # the row's figures are the last step's, averaged over the processes (`figures`)

    def __init__(self, cfg: TrainTokenizerConfig, model: Tokenizer, run: Run, device: torch.device, precision: str,
                 rank: int, world: int) -> None:
        self.cfg, self.model, self.run, self.device, self.precision = cfg, model, run, device, precision
        self.rank, self.world, self.name = rank, world, "train-tokenizer"
        lc = cfg.tokenizer.loss
        init = run.init
        if cfg.decoder_only and init is None and run.resume_from is None:
            raise ConfigError("decoder_only=true trains a decoder on the frozen encoder and codebook of a tokenizer: "
                              "give that tokenizer as init_from=RUN")
        if init is not None and cfg.decoder_only:
            load_frozen(model, init)
        elif init is not None:
            checkpoint.load_into(model, checkpoint.load_weights(init, "model"), init)
            log.info("weights from %s", init)
        if cfg.decoder_only:  # the encoder and the quantizer (codebook, k-means, restarts) never change
            for p in (*model.encoder.parameters(), *model.quantizer.parameters()):
                p.requires_grad_(False)
        self.resample = resampler(cfg.resample_from, cfg.resample_share, cfg.sampling, init or run.resume_from,
                                  device, precision) if cfg.resample_from else None
        # this rank's part of every global batch; checks the shards and that the processes divide the batch
        self.loader = ShardLoader(cfg.data, repeat=True, drop_last=True, split=True)
        self.gan = lc.disc_weight > 0
        self.disc = PatchDiscriminator(lc.disc_channels, lc.disc_layers).to(device) if self.gan else None
        # taming-transformers' discriminator optimiser settings
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=lc.disc_lr, betas=(0.5, 0.9), fused=True) \
            if self.gan else None
        self.lecam = LeCAM().to(device) if self.gan and lc.lecam > 0 else None
        self.perceptual = build_perceptual(lc.perceptual_weights).to(device) if lc.perceptual > 0 else None
        self.usage = CodeUsage(model.codebook_size, USAGE_WINDOW)
        self.sync = parallel.Collectives()  # the identity in one process
        model.quantizer.sync = self.sync
        if run.resume_from is not None:
            checkpoint.load_into(model, checkpoint.load_weights(run.resume_from, "model"), run.resume_from)
            if self.gan:
                checkpoint.load_into(self.disc, checkpoint.load_weights(run.resume_from, "disc"), run.resume_from)
        self.val = self._held_out() if cfg.trainer.eval_every else None
        self.last_layer = model.decoder.out[-2 if cfg.tokenizer.stem_patch else -1].weight

    def wrap(self) -> None:
        tc = self.cfg.trainer
        # fused: one kernel for all parameters (measured 5.9x faster than the per-tensor loop on the CPU preset)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=tc.lr,
                                     betas=tuple(tc.betas), weight_decay=tc.weight_decay, fused=True)
        # what a step calls: DDP averages the gradients; `model` and `disc` stay the modules that are saved
        self.net = parallel.replicate(self.model, self.world)
        self.disc_net = parallel.replicate(self.disc, self.world) if self.gan else None
        # the first images of the set at full size (not crops), reconstructed in every grid
        grid = dataclasses.replace(self.cfg.data, crop_size=None, batch_size=GRID_IMAGES, shuffle_buffer=0,
                                   num_workers=0)
        first = next(iter(ShardLoader(grid, repeat=False, rank=0, world_size=1))) if self.rank == 0 else None
        self.fixed = (first["image"], first["caption"]) if first else None
        train_mode(self.model, self.cfg.decoder_only)
        self.batches = iter(self.loader)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a per-process figure (a mean over the local batch)."""
        return parallel.all_sum(t.detach().clone()) / self.world if self.world > 1 else t.detach()

    def micro_batches(self, step: int) -> list:
        self.step_now = step  # the adversarial term starts at loss.disc_start
        return [next(self.batches)]

    def norm(self, micro) -> torch.Tensor:
        return torch.ones((), device=self.device)  # each process's loss is a mean over its own part of the batch

    def objective(self, micro) -> tuple[torch.Tensor, torch.Tensor]:
        lc, step = self.cfg.tokenizer.loss, self.step_now
        x = to_unit(micro["image"].to(self.device))  # (B, 3, H, W) in [-1, 1]
        draw = functools.partial(self.resample, micro["caption"]) if self.resample else None
        captions = None
        if self.cfg.tokenizer.caption != "none":  # some withheld: the null caption
            kept = (torch.rand(len(x)) >= lc.caption_dropout).tolist()
            captions = [c if k else None for c, k in zip(micro["caption"], kept)]
        recon, indices, qlosses = self.net(x, lc.token_noise, draw, captions)
        with torch.autocast(self.device.type, enabled=False):  # the losses in fp32
            recon = recon.float()
            rec = lc.l1 * (recon - x).abs().mean() + lc.l2 * (recon - x).pow(2).mean()
            if self.perceptual is not None:
                rec = rec + lc.perceptual * self.perceptual(recon, x).mean()
            loss = rec
            if not self.cfg.decoder_only:  # a frozen quantizer's losses have no gradient
                loss = loss + lc.codebook * sum(qlosses.values(), torch.zeros((), device=self.device))
        logs = {"rec": rec}
        if self.gan and step >= lc.disc_start:  # adversarial
            g = hinge_g_loss(self.disc(recon))  # `disc`, not DDP's: no gradient of the discriminator is wanted
            with torch.autocast(self.device.type, enabled=False), parallel.mean_grad(self.last_layer):
                # the two gradients of the global batch
                w = adaptive_weight(rec, g, self.last_layer) if lc.adaptive else torch.ones((), device=self.device)
                loss = loss + lc.disc_weight * w * g
            logs.update(g=g, g_weight=w)
        self.x, self.recon, self.indices = x, recon, indices
        self.logged = {"loss": loss, **logs, **qlosses}
        return loss, torch.zeros(0, device=self.device)

    def after_step(self, step: int, applied: bool, guard) -> None:
        """The discriminator's step after an applied one (from disc_start - disc_warmup on), and code usage."""
        lc = self.cfg.tokenizer.loss
        if applied and self.gan and step >= lc.disc_start - lc.disc_warmup:
            set_lr(self.opt_d, lc.disc_lr)
            with autocast(self.device, self.precision):
                real, fake = self.disc_net(self.x).float(), self.disc_net(self.recon.detach()).float()
            d_loss = hinge_d_loss(real, fake)
            if self.lecam:
                d_loss = d_loss + lc.lecam * self.lecam.penalty(real, fake)
                self.lecam.update(real, fake)
                for anchor in self.lecam.buffers() if self.world > 1 else ():  # the mean of the lerps: the global one
                    anchor.copy_(self.mean(anchor))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if guard.ok(clip_gradients(self.disc.parameters(), 0), self.mean(d_loss), step, "discriminator"):
                self.opt_d.step()
            self.logged.update(d=d_loss, logits_real=real.mean(), logits_fake=fake.mean())
        self.usage.update(self.sync.all_gather(self.indices))  # the global batch's codes, on every process alike

    def figures(self, sums: list[float]) -> dict[str, float]:
        """The last step's figures, the global batch's means (.item() only here: each is a device sync)."""
        figures = {**self.logged, "psnr": psnr(from_unit(self.x), from_unit(self.recon.detach())).clamp(max=99).mean()}
        values = self.mean(torch.stack([v.detach().double() for v in figures.values()])).tolist()
        return {**dict(zip(figures, values)), "usage": self.usage.usage(), "perplexity": self.usage.perplexity()}

    def speed(self, steps: int, elapsed: float) -> dict[str, float]:
        return {"img_s": steps * self.cfg.data.batch_size / elapsed}

    def shown(self, row: dict) -> str:
        return f"loss {row['loss']:.4f}  psnr {row['psnr']:.2f}  usage {row['usage']:.0%}  {row['img_s']:.0f} img/s"

    def _held_out(self) -> list[tuple[torch.Tensor, list[str]]] | None:
        """The held-out images and their captions (`data.val_shards`, whole, as many as fill the batches of
        data.batch_size)."""
        if not self.cfg.data.val_shards:
            return None
        data = dataclasses.replace(self.cfg.data, shards=self.cfg.data.val_shards, crop_size=None, shuffle_buffer=0,
                                   num_workers=0)
        return [(b["image"], b["caption"]) for b in ShardLoader(data, repeat=False, drop_last=True, split=True)]

    def validate(self) -> dict[str, float]:
        """Reconstruction loss and PSNR of the held-out images, through the quantizer (eval mode: no code moves),
        each decoded with its caption."""
        if not self.val:
            return {}
        self.model.eval()
        lc, sums = self.cfg.tokenizer.loss, torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, captions in self.val:
            x = to_unit(images.to(self.device))
            recon = self.model(x, captions=captions)[0].float()
            rec = lc.l1 * (recon - x).abs().mean() + lc.l2 * (recon - x).pow(2).mean()
            sums += torch.stack([rec * len(x), psnr(from_unit(x), from_unit(recon)).clamp(max=99).sum(),
                                 torch.tensor(float(len(x)), device=self.device)]).double()
        rec, p, n = parallel.all_sum(sums).tolist()
        train_mode(self.model, self.cfg.decoder_only)
        return {"rec": rec / n, "psnr": p / n}

    def pictures(self, step: int, ema, metrics) -> None:
        if self.rank == 0:
            write_pictures(self.run.path, step, self.model, self.fixed, metrics, self.device, self.precision)
            train_mode(self.model, self.cfg.decoder_only)

    def extra_weights(self) -> dict:
        return {"disc": self.disc.state_dict()} if self.gan else {}

    def state_dict(self) -> dict:
        data = ShardLoader.merge_states(parallel.all_gather_object(self.loader.state_dict()))  # every process
        state = {"usage": self.usage.state_dict(), "data": data}
        if self.gan:
            state["opt_d"] = self.opt_d.state_dict()
            if self.lecam:
                state["lecam"] = self.lecam.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.gan:
            self.opt_d.load_state_dict(state["opt_d"])
            if self.lecam:
                self.lecam.load_state_dict(state["lecam"])
        self.usage.load_state_dict(state["usage"])
        self.loader.load_state_dict(state["data"])
        self.batches = iter(self.loader)


def train_mode(model: Tokenizer, decoder_only: bool) -> None:
    """Training mode, except for a frozen encoder and quantizer (decoder_only): a quantizer in training mode
    would move its codes (k-means start, dead-code restarts)."""
    model.train()
    if decoder_only:
        model.encoder.eval()
        model.quantizer.eval()


DECODER_KEYS = ("decoder_channels", "decoder_res_blocks", "decoder_attn", "decoder_heads", "caption", "caption_dim",
                "caption_layers", "caption_heads", "caption_len", "caption_blocks", "caption_glyphs", "loss")


def load_frozen(model: Tokenizer, init: Path) -> None:
    """decoder_only: the encoder and quantizer of checkpoint `init`, which must be built as this model's are
    (every tokenizer key but the decoder's own and the loss); its decoder too when the shapes match, or when
    this decoder is that one with context blocks or a caption reader added (`decoder_attn`, `caption`: training
    goes on from it, the new blocks starting as the identity), else the decoder starts afresh."""
    theirs = checkpoint.load_config(init, TrainTokenizerConfig).tokenizer
    for f in dataclasses.fields(TokenizerConfig):
        want, got = getattr(theirs, f.name), getattr(model.cfg, f.name)
        if f.name not in DECODER_KEYS and want != got:
            raise ConfigError(f"decoder_only=true keeps the encoder and codebook of {init}: tokenizer.{f.name} must "
                              f"be {want!r} as there, got {got!r}")
    weights = checkpoint.load_reader_weights(init)  # the weights that made the tokens (the EMA's, if kept)
    own = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    theirs_dec = {k: v.shape for k, v in weights.items() if k.startswith("decoder.")}
    added = {k for k in own if k not in theirs_dec}
    # the same decoder, or it with context blocks or a caption reader added (which start as the identity):
    # training goes on from it
    kept = all(k in own and own[k].shape == shape for k, shape in theirs_dec.items()) and \
        all(k.startswith(("decoder.context.", "decoder.caption.")) for k in added)
    if kept:
        weights = {**weights, **{k: own[k] for k in added}}
    else:
        weights = {**{k: v for k, v in weights.items() if not k.startswith("decoder.")}, **own}
    checkpoint.load_into(model, weights, init)
    blocks = len({k.split('.')[3] for k in added if k.startswith("decoder.context.")})
    extra = [f"{blocks} context blocks"] if blocks else []
    extra += ["a caption reader"] if any(k.startswith("decoder.caption.") for k in added) else []
    how = ("from it" + (f", {' and '.join(extra)} added" if extra else "")) if kept else "new"
    log.info("encoder and codebook from %s (frozen); decoder %s", init, how)


@torch.no_grad()
def write_pictures(run: Path, step: int, model: Tokenizer, fixed: tuple[torch.Tensor, list[str]], metrics: Metrics,
                   device: torch.device, precision: str) -> None:
    """The fixed images above their reconstructions (each with its caption), and the loss plots."""
    images, captions = fixed
    was = model.training
    model.eval()
    with autocast(device, precision):
        out = model(to_unit(images.to(device)), captions=captions)[0]
    model.train(was)
    recon_grid(images, from_unit(out).cpu()).save(run / "images" / f"recon-{step:07d}.png")
    rows = metrics.rows()
    if rows:
        line_plot(rows, ["loss", "rec", "g", "d"], run / "loss.png", log_y=True)
        line_plot(rows, ["psnr"], run / "psnr.png")
        line_plot(rows, ["usage"], run / "usage.png")
