"""Quantization: plain int8 post-training quantization and FairQuantize.

``int8_ptq`` is the fairness-unaware twin: PyTorch's own post-training quantization
(``torch.ao.quantization``), so the returned model runs real int8 kernels and the engine
measures its latency. ``static`` (the default) quantizes every supported conv/linear layer
and its activations after calibrating the observers on training rows (FX graph mode);
``dynamic`` quantizes only the weights of linear layers and the activations on the fly.
PyTorch's int8 kernels are CPU kernels: the method refuses other devices.

``fairquantize`` follows the reference code of Guo et al. (MICCAI 2024), docs/methods.md §2.6:

1. cumulative targets t_n = n·step (5 % steps by default) up to ``target``;
2. at each step the per-group diagonal curvature h^c of the loss w.r.t. every conv/linear
   weight is computed on seeded balanced scoring sets (c = 0: the unprivileged group), and
   every weight gets the score (h⁰ − β·h¹)·(q(w) − w)², FairPrune's group saliency with the
   rounding error in place of the weight (:class:`.toolbox.scores.GroupSaliency`; the
   reference's integer weights (9, −5) are β = 5/9 up to a positive factor, which does not
   change any ranking);
3. per layer, round(t_n·n) weights are quantized: those already quantized plus the smallest
   scores among the rest (true ranks). ``reference_argsort_quirk`` reproduces the reference
   selection instead: t_n added up in floating point, already-quantized scores set to −1e38,
   torch's unstable ``argsort``, and the positions whose *argsort entry* is <= round(t_n·n)
   marked (k + 1 essentially arbitrary positions, OR-ed into the mask). The coded fraction
   then exceeds t_n (``info["quantized_fraction"]`` and each step's ``fraction``);
4. all weights retrain for ``epochs`` epochs on balanced batches of the balanced subset
   (no augmentation), SGD with a step schedule, loss (1 − α)·CE + α·|CE₀ − CE₁|, and after
   every optimizer step the quantized positions are overwritten with their frozen values;
5. in the last step the model is validated after every epoch (the engine's predictions and
   metrics, :meth:`MethodContext.validation_metrics`) and the checkpoint is chosen by a
   named policy (``checkpoint``): ``fairest_within_tolerance``, ``best_accuracy`` or
   ``last``; earlier steps continue from their last epoch, as in the reference code. The
   reference saves several best-by-metric checkpoints and the FairLRF paper does not say
   which it reported; the default policy (an assumption, docs/methods.md §2.6) takes the lowest validation EOpp1
   among the epochs within ``checkpoint_tolerance`` accuracy points of the best, by the
   tuning module's rule (:func:`fairsqueeze.spec.tuning.fairest_above`).

The quantized weights are stored as int8 codes (:mod:`.toolbox.quantize`). Choices where the
reference is silent or differs: the scoring/retraining subset is one seeded balanced sample
per run (the reference re-draws it unseeded at every step and epoch); only conv and linear
weights are quantized (the reference also quantizes batch-norm weights of a ResNet); the
codec of a layer (exponent window or scale) is fitted once on the dense weights and clipped
exponents are counted in ``info``.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from fairsqueeze.core.errors import ConfigError
from fairsqueeze.engine.training import Batch, Trainer
from fairsqueeze.spec.train import TrainConfig

from .base import Cost, Method, MethodContext, Outcome, TaskInfo, checked_beta, parse_beta, register_method, two_groups
from .toolbox import curvature
from .toolbox.factorize import replace_module
from .toolbox.pruning import select_smallest
from .toolbox.group_surrogates import cell_means, miss
from .toolbox.scores import GroupSaliency, RoundingError, scoring_groups
from .toolbox.quantize import QUANTIZABLE, SCHEMES, Codec, coded_layer, coded_summary, fit_codec, quantize

CHECKPOINT_POLICIES = ("fairest_within_tolerance", "best_accuracy", "last")
QUANTIZED_BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")


# =========================================================================== int8 PTQ


@register_method("int8_ptq")
class Int8PTQ(Method):
    """Post-training int8 quantization with PyTorch's quantization (no fine-tuning)."""

    family = "quantization"

    @dataclass
    class Params:
        mode: str = "static"  # "static": conv + linear + activations; "dynamic": linear weights only
        backend: str = "x86"
        calibration_rows: int = 1024  # training rows for the static observers (eval transforms)
        batch_size: int = 256

    def validate(self) -> None:
        p = self.params
        if p.mode not in ("static", "dynamic"):
            raise ConfigError(f"int8_ptq: mode must be 'static' or 'dynamic', got {p.mode!r}")
        if p.backend not in QUANTIZED_BACKENDS:
            raise ConfigError(f"int8_ptq: unknown backend {p.backend!r} (known: {', '.join(QUANTIZED_BACKENDS)})")
        if p.calibration_rows < 1 or p.batch_size < 1:
            raise ConfigError("int8_ptq: calibration_rows and batch_size must be >= 1")

    def space(self, trial) -> dict[str, Any]:
        return {"mode": trial.suggest_categorical("mode", ["static", "dynamic"])}

    @torch.no_grad()
    def apply(self, ctx: MethodContext) -> Outcome:
        self.validate()
        with warnings.catch_warnings():
            # torch.ao's own defaults warn about its deprecation and its observers' arguments
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*(reduce_range|quantized tensor creation).*")
            return self._quantize(ctx)

    def _quantize(self, ctx: MethodContext) -> Outcome:
        from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule
        from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        p = self.params
        if ctx.device.type != "cpu":
            raise ConfigError("int8_ptq: PyTorch's int8 kernels run on the CPU; run it with --device cpu")
        if p.backend not in torch.backends.quantized.supported_engines:
            raise ConfigError(f"int8_ptq: backend {p.backend!r} is not available in this PyTorch build")
        torch.backends.quantized.engine = p.backend  # the kernels the converted model will call
        model = ctx.model.eval()
        passes: dict[str, float] = {}
        if p.mode == "dynamic":
            quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
            rows = 0
        else:
            train = ctx.task.train
            rows = min(p.calibration_rows, len(train))
            sample = train.subset(np.sort(np.random.default_rng(ctx.seed).choice(len(train), rows, replace=False)))
            example = ctx.task.prepare(sample.x[:1], False)
            try:
                prepared = prepare_fx(model, get_default_qconfig_mapping(p.backend), (example,))
            except Exception as exc:  # symbolic tracing fails on data-dependent control flow
                raise ConfigError(f"int8_ptq: static quantization cannot trace this model ({exc}); try mode: dynamic") from exc
            for x, _, _ in ctx.batches(sample, p.batch_size):
                prepared(x)
            quantized = convert_fx(prepared)
            passes["calibration_forward"] = rows / len(train)
        modules = [n for n, m in quantized.named_modules() if isinstance(m, WeightedQuantizedModule)]
        if not modules:
            raise ConfigError("int8_ptq: no layer of this model could be quantized")
        info = {"mode": p.mode, "backend": p.backend, "calibration_rows": rows, "quantized_modules": modules}
        return Outcome(model=quantized, cost=Cost(passes), info=info)


