"""Typed config schemas and their composition with Hydra.

The dataclasses below are the one home of every default. YAML in `conf/` only selects and overrides:
a command's root file names its schema and its group options (`data: tiny`, `model: small`, ...), and
each group file holds a diff against the group's schema. Because the schema is composed first, Hydra
checks every key and type as it merges, so an unknown key, a wrong type or a missing group option is a
`ConfigError` (one line, exit 2), and library code receives dataclass instances, never argv.

The `tokenizer`, `model` and `trainer` schemas are the contract that the tokenizer and transformer stages
fill; `data` is read by `arlm.data.loader`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from arlm.errors import ConfigError

# Hydra, OmegaConf and the synthetic grammar are imported where they are used: `arimg --help` reads these
# dataclasses for its defaults and must not pay for them (scripts/bench_cli.py).


def _kinds() -> list[str]:
    from arlm.synth import KINDS

    return list(KINDS)


def _single_prompts() -> list[str]:
    from arlm.synth import single_prompts

    return single_prompts()


@dataclass
class JudgeConfig:
    """Every tunable of the judge (plain types, so OmegaConf makes it a structured config)."""

    # RGB distance from a background-to-ink segment beyond which a pixel is not that ink (unknown colour);
    # between inks the nearest segment decides (tuned on degraded images: docs/results.md, the judge)
    color_dist: float = 70.0
    bg_dist: float = 70.0  # border median farther than this from every background colour: no background name
    # smallest synthetic object: side ceil(min side / 5), a triangle of that side covers ~0.5 of (side / 5)^2
    min_area: float = 0.25
    # ink share of the solid cores that tell apart objects blur has joined (> 1: never split)
    seed_level: float = 0.75
    shape_tol: float = 0.25  # signature distance beyond which an object is no shape (ideals are >= 0.33 apart)
    relation_margin: float = 0.0625  # centres apart by this fraction of the side (spec draws >= 1/8; slack for blur)
    ocr: bool = True  # False: text captions are judged on colour alone
    # tesseract | glyphs: the synthetic font laid over the ink (arlm.glyphs), tesseract only where the font
    # cannot tell; for training rewards only: evaluations refuse it
    reader: str = "tesseract"
    tesseract: str = "tesseract"
    ocr_height: int = 64  # height (px) the word is upscaled to for tesseract
    ocr_pad: float = 0.5  # white margin around the word, in letter heights
    workers: int = 2  # threads running tesseract (a subprocess, so threads do run in parallel)


@dataclass
class DataConfig:
    shards: str = "data/synth"  # brace pattern, '::' list or folder of .tar files
    val_shards: Optional[str] = None  # held-out images for trainer.eval_every (reconstruction loss, PSNR)
    size: str = "64"  # "N" or "HxW": images are resized (shorter side) and cropped to it
    crop: str = "center"  # center | random | busy (the busiest of 4 random windows, with crop_size)
    crop_size: Optional[str] = None  # then a window of "N" or "HxW" at that resolution (chosen as `crop` says)
    batch_size: int = 32
    num_workers: int = 0
    shuffle_buffer: int = 1000  # samples held for shuffling; 0 keeps shard order
    seed: int = 0


@dataclass
class TokenizerLossConfig:
    """What the tokenizer stage optimises: the VQ-VAE stage uses the first block, the VQ-GAN stage adds the rest."""

    l1: float = 1.0
    l2: float = 0.0
    codebook: float = 1.0  # weight of the quantizer's own losses (commitment, codebook, entropy)
    perceptual: float = 0.0
    perceptual_weights: Optional[str] = None  # local LPIPS-style weights; none: the weight-free fallback
    disc_weight: float = 0.0  # 0 = no discriminator (the VQ-VAE stage)
    disc_start: int = 0  # the generator's adversarial term starts at this step
    disc_warmup: int = 0  # the discriminator alone trains for this many steps before disc_start
    disc_lr: float = 1e-4
    disc_channels: int = 64
    disc_layers: int = 3
    adaptive: bool = True  # taming's weight: ||grad rec|| / ||grad gan|| at the decoder's last layer
    lecam: float = 0.0  # LeCAM regularisation of the discriminator (Tseng et al., 2021)
    # decoder_only: this share of the tokens is replaced by random codes before decoding, the target staying the
    # clean image, so that the decoder learns to paint over a stray token of the sampler
    token_noise: float = 0.0
    # tokenizer.caption=decoder: this share of the images is decoded with the null caption, so that the decoder
    # still draws an image that has none
    caption_dropout: float = 0.1


@dataclass
class TokenizerConfig:
    """The autoencoder and its quantizer (arlm.tokenizer.model); `loss` is how the stage trains it."""

    quantizer: str = "vq"  # vq | fsq | lfq
    codebook_size: int = 1024  # vq only: fsq has prod(fsq_levels) codes, lfq 2^code_dim
    code_dim: int = 8  # the quantizer's dimensions (LlamaGen: 8)
    downsample: int = 8  # 4, 8 or 16 = 2^(len(channel_mult) - 1)
    channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 1  # per level
    # the decoder's own width and depth (None: those of the encoder). A decoder trained alone on the frozen codes
    # of a tokenizer (train-tokenizer decoder_only=true) may be larger than its encoder: the tokens stay the same
    decoder_channels: Optional[int] = None
    decoder_res_blocks: Optional[int] = None
    # transformer blocks over the decoder's token grid, before its middle block: what a position draws may then
    # depend on every token of the image (0: none, the decoder of before); heads per block
    decoder_attn: int = 0
    decoder_heads: int = 4
    # none | decoder: the decoder also reads the image's caption (its UTF-8 bytes, through a small transformer of
    # caption_layers blocks of width caption_dim) by cross-attention at every level; captions longer than
    # caption_len bytes are cut. An image without a caption decodes with the null caption
    caption: str = "none"
    caption_dim: int = 64
    caption_layers: int = 2
    caption_heads: int = 4
    caption_len: int = 96
    # transformer blocks over the token grid and the caption in one sequence, before the middle block
    caption_blocks: int = 0
    # the reader also gets each byte's glyph (drawn in the project's font) and, for text in double quotes, each
    # letter's place in its span, and each map position its share of the width and height
    caption_glyphs: bool = False
    norm: str = "group"  # group | none
    mid_attn: bool = False  # self-attention at the lowest resolution
    stem_patch: bool = False  # first level at half resolution (2x2 space-to-depth): cheaper at full size
    # vq: l2-normalised codes, commitment weight, EMA codebook, k-means init, dead-code restart
    beta: float = 0.25
    l2norm: bool = True
    ema: bool = False
    decay: float = 0.99
    kmeans_init: bool = True
    dead_threshold: float = 0.0  # restart a code used fewer times per batch (moving average) than this
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    entropy_weight: float = 0.1  # lfq
    loss: TokenizerLossConfig = field(default_factory=lambda: TokenizerLossConfig())


@dataclass
class ModelConfig:
    """The decoder-only transformer (arlm.transformer.model). Presets in conf/model/: tiny (tests), mini (the
    CPU demo), small (the bundled model), and b, l, xl with LlamaGen's GPT-B/L/XL shapes (layers, width, heads)."""

    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: Optional[int] = None  # grouped-query attention; None = n_heads
    ffn_hidden: Optional[int] = None  # None: 8/3 * dim rounded up to a multiple of 64 (Llama's SwiGLU width)
    max_seq_len: int = 512
    rope: str = "2d"  # 1d | 2d: visual tokens rotate with (row, column), text with its index on both axes
    rope_theta: float = 10000.0
    qk_norm: bool = False  # RMSNorm on queries and keys (Chameleon, Lumina-mGPT: stabilises long runs)
    tie_embeddings: bool = True
    mlp: str = "swiglu"  # swiglu | relu2 (ReLU squared, one up-projection of 4 * dim unless ffn_hidden)
    zero_init: bool = False  # the blocks' output projections (attention's and the MLP's) start at zero
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c)
    embed_skip: bool = False  # each block's input mixes the token embedding back in, by two learned scalars
    norm_eps: float = 1e-5
    init_std: float = 0.02


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    # > 0: train for this many minutes of wall time instead of max_steps (start-up, compilation, held-out
    # figures, pictures and checkpoints count): the schedule follows the elapsed time and the run ends on it
    max_minutes: float = 0.0
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    # after the warm-up: cosine decay over the run, or wsd (warmup-stable-decay): lr held until the last
    # `cooldown` share of the run, then a linear decay
    schedule: str = "cosine"  # cosine | wsd
    cooldown: float = 0.2
    # transformer stages: adamw, or muon (orthogonalized momentum, Newton-Schulz) on the blocks' matrices with
    # AdamW at `lr` on the embeddings, head and norms
    optimizer: str = "adamw"  # adamw | muon
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    log_every: int = 10
    eval_every: int = 0  # the loss on data.val_shards every this many steps, logged as val_* rows; 0 = off
    image_every: int = 200  # reconstruction / sample grids and loss plots
    ckpt_every: int = 500
    keep_checkpoints: int = 2  # the newest N are kept
    seed: int = 0
    # auto: bf16 on CUDA, and on a CPU whichever matmul measures faster (arlm.perf); quantizers and losses fp32
    precision: str = "auto"  # auto | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    # a step whose loss or gradient is NaN or Inf: skip it (counted as skipped_steps in metrics.jsonl) or stop,
    # keeping the last checkpoint; skipping still stops after this many in a row
    nonfinite: str = "skip"  # skip | stop
    nonfinite_limit: int = 10
    # transformer stages only (train-tokenizer refuses them):
    parallel: str = "ddp"  # ddp | fsdp: how torchrun's processes share the work (FSDP2 fully_shard per block)
    compile: bool = False  # torch.compile the model
    grad_accum: int = 1  # micro-batches per optimizer step; the global batch is data.batch_size


