"""`arimg dpo`: direct preference optimisation on pairs of the model's own samples (`arimg make-prefs`).

The stage is the one trainer of arlm.training.transformer with two parts of its own: `PrefBatches` (the pairs
of preference shards as batches) and `Preference` (the objective). Chosen and rejected sequences go through
the model in one forward, as one batch of 2m sequences (chosen first); the policy's per-sequence log-probs
of the visual tokens (`sequence_logps`) are compared with the reference model's, which make-prefs stored
in the shards (`dpo.reference=shards`, no second model in memory) or a frozen copy of the initial model
computes as training goes (`dpo.reference=live`).

With h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r)) for chosen c and rejected r:

    sigmoid  -(1 - e) log s(b h) - e log s(-b h)                  (Rafailov et al. 2023; e > 0: conservative DPO)
    ipo      (h - 1 / (2 b))^2                                    (Azar et al. 2023)
    robust   (-(1 - e) log s(b h) + e log s(-b h)) / (1 - 2 e)    (Chowdhury et al. 2024)

b is `dpo.beta`, e `dpo.label_smoothing`. `dpo.ntp_weight` adds the chosen samples' next-token loss (mean
per visual token), which keeps their likelihood from falling while the margin grows. Metrics carry the
names TRL's users know: rewards/chosen = b (log pi(c) - log ref(c)), rewards/rejected, rewards/margins,
rewards/accuracies (share of pairs whose chosen reward is higher), logps/chosen, logps/rejected.
`dpo.epochs` gives the run's length as passes over the pairs instead of `trainer.max_steps`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arlm.config import DPOConfig, TokenDataConfig
from arlm.data.shards import expand, raw_samples
from arlm.errors import ConfigError, UserError
from arlm.log import log
from arlm.transformer.data import PREFS_FILE, Batches, TokenInfo, pad_text
from arlm.transformer.objectives import sequence_logps
from arlm.transformer.sequence import VISUAL_R, LayoutError, Vocab

# dpo.loss_type -> per-pair loss of the margin h, beta b and label smoothing e
LOSSES = {
    "sigmoid": lambda h, b, e: -F.logsigmoid(b * h) * (1 - e) - F.logsigmoid(-b * h) * e,  # DPO, conservative DPO
    "ipo": lambda h, b, e: (h - 1 / (2 * b)) ** 2,  # Azar et al. 2023
    # Chowdhury et al. 2024
    "robust": lambda h, b, e: (-F.logsigmoid(b * h) * (1 - e) + F.logsigmoid(-b * h) * e) / (1 - 2 * e),
}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, cfg: DPOConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards), all (P,), from per-sequence log-probs (P,)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = LOSSES[cfg.loss_type](h, cfg.beta, cfg.label_smoothing)
    b = cfg.beta
    return losses, b * (policy_chosen - ref_chosen).detach(), b * (policy_rejected - ref_rejected).detach()


def check_config(cfg: DPOConfig) -> None:
    if cfg.loss_type not in LOSSES:
        raise ConfigError(f"dpo.loss_type must be one of {', '.join(LOSSES)}, got {cfg.loss_type!r}")
    if cfg.beta <= 0:
        raise ConfigError(f"dpo.beta must be positive, got {cfg.beta}")
    if not 0 <= cfg.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing must lie in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.reference not in ("shards", "live"):
        raise ConfigError(f"dpo.reference must be shards or live, got {cfg.reference!r}")
    if cfg.epochs < 0:
        raise ConfigError(f"dpo.epochs must be 0 (use trainer.max_steps) or positive, got {cfg.epochs}")


def schedule_steps(cfg: DPOConfig, max_steps: int, pairs: int, batch_size: int) -> int:
    """The run's length: `dpo.epochs` passes over the pairs, rounded up to whole steps, else max_steps."""
    if cfg.epochs <= 0:
        return max_steps
    steps = math.ceil(cfg.epochs * pairs / batch_size)
    log.info("dpo.epochs=%g: %d steps of %d pairs over %d pairs", cfg.epochs, steps, batch_size, pairs)
    return steps