# =========================================================================== FairQuantize


def cumulative_targets(step: float, target: float) -> list[Fraction]:
    """t_n = n·step, n = 1, 2, ..., with the last one capped at ``target``."""
    step_f, target_f = Fraction(str(step)), Fraction(str(target))
    count = math.ceil(target_f / step_f)
    return [min(n * step_f, target_f) for n in range(1, count + 1)]


def target_count(t: Fraction, numel: int) -> int:
    """round(t·n) as the reference computes it (Python's round: halves to even)."""
    return int(round(t * numel))


def reference_targets(step: float, target: float) -> list[float]:
    """The reference code's cumulative targets: ``step`` added up in floating point
    (0.15000000000000002 after three 5 % steps), the last one capped at ``target``."""
    targets, total = [], 0.0
    for _ in cumulative_targets(step, target):
        total += step
        targets.append(min(total, float(target)))
    return targets


def select_to_quantize(scores: Tensor, quantized: Tensor, count: int, reference_argsort_quirk: bool = False) -> Tensor:
    """The cumulative quantized mask after one step (same shape as ``scores``).

    True ranks: the already-quantized positions plus the ``count − |quantized|`` smallest
    scores among the others (ties by position). Quirk: the reference code's selection, in
    the scores' own dtype: already-quantized entries set to −1e38, torch's default
    (unstable) ``argsort``, whose output is compared position-wise with ``count`` and
    OR-ed into the old mask; the order of the tied quantized entries decides which
    positions are marked.
    """
    done = quantized.reshape(-1).bool()
    if reference_argsort_quirk:
        flat = scores.detach().reshape(-1)
        marked = (~done).to(flat.dtype) * flat + done.to(flat.dtype) * -1.0e38
        order = torch.argsort(marked)  # unstable on purpose: the reference's tie order
        return (done | (order <= count)).reshape(scores.shape)
    flat = scores.detach().reshape(-1).double()
    missing = min(count, flat.numel()) - int(done.sum())
    if missing <= 0:
        return done.reshape(scores.shape)
    finite = torch.nan_to_num(flat, nan=torch.finfo(flat.dtype).max)  # an undefined score ranks last
    new = select_smallest({"w": finite}, {"w": done.cpu()}, {"w": missing})["w"].to(done.device)
    return (done | new).reshape(scores.shape)