@dataclass
class TrainTokenizerConfig:
    """`arimg train-tokenizer`: the VQ-VAE stage (tokenizer=vqvae), then the VQ-GAN stage (tokenizer=vqgan
    init_from=RUN)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run_dir: str = "runs/tokenizer"
    init_from: Optional[str] = None  # run or checkpoint dir whose weights start this run (same architecture)
    # train the decoder alone, on the frozen encoder and codebook of init_from (Muse's decoder fine-tune): the
    # tokens of every image stay those of init_from, so token shards and transformers made with it keep working
    decoder_only: bool = False
    # decoder_only: the transformer run (or exported model) whose draws, teacher-forced on each training image's
    # caption and true codes (the sampler's errors on real images), replace the codes of that share of the images
    # the decoder sees, the target staying the image (RobusTok's post-training): the decoder learns to draw what
    # the sampler writes. Needs whole images (data.crop_size=null) with captions; `sampling` is how it draws
    resample_from: Optional[str] = None
    resample_share: float = 0.5
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig())
    resume: bool = False  # continue the run in run_dir from its latest checkpoint
    overwrite: bool = False  # start afresh in a run_dir that already holds checkpoints


@dataclass
class TokenDataConfig:
    """Token shards from `arimg pretokenize`, read by arlm.transformer.data."""

    shards: str = "data/synth-tok"  # brace pattern, '::' list or folder of .tar files
    val_shards: Optional[str] = None  # held-out token shards for trainer.eval_every (pretrain, sft)
    mode: str = "memory"  # memory: one tensor on the training device | stream: read shards as training goes
    batch_size: int = 32  # global: sequences per optimizer step over all processes and micro-batches
    caption_dropout: float = 0.1  # share of captions replaced by the empty one (classifier-free guidance)
    words: int = 0  # a new model's word pieces: the most frequent lowercase words of the captions, one id each (0: bytes)
    kinds: Optional[list[str]] = None  # keep only samples whose record has one of these kinds (SFT filter)
    # a sample of a kind is drawn its weight times as often as one of weight 1 (a sample without a record, or of
    # another kind); batches are then drawn with replacement, per step. All 1: every sample once per epoch
    kind_weights: dict[str, float] = field(
        default_factory=lambda: {"single": 1.0, "count": 1.0, "relation": 1.0, "text": 1.0})
    caption_regex: Optional[str] = None  # keep only samples whose caption matches (SFT filter)
    shuffle_buffer: int = 2000  # stream mode: samples held for shuffling
    seed: int = 0


@dataclass
class TransformerLossConfig:
    text_weight: float = 0.1  # pretrain: weight of the text and layout targets against the visual ones
    visual_only: bool = False  # sft: loss on the visual tokens only
    z_loss: float = 0.0  # weight of log(Z)^2 of the logits (PaLM), keeps the softmax normaliser near 0
    # next-patch prediction (NPP, Pang et al., 2024), pretrain and sft: the visual tokens enter in patch x patch
    # groups (their embeddings averaged: a sequence patch^2 times shorter) and each position is trained to
    # predict every token of the next group. 1: next-token prediction. A cheaper first phase: a later phase at 1
    # (init_from) makes the model a next-token sampler again
    patch: int = 1


@dataclass
class SampleConfig:
    """The sample grids written while training: fixed prompts, a plain sampler, judged (arlm.judge)."""

    # every single-object caption of the synthetic grammar (SYNTH.md): 6 colours x 3 shapes
    prompts: list[str] = field(default_factory=_single_prompts)
    n: int = 2  # images per prompt
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0


@dataclass
class DPOConfig:
    """`arimg dpo`: the preference objective (arlm.training.dpo)."""

    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo | robust (Chowdhury et al. 2024)
    beta: float = 0.1  # strength of the pull towards the reference model
    label_smoothing: float = 0.0  # sigmoid (conservative DPO) and robust: the assumed share of flipped labels
    ntp_weight: float = 0.0  # + this x the chosen samples' mean next-token loss per visual token (keeps them likely)
    reference: str = "shards"  # shards: the log-probs make-prefs stored | live: a frozen copy of the initial model
    # > 0: train this many passes over the pairs (steps rounded up), in place of trainer.max_steps
    epochs: float = 0.0


@dataclass
class SamplingConfig:
    """How images are drawn: the defaults of `arimg sample` and `arimg eval generator` (arlm.transformer.sample)."""

    cfg: float = 1.5  # classifier-free guidance scale; 1 = none
    cfg_schedule: str = "constant"  # constant | linear (1 -> cfg over the grid) | interval
    cfg_interval: list[float] = field(default_factory=lambda: [0.0, 1.0])  # interval: the grid fractions guided
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 10  # 0 = off; a model card may recommend its own (docs/sampling.md)
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off; else keep the ids at least min_p times as likely as the likeliest (docs/sampling.md)


@dataclass
class PromptSource:
    """Where a command's prompts come from (arlm.generation.prompts.choose_prompts): a file, else the grammar."""

    prompts: Optional[str] = None  # a file of prompts, one per line; None: drawn from the synthetic grammar
    kinds: list[str] = field(default_factory=_kinds)  # grammar prompts: these kinds
    per_kind: int = 100  # grammar prompts: this many of each kind
    prompt_seed: int = 0  # grammar prompts: the captions of `arimg data synth --seed` this (0: the training set's)