class Preference:
    """The objective of `arimg dpo` (see the module docstring); micro-batches from `PrefBatches`."""

    shown = ("loss", "rewards/margins", "rewards/accuracies")  # on the progress bar
    plots = {"loss.png": (("loss",), False),
             "rewards.png": (("rewards/chosen", "rewards/rejected", "rewards/margins"), False)}
    n_stats = 8  # [loss, pairs, chosen reward, rejected reward, correct, chosen logp, rejected logp, chosen nll]

    def __init__(self, cfg: DPOConfig, reference: torch.nn.Module | None = None) -> None:
        self.cfg, self.reference = cfg, reference

    def norm(self, micro) -> torch.Tensor:
        return torch.tensor(float(micro[0].shape[0] // 2), device=micro[0].device)

    def __call__(self, net, micro) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pos, region, ref = micro
        m = tokens.shape[0] // 2
        logps = sequence_logps(net(tokens[:, :-1], pos[:, :-1]), tokens, region)  # (2m,)
        if self.reference is not None:
            with torch.no_grad():
                ref = sequence_logps(self.reference(tokens[:, :-1], pos[:, :-1]), tokens, region)
        losses, chosen, rejected = dpo_loss(logps[:m], logps[m:], ref[:m], ref[m:], self.cfg)
        n_vis = (region[:m, 1:] == VISUAL_R).sum(-1)  # (m,) visual targets per chosen sequence
        nll = -(logps[:m] / n_vis)
        obj = losses.sum() + (self.cfg.ntp_weight * nll.sum() if self.cfg.ntp_weight > 0 else 0.0)
        stats = torch.stack([losses.sum(), torch.tensor(float(m), device=tokens.device), chosen.sum(),
                             rejected.sum(), (chosen > rejected).float().sum(), logps[:m].sum(), logps[m:].sum(),
                             nll.sum()]).detach()
        return obj, stats

    def metrics(self, s: list[float]) -> dict[str, float]:
        n = max(s[1], 1)
        return {"loss": s[0] / n, "rewards/chosen": s[2] / n, "rewards/rejected": s[3] / n,
                "rewards/margins": (s[2] - s[3]) / n, "rewards/accuracies": s[4] / n, "logps/chosen": s[5] / n,
                "logps/rejected": s[6] / n, "nll/chosen": s[7] / n}


def read_prefs_vocab(shards: str) -> Vocab:
    """The vocabulary recorded beside preference shards (`arimg make-prefs` writes it)."""
    first = expand(shards)[0]
    file = Path(first).parent / PREFS_FILE
    try:
        return Vocab.from_json(json.dumps(json.loads(file.read_text())["vocab"]))
    except FileNotFoundError:
        raise UserError(f"no {PREFS_FILE} beside {first}: preference shards come from `arimg make-prefs`") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"corrupt {file}: {e}") from None


class PrefBatches(Batches):
    """Micro-batches (tokens, positions, region, reference log-probs) of preference pairs: each holds m
    chosen sequences, then their m rejected ones (2m rows). Memory mode only; the step's pairs follow the
    per-epoch permutation of `Batches`, so resuming and N processes see what one process would."""

    def __init__(self, cfg: TokenDataConfig, vocab: Vocab, info: TokenInfo, max_seq_len: int, device: torch.device,
                 rank: int = 0, world: int = 1, accum: int = 1) -> None:
        if cfg.mode != "memory":
            raise ConfigError("dpo reads its preference shards into memory: data.mode must be memory")
        stored = read_prefs_vocab(cfg.shards)
        if not stored.compatible(vocab):
            raise LayoutError(f"the preference shards' vocabulary (codebook {stored.codebook_size}, "
                              f"{len(stored.words)} words) is not the checkpoint's (codebook {vocab.codebook_size}, "
                              f"{len(vocab.words)} words): make the pairs with this model")
        super().__init__(cfg, vocab, info, max_seq_len, device, rank, world, accum)

    def _load(self) -> None:
        texts, codes, refs = [], [], []
        skips = self.skips
        for raw in raw_samples(self.urls, skips):
            where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
            try:
                meta = json.loads(raw["json"])
                pair = [np.load(io.BytesIO(raw[f"{side}.npy"]), allow_pickle=False) for side in ("chosen", "rejected")]
                ref = [float(x) for x in meta["ref_logps"]]
                prompt = str(meta["prompt"])
            except (KeyError, ValueError, TypeError):
                skips.add("corrupt pair", where)
                continue
            if any(c.dtype.kind not in "iu" or c.shape != tuple(self.info.grid) or c.min() < 0
                   or c.max() >= self.info.codebook_size for c in pair) \
                    or len(ref) != 2:
                skips.add("corrupt pair", where)
                continue
            texts.append(self.vocab.encode_text(prompt))
            codes.append(np.stack([c.reshape(-1) for c in pair]))
            refs.append(ref)
        skips.log_summary()
        if len(texts) < self.cfg.batch_size:
            raise UserError(f"{len(texts)} usable pairs in {self.cfg.shards}, fewer than data.batch_size "
                            f"{self.cfg.batch_size}")
        self.n = len(texts)
        self.text_len = max(len(t) for t in texts)
        self.text, self.lengths = (t.to(self.device) for t in pad_text(texts, self.text_len))
        self.codes = torch.from_numpy(np.stack(codes).astype(np.int64)).to(self.device)  # (N, 2, h*w)
        self.refs = torch.tensor(refs, dtype=torch.float32, device=self.device)  # (N, 2)
        self.steps_per_epoch = self.n // self.cfg.batch_size

    def batch(self, step: int):
        idx = self._indices(step)
        text, lengths, codes, refs = self.text[idx], self.lengths[idx], self.codes[idx], self.refs[idx]
        m = self.local // self.accum
        out = []
        for i in range(0, self.local, m):
            sl = slice(i, i + m)
            both_text, both_len = text[sl].repeat(2, 1), lengths[sl].repeat(2)
            both_codes = torch.cat([codes[sl, 0], codes[sl, 1]])
            tokens, pos, region = self.vocab.build(both_text, both_len, both_codes, *self.grid, self.seq_len)
            out.append((tokens, pos, region, torch.cat([refs[sl, 0], refs[sl, 1]])))
        return out

    @property
    def tokens_per_step(self) -> int:
        return 2 * self.cfg.batch_size * self.seq_len