@dataclass
class _Layer:
    path: str
    module: nn.Module
    codec: Codec
    mask: Tensor  # bool, shape of the weight: quantized positions
    frozen: Tensor  # the quantized values (valid where mask)
    positions: Tensor | None = None  # flat indices of the mask, and their frozen values:
    values: Tensor | None = None  # what is written back after every optimizer step


class _Checkpoints:
    """Validation after every epoch (the engine's predictions and metrics) and the states a
    named policy may still choose."""

    def __init__(self, ctx: MethodContext, policy: str, tolerance: float, fairness: str):
        self.ctx, self.policy, self.tolerance, self.fairness = ctx, policy, tolerance, fairness
        self.records: list[dict] = []
        self.kept: list[tuple[dict, dict]] = []  # (record, state dict)

    def validate(self, model: nn.Module) -> dict:
        metrics = self.ctx.validation_metrics(model)
        return {"accuracy": metrics["accuracy"], self.fairness: metrics.get(self.fairness, math.nan)}

    def __call__(self, trainer: Trainer, epoch: int) -> None:
        record = {"epoch": epoch, **self.validate(trainer.model)}
        trainer.model.train()
        self.records.append(record)
        if self.policy == "last":
            return
        if any(self._better_or_equal(old, record) for old, _ in self.kept):
            return
        self.kept = [(r, s) for r, s in self.kept if not self._better_or_equal(record, r)]
        self.kept.append((record, copy.deepcopy(trainer.model.state_dict())))

    def _unfairness(self, record: dict) -> float:
        value = record[self.fairness]
        return value if math.isfinite(value) else math.inf

    def _better_or_equal(self, a: dict, b: dict) -> bool:
        """Whether ``a`` is at least as good as ``b`` for the policy (then ``b`` is never needed)."""
        if self.policy == "best_accuracy":
            return a["accuracy"] >= b["accuracy"]
        return a["accuracy"] >= b["accuracy"] and self._unfairness(a) <= self._unfairness(b)

    def _fairest_within_tolerance(self) -> dict:
        """The tuning module's rule on the kept epochs: the lowest unfairness among those within
        ``tolerance`` accuracy points of the best (ties: higher accuracy, then earlier epoch)."""
        from fairsqueeze.spec.tuning import fairest_above

        records = [r for r, _ in self.kept]
        frame = pd.DataFrame({"number": [r["epoch"] for r in records],
                              "utility": [r["accuracy"] for r in records],
                              "unfairness": [r[self.fairness] for r in records],
                              "feasible": True, "flagged": False})
        epoch = fairest_above(frame, max(r["accuracy"] for r in records) - self.tolerance)
        if epoch is None:  # no epoch has a finite unfairness: the most accurate one
            return max(records, key=lambda r: r["accuracy"])
        return next(r for r in records if r["epoch"] == epoch)

    def choose(self, model: nn.Module) -> dict:
        """Load the chosen state into ``model``; return what was chosen and why."""
        if self.policy == "last" or not self.kept:
            chosen = self.records[-1] if self.records else None
        elif self.policy == "best_accuracy":
            chosen = self.kept[0][0]
        else:
            chosen = self._fairest_within_tolerance()
        for record, state in self.kept:
            if record is chosen:
                model.load_state_dict(state)
        return {"policy": self.policy, "tolerance": self.tolerance, "fairness": self.fairness,
                "epoch": chosen["epoch"] if chosen else None, "validation": list(self.records)}