@dataclass
class GRPOConfig(PromptSource):
    """`arimg grpo`: online preference optimisation on groups of the model's own samples (arlm.training.grpo)."""

    group: int = 8  # samples per prompt; data.batch_size / group prompts per step
    # judge: the judge's graded score | accept: its yes/no (1 or 0) | module:function: (image, prompt) -> float
    reward: str = "judge"
    min_std: float = 0.02  # a group whose rewards spread less teaches nothing: weight 0 (not divided by ~0)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class TransformerStageConfig:
    """`arimg pretrain` and `arimg sft` (the root config sets `stage`), and the base of every transformer stage's
    config: what every one of them trains with."""

    stage: str = "pretrain"  # pretrain | sft | dpo | grpo
    model: ModelConfig = field(default_factory=ModelConfig)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: TransformerLossConfig = field(default_factory=TransformerLossConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    run_dir: str = "runs/pretrain"
    init_from: Optional[str] = None  # sft, dpo, grpo: the run or checkpoint to start from (its model config is used)
    resume: bool = False
    overwrite: bool = False


@dataclass
class DPOStageConfig(TransformerStageConfig):
    """`arimg dpo`: the base and the preference objective."""

    dpo: DPOConfig = field(default_factory=DPOConfig)


@dataclass
class GRPOStageConfig(TransformerStageConfig):
    """`arimg grpo`: the base and the online groups, their reward and sampling."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)


@dataclass
class TrainTransformerConfig(DPOStageConfig, GRPOStageConfig):
    """What the config.yaml of a transformer checkpoint may hold, whichever stage wrote it: the schema it is
    read with."""


@dataclass
class EvalGeneratorConfig:
    """`arimg eval generator`: sample held-out prompts of every kind, judge each image, accuracy per kind."""

    prompts: Optional[str] = None  # a file of prompts, one per line; None: drawn from the synthetic grammar
    kinds: list[str] = field(default_factory=_kinds)  # grammar prompts: these kinds
    per_kind: int = 50  # grammar prompts: this many of each kind
    prompt_seed: int = 1  # grammar prompts: the captions of `arimg data synth --seed` this (held out: not 0)
    n: int = 4  # images per prompt and sampling seed
    seeds: list[int] = field(default_factory=lambda: [0])  # sampling seeds; figures are averaged over them
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    size: Optional[str] = None  # "N" or "HxW" pixels; None: the grid the model was trained on
    batch_size: int = 32  # images per sampling batch
    out: str = "eval-generator"  # images, verdicts.jsonl and one contact sheet per kind
    sheet_per_kind: int = 48  # images on each kind's contact sheet (the first sampling seed's)
    device: str = "auto"
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class MakePrefsConfig(PromptSource):
    """`arimg make-prefs`: preference pairs from a model's own samples, scored by a reward (arlm.generation.prefs)."""

    k: int = 8  # samples per prompt
    seed: int = 0  # sampling seed
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # judge: the judge's graded score | accept: its yes/no (1 or 0) | module:function: (image, prompt) -> float
    reward: str = "judge"
    labels: Optional[str] = None  # JSON lines of human choices {"prompt", "chosen", "rejected"} (sample seeds)
    margin: float = 0.1  # keep a pair only if the rewards differ by at least this much
    # best-worst: one pair per prompt | all: every pair that clears the margin | disjoint: pairs share no sample
    pairs: str = "best-worst"
    # also a candidate per grammar prompt: the synthetic set's own image of it, through the model's tokenizer
    truth: bool = False
    batch_size: int = 32  # images per sampling batch
    shard_size: int = 1000
    out: str = "data/prefs"
    overwrite: bool = False
    device: str = "auto"
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class EvalImagesConfig:
    """`arimg eval images`: judge images against their captions."""

    judge: JudgeConfig = field(default_factory=JudgeConfig)
    limit: Optional[int] = None  # judge only the first N items
    details: Optional[str] = None  # write one JSON line per image (verdict and reason) here


# command name -> root schema; conf/<name>.yaml is its root config
ROOTS: dict[str, type] = {"eval_images": EvalImagesConfig, "eval_generator": EvalGeneratorConfig,
                          "train_tokenizer": TrainTokenizerConfig, "pretrain": TransformerStageConfig,
                          "sft": TransformerStageConfig, "dpo": DPOStageConfig, "grpo": GRPOStageConfig,
                          "make_prefs": MakePrefsConfig}
# the transformer stages' `data` (TokenDataConfig) has no group: the root files and overrides set its keys
GROUPS: dict[str, type] = {"data": DataConfig, "tokenizer": TokenizerConfig, "model": ModelConfig, "trainer": TrainerConfig}


@functools.cache
def _register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, schema in ROOTS.items():
        cs.store(name=f"{name}_schema", node=schema)
    for group, schema in GROUPS.items():
        # group files start with `defaults: [<group>_schema]` so that each preset validates on its own too
        cs.store(group=group, name=f"{group}_schema", node=schema)


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf messages span lines (full_key, object_type, hints): keep what a user needs."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    lines = [ln.strip() for ln in str(exc).splitlines()]
    # drop OmegaConf's context lines and Hydra's hints to append (+key=...): unknown keys stay errors here
    keep = [ln for ln in lines if ln and not re.match(r"(full_key|object_type|reference_type|value|msg)[:=]|To append", ln)]
    text = "; ".join(dict.fromkeys(keep))  # drop repeats, keep order
    if isinstance(exc.__cause__, (HydraException, OmegaConfBaseException)):
        cause = _one_line(exc.__cause__)
        if cause and cause not in text:
            text = f"{text.rstrip('.')}: {cause}"
    return _short(re.sub(r"\s+", " ", text.replace("\t", " ")), 1000)  # a 100 kB override is not echoed whole


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def _check_overrides(overrides: list[str]) -> None:
    """A ConfigError for a command-line override that would reach past the schema: an interpolation
    (resolvers such as oc.env read the environment, so `run_dir=${oc.env:HOME}/x` writes where the user
    never typed), adding or deleting a key (+, ++, ~: every key is in the schema), Hydra's own settings
    (unused by arimg), `key=` with no value (then `run_dir` or `init_from` would silently be '', the
    current folder) or a config group set to something that is no name (`model=null`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    for line in overrides:
        o = parser.parse_overrides([line])[0]  # a syntax error: Hydra's OverrideParseException
        key = o.key_or_group
        if "${" in line:
            raise ConfigError(f"{key}: interpolations (${{...}}) are not allowed in command-line overrides "
                              f"(resolvers read the environment); write the value itself: {_short(line)}")
        if o.type != OverrideType.CHANGE:
            raise ConfigError(f"{_short(line)}: only key=value overrides; adding (+) or deleting (~) keys is not "
                              "supported (see --print-config for the keys)")
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            raise ConfigError(f"{key}: Hydra's own settings are not used by arimg")
        if line.split("=", 1)[1].strip() == "":
            raise ConfigError(f"{key}= has no value: write {key}=null for none or {key}='' for an empty string")
        if not key:
            raise ConfigError(f"an override is key=value, got {_short(line)}")
        if key in GROUPS and not o.is_sweep_override() and not isinstance(o.value(), (str, list)):
            # Hydra itself raises a bare ValueError
            raise ConfigError(f"{key}: a config group takes a preset name (conf/{key}/), got {_short(line)}")


def compose(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The resolved, validated config of root `name` (an OmegaConf DictConfig backed by its schema)."""
    if name not in ROOTS:
        raise ConfigError(f"no config named {name!r}")
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _register()
    try:
        _check_overrides(list(overrides))
        with initialize_config_module(config_module="arlm.conf", version_base=None):
            cfg = hydra_compose(config_name=name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"missing config value(s): {', '.join(missing)} (set them as key=value)")
        return cfg
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(e)) from None


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg)


def to_object(cfg: Any) -> Any:
    """Dataclass instances for library code."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)