def _group_gap_loss(alpha: float):
    """(1 − α)·CE + α·|CE₀ − CE₁|, the group CEs as cell means of the per-row CE."""
    def loss(model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch.x)
        row_ce = miss(logits, "ce").gather(1, batch.y.unsqueeze(1))  # −log p_y per row
        ce = row_ce.mean()
        if alpha == 0:
            return ce
        groups = torch.unique(batch.s)
        if len(groups) != 2:
            return (1 - alpha) * ce
        means, _ = cell_means(row_ce.expand(-1, 2), torch.stack([batch.s == g for g in groups], 1))
        gap = (means[0] - means[1]).abs()
        return (1 - alpha) * ce + alpha * gap

    return loss


@dataclass
class RoundingSchedule:
    """The progressive procedure FairQuantize and its curvature-free twin share (all but the score)."""

    target: float = 0.2  # cumulative quantized fraction of every layer at the end (FairLRF: 0.1 / 0.2)
    step: float = 0.05  # increment of the cumulative schedule
    scheme: str = "pow2"  # "pow2" (reference) or "int8_sym" (labelled alternative)
    exponent_bits: int = 7  # pow2 code: sign + this many exponent bits in one int8
    reference_argsort_quirk: bool = False
    scoring_size: int | None = None  # rows per group of the balanced subset (None: smaller group)
    epochs: int = 20  # retraining epochs per step
    batch_size: int = 8  # balanced: batch_size // 2 rows of each group (reference: 4 + 4)
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_step: int = 4
    lr_gamma: float = 0.57
    checkpoint: str = "fairest_within_tolerance"
    checkpoint_tolerance: float = 0.01  # accuracy points below the best validation accuracy
    checkpoint_fairness: str = "eopp1"


@register_method("fairquantize")
class FairQuantize(Method):
    """Progressive, curvature-guided power-of-two quantization with retraining (Guo et al. 2024)."""

    family = "quantization"
    conformance_params = {"target": 0.1, "epochs": 1, "batch_size": 32, "scoring_size": 64, "curvature_batch_size": 32}

    @dataclass
    class Params(RoundingSchedule):
        beta: float | str = "5/9"  # reference weights (9, -5)
        unprivileged_group: int | None = None  # None: the group the dense model does worse on (val)
        estimator: str = "ggn_exact"
        curvature_batch_size: int = 4
        alpha: float = 0.0  # weight of |CE_0 - CE_1| in the retraining loss

    def validate(self) -> None:
        p = self.params
        checked_beta(self.registered_name, p.beta)
        if p.curvature_batch_size < 1 or not 0 <= p.alpha <= 1:
            raise ConfigError(f"{self.registered_name}: curvature_batch_size >= 1 and alpha in [0, 1] needed")
        if p.estimator not in curvature.ESTIMATORS:
            raise ConfigError(f"{self.registered_name}: unknown estimator {p.estimator!r} "
                              f"(known: {', '.join(curvature.ESTIMATORS)})")
        self._validate_schedule()

    def supports(self, task: TaskInfo) -> str | None:
        return two_groups(task, unprivileged_group=getattr(self.params, "unprivileged_group", None))

    def _validate_schedule(self) -> None:
        p, who = self.params, self.registered_name
        if not (0 < p.step <= 1 and 0 < p.target <= 1):
            raise ConfigError(f"{who}: step and target must lie in (0, 1]")
        if p.scheme not in SCHEMES:
            raise ConfigError(f"{who}: unknown scheme {p.scheme!r} (known: {', '.join(SCHEMES)})")
        if not 1 <= p.exponent_bits <= 7:
            raise ConfigError(f"{who}: exponent_bits must lie in 1..7")
        if p.scoring_size is not None and p.scoring_size < 1:
            raise ConfigError(f"{who}: scoring_size must be >= 1 (or null for the smaller group's size)")
        if p.batch_size < 2 or p.epochs < 0:
            raise ConfigError(f"{who}: batch_size >= 2 and epochs >= 0 needed")
        if p.lr <= 0 or p.lr_step < 0:
            raise ConfigError(f"{who}: lr > 0 and lr_step >= 0 needed")
        if p.checkpoint not in CHECKPOINT_POLICIES:
            raise ConfigError(f"{who}: unknown checkpoint policy {p.checkpoint!r} "
                              f"(known: {', '.join(CHECKPOINT_POLICIES)})")
        if not 0 <= p.checkpoint_tolerance <= 1:
            raise ConfigError(f"{who}: checkpoint_tolerance must lie in [0, 1]")

    def _score(self, ctx: MethodContext, sets: dict, codecs: dict) -> tuple[object, dict]:
        """The score that orders the weights to round, and what the run's info says of it."""
        p = self.params
        beta = parse_beta(p.beta)
        by_group = {role: ctx.labelled_batches(split, p.curvature_batch_size) for role, split in sets.items()}
        # the OBD cost of rounding each weight, (h⁰ − β·h¹)·(q(w) − w)² up to the positive ½
        score = GroupSaliency(by_group, beta, p.estimator, generator=ctx.seed,
                              displacement=lambda name, w: quantize(codecs[name], w) - w)
        return score, {"beta": beta, "estimator": p.estimator}

    def _retraining_alpha(self) -> float:
        return self.params.alpha

    def space(self, trial) -> dict[str, Any]:
        return {"beta": trial.suggest_float("beta", 0.0, 1.0),
                "epochs": trial.suggest_int("epochs", 0, max(self.params.epochs, 1))}

    def apply(self, ctx: MethodContext) -> Outcome:
        self.validate()
        p = self.params
        sets, unprivileged = scoring_groups(ctx, p.scoring_size, getattr(p, "unprivileged_group", None),
                                            self.registered_name)
        train = ctx.task.train
        subset = _balanced_subset(train, sets)

        model = ctx.model.to(ctx.device)
        layers = [
            _Layer(path, m, codec, torch.zeros_like(m.weight, dtype=torch.bool), torch.zeros_like(m.weight))
            for path, m in model.named_modules() if isinstance(m, QUANTIZABLE)
            for codec in [fit_codec(p.scheme, m.weight, p.exponent_bits)]
        ]
        if not layers:
            raise ConfigError("fairquantize: the model has no linear or conv layer")
        names = [f"{layer.path}.weight" for layer in layers]

        def freeze(trainer: Trainer | None = None) -> None:
            with torch.no_grad():
                for layer in layers:
                    layer.module.weight.view(-1).index_copy_(0, layer.positions, layer.values)

        codecs = {f"{layer.path}.weight": layer.codec for layer in layers}
        score, score_info = self._score(ctx, sets, codecs)
        exact = cumulative_targets(p.step, p.target)
        targets = reference_targets(p.step, p.target) if p.reference_argsort_quirk else exact
        cost = Cost()
        steps, clipped, checkpoint = [], 0, None
        for n, t in enumerate(targets):
            model.eval()
            scored = score(model, names)  # passes over the balanced subset
            cost += Cost(scored.passes).prefixed("curvature")
            quantized_now = 0
            with torch.no_grad():
                for layer in layers:
                    w = layer.module.weight
                    q = quantize(layer.codec, w)
                    scores = scored.values[f"{layer.path}.weight"]
                    mask = select_to_quantize(scores, layer.mask, target_count(t, w.numel()), p.reference_argsort_quirk)
                    new = mask & ~layer.mask
                    clipped += layer.codec.clipped(w[new])
                    layer.frozen = torch.where(new, q, layer.frozen)
                    layer.mask = mask
                    layer.positions = torch.nonzero(mask.reshape(-1)).flatten()
                    layer.values = layer.frozen.reshape(-1)[layer.positions]
                    quantized_now += int(mask.sum())
            freeze()
            steps.append({"target": float(t), "quantized": quantized_now,
                          "fraction": quantized_now / sum(layer.mask.numel() for layer in layers)})
            last = n == len(targets) - 1
            checkpoint = _Checkpoints(ctx, p.checkpoint, p.checkpoint_tolerance, p.checkpoint_fairness) if last else None
            trainer = Trainer(
                model, ctx.task, _retrain_config(p), ctx.device, ctx.seed + n, loss=_group_gap_loss(self._retraining_alpha()),
                after_step=freeze, on_epoch_end=checkpoint, sampler="balanced", augment=False,
                desc=f"fairquantize step {n + 1}/{len(targets)}",
            )
            if p.epochs:
                trainer.fit(subset)
            cost += trainer.cost.as_cost(scale=len(subset) / len(train))  # it counts passes over the subset
        chosen = checkpoint.choose(model) if checkpoint is not None and checkpoint.records else {
            "policy": p.checkpoint, "epoch": None, "validation": []}
        if checkpoint is not None and checkpoint.records:
            cost += Cost({"validation_forward": float(len(checkpoint.records))})

        for layer in layers:
            coded = coded_layer(layer.module, layer.mask, layer.codec)
            if not torch.equal(coded.dense_weight(), layer.module.weight.detach()):
                raise RuntimeError(f"fairquantize: the codes of {layer.path} do not reproduce its frozen weights")
            replace_module(model, layer.path, coded)
        summary = coded_summary(model)
        info = {
            "unprivileged_group": unprivileged,
            **score_info,
            "scheme": p.scheme,
            "selection": "reference_argsort_quirk" if p.reference_argsort_quirk else "true_ranks",
            "nominal_fraction": float(exact[-1]),
            "quantized_fraction": summary["fraction"],  # what is really coded (the quirk exceeds the nominal)
            "quantized_weights": summary["coded_weights"],
            "clipped_exponents" if p.scheme == "pow2" else "clipped_codes": clipped,
            "steps": steps,
            "checkpoint": chosen,
            "scoring_rows_per_group": len(sets[0]),
        }
        return Outcome(model=model, cost=cost, info=info)


@register_method("fairquantize_error")
class FairQuantizeError(FairQuantize):
    """FairQuantize's fairness-unaware twin: the same progressive rounding, retraining and
    checkpoint policy, but the weights with the smallest rounding error (q(w) − w)² go first
    (no curvature, no groups), so a comparison at the same ratio isolates the fair score."""

    conformance_params = {"target": 0.1, "epochs": 1, "batch_size": 32, "scoring_size": 64}

    @dataclass
    class Params(RoundingSchedule):
        pass

    def validate(self) -> None:
        self._validate_schedule()

    def space(self, trial) -> dict[str, Any]:
        return {"epochs": trial.suggest_int("epochs", 0, max(self.params.epochs, 1))}

    def _score(self, ctx: MethodContext, sets: dict, codecs: dict) -> tuple[object, dict]:
        return RoundingError(lambda name, w: quantize(codecs[name], w) - w), {"score": "rounding_error"}

    def _retraining_alpha(self) -> float:
        return 0.0


def _retrain_config(p: RoundingSchedule) -> TrainConfig:
    return TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer="sgd", momentum=p.momentum,
                       weight_decay=p.weight_decay, lr_step=p.lr_step, lr_gamma=p.lr_gamma)


def _balanced_subset(train, sets):
    """The training rows of the balanced scoring sets, as one split (rows located by source id)."""
    position = {int(i): r for r, i in enumerate(train.index)}
    rows = np.sort(np.concatenate([[position[int(i)] for i in s.index] for s in sets.values()]))
    return train.subset(rows)
