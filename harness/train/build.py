"""Spec → training components: the one place that maps a RunSpec onto the registries' plain arguments.

Order matters for reproducibility: the seed is set, then the architecture is built, then the
loss terms (their parameters, e.g. the centres, draw from the same stream), exactly as before
the registries existed — so a BoT spec trains to the same weights as it always did.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from reidbench.harness.spec import RunSpec
from reidbench.harness.train.loop import StagePlan, TrainComponents
from reidbench.models.terms import TrainProgress


def module_globs(names: Sequence[str], module_groups: dict[str, Sequence[str]], where: str) -> tuple[str, ...]:
    """Module-group names (``backbone``, ``new``, ...) or globs → parameter-name globs.

    A plain name that is neither a group nor contains glob characters is taken as a submodule
    path (``head.classifier`` → ``head.classifier.*``).
    """
    globs: list[str] = []
    for name in names:
        if name in module_groups:
            globs.extend(f"{m}.*" for m in module_groups[name])
        elif any(ch in name for ch in "*?["):
            globs.append(name)
        else:
            globs.append(f"{name}.*")
    if not globs:
        raise ValueError(f"{where}: no module group or glob given")
    return tuple(globs)


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def stage_plan(spec: RunSpec, model: nn.Module, objective: Any = None) -> StagePlan:
    """Which parameters each epoch (step granularity: each step) freezes, the LR scale and the loss
    terms, from ``spec.stages``.

    Freezing covers the model's parameters; a loss term's own (the verification head's FC) is
    not frozen by a stage, but a stage whose ``losses`` leave the term out does not compute it,
    so it gets no gradient there. ``objective`` is needed only when a stage names ``losses``.
    With ``schedule.granularity: step`` the stages begin at fractional epochs elapsed
    (``StagePlan.starts``): a stage of 0.7 epochs trains the first 70 % of the first epoch's steps.
    """
    names = [n for n, _ in model.named_parameters()]
    stages = []
    losses: list[frozenset[str] | None] = []
    starts: list[float] = []
    first = 1
    elapsed = 0.0
    per_step = spec.schedule.granularity == "step"
    groups = dict(getattr(model, "module_groups", {}))
    for i, stage in enumerate(spec.stages):
        where = f"stages[{i}]"
        if stage.frozen:
            globs = module_globs(stage.frozen, groups, f"{where}.frozen")
            frozen = frozenset(n for n in names if _matches(n, globs))
        elif stage.train_only:
            globs = module_globs(stage.train_only, groups, f"{where}.train_only")
            frozen = frozenset(n for n in names if not _matches(n, globs))
        else:
            frozen = frozenset()
        if (stage.frozen or stage.train_only) and not (frozen if stage.frozen else set(names) - frozen):
            raise ValueError(f"{where}: {list(stage.frozen or stage.train_only)} matches no parameter of "
                             f"model.arch={spec.model.arch!r}; module groups: {', '.join(sorted(groups))}")
        if per_step:  # the epochs it touches, informational; the boundaries are ``starts``
            starts.append(elapsed)
            end = elapsed + stage.epochs
            stages.append((stage.name or f"stage{i + 1}", int(math.floor(elapsed)) + 1, max(1, int(math.ceil(end))),
                           frozen, stage.lr_scale))
            elapsed = end
        else:
            stages.append((stage.name or f"stage{i + 1}", first, first + stage.epochs - 1, frozen, stage.lr_scale))
            first += stage.epochs
        if stage.losses and objective is None:
            raise ValueError(f"{where}.losses: the stage plan needs the objective to resolve loss term names")
        losses.append(objective.labels_for(stage.losses, f"{where}.losses") if stage.losses else None)
    if not stages:
        stages.append(("all", 1, spec.schedule.max_epochs, frozenset(), 1.0))
        starts = [0.0] if per_step else []
    warm_epochs, warm_frozen = _freeze_warmup(spec, names, groups)
    losses_per_stage = () if all(x is None for x in losses) else tuple(losses)
    return StagePlan(tuple(stages), losses_per_stage, warm_frozen=warm_frozen, warm_epochs=warm_epochs,
                     starts=tuple(starts))


def _freeze_warmup(spec: RunSpec, names: Sequence[str], groups: dict[str, Sequence[str]]
                   ) -> tuple[float, frozenset[str]]:
    """(epochs, parameter names) of the freeze-backbone warm-up (``schedule.freeze_epochs``), or (0, {})."""
    sched = spec.schedule
    if not sched.freeze_epochs:
        return 0.0, frozenset()
    globs = module_globs(sched.freeze_modules, groups, "schedule.freeze_modules")
    frozen = frozenset(n for n in names if _matches(n, globs))
    if not frozen:
        raise ValueError(f"schedule.freeze_modules={list(sched.freeze_modules)} matches no parameter of "
                         f"model.arch={spec.model.arch!r}; module groups: {', '.join(sorted(groups))}")
    epochs = sched.freeze_epochs * (sched.max_epochs if sched.unit == "fraction" else 1)
    return float(epochs), frozen  # compared step by step in either granularity (StagePlan.frozen_at)


def _schedule_kwargs(spec: RunSpec) -> dict[str, Any]:
    from reidbench.harness.train.schedules import get_schedule

    sched = spec.schedule
    fields = {f.name for f in dataclasses.fields(get_schedule(sched.kind).params)}
    common = {"milestones": tuple(sched.milestones), "gamma": sched.gamma, "warmup_epochs": sched.warmup_epochs,
              "warmup_factor": sched.warmup_factor, "unit": sched.unit, "granularity": sched.granularity}
    kwargs = {k: v for k, v in common.items() if k in fields}
    kwargs.update(dict(sched.options))
    return kwargs


def build_lr_scheduler(optimizer: torch.optim.Optimizer, spec: RunSpec, stages: StagePlan,
                       progress: TrainProgress | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule's multiplier times the stage's LR scale.

    Epoch granularity: stepped once per epoch, counter 0 = training epoch 1 (the reference).
    Step granularity (``schedule.granularity: step``): stepped after every optimizer step; each
    step sets the LR of the next one from ``progress.elapsed``, x = (epoch - 1) + step /
    steps_per_epoch (harness/train/schedules.py), which the loop keeps current (epoch, step and
    this epoch's length: a P×K epoch's length may vary). Built and not yet stepped, it is at x = 0.
    The LR depends only on where training is, so a resumed run (optimizer state restored) goes on
    with the same LRs.
    """
    from reidbench.harness.train.schedules import get_schedule

    entry = get_schedule(spec.schedule.kind)
    params = entry.make_params(**_schedule_kwargs(spec))
    max_epochs = spec.schedule.max_epochs

    if spec.schedule.granularity == "step":
        if progress is None:
            raise ValueError("schedule.granularity=step: build_lr_scheduler needs the TrainProgress that holds "
                             "steps_per_epoch")
        if not entry.step_granular:
            raise ValueError(f"schedule.kind={spec.schedule.kind!r} has no step granularity (its params declare no "
                             "granularity): use schedule.granularity: epoch")

        def per_step(index: int) -> float:
            x = progress.elapsed  # the counter only counts; where training is comes from the loop
            return entry.factor(1.0 + x, max_epochs, params) * stages.lr_scale_x(x)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=per_step)

    def factor(index0: int) -> float:
        # After the last epoch the scheduler steps once more (epoch max_epochs + 1): it keeps the last stage.
        epoch = index0 + 1
        return entry.factor(epoch, max_epochs, params) * stages.lr_scale(min(epoch, max_epochs))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


# An epoch "ends" this many epochs before its boundary: its last step's LR, in step granularity.
EPOCH_END_EPS = 1e-6


def planned_epoch_lrs(spec: RunSpec, stages: StagePlan) -> list[float]:
    """The LR multiplier (schedule × stage scale) each epoch 1..max_epochs ends at, read from the spec.

    Epoch granularity: the one LR of the epoch. Step granularity: the LR of its last step, so an
    epoch in which a decay falls counts as decayed (the convergence window, train/convergence.py,
    is then the last whole epochs before it). Nothing is built or stepped.
    """
    from reidbench.harness.train.schedules import get_schedule

    entry = get_schedule(spec.schedule.kind)
    params = entry.make_params(**_schedule_kwargs(spec))
    max_epochs = spec.schedule.max_epochs
    if spec.schedule.granularity == "step":
        return [entry.factor(1.0 + e - EPOCH_END_EPS, max_epochs, params) * stages.lr_scale_x(e - EPOCH_END_EPS)
                for e in range(1, max_epochs + 1)]
    return [entry.factor(e, max_epochs, params) * stages.lr_scale(e) for e in range(1, max_epochs + 1)]


def build_optimizer_for(spec: RunSpec, model: nn.Module, objective: nn.Module) -> torch.optim.Optimizer:
    """The main optimiser over the model and the loss terms' shared parameters (not their own-optimised ones)."""
    from reidbench.harness.train.optim import GroupRule, build_optimizer, param_groups

    own = objective.own_parameters()
    named = list(model.named_parameters()) + [(f"objective.{n}", p) for n, p in objective.named_parameters()
                                             if id(p) not in own]
    groups = dict(getattr(model, "module_groups", {}))
    rules = [GroupRule(patterns=module_globs(g.match, groups, f"optim.groups[{i}].match"), lr_scale=g.lr_scale,
                       weight_decay=g.weight_decay, name="+".join(g.match))
             for i, g in enumerate(spec.optim.groups)]
    opt = spec.optim
    options = optimizer_options(spec)
    if not rules and not spec.stages:
        # One group of the trainable parameters, exactly as before groups and stages existed.
        return build_optimizer([p for _, p in named], opt.name, opt.base_lr, opt.weight_decay, **options)
    return build_optimizer(param_groups(named, rules, opt.base_lr, opt.weight_decay), opt.name, opt.base_lr,
                           opt.weight_decay, **options)


def optimizer_options(spec: RunSpec) -> dict[str, Any]:
    """The chosen optimiser's own parameters: the section fields it reads (betas; momentum, nesterov) + the rest."""
    from reidbench.harness.spec.reads import kind_reads

    opt = spec.optim
    return {**{name: getattr(opt, name) for name in sorted(kind_reads("optim")[opt.name])}, **dict(opt.options)}


@dataclass(frozen=True)
class Built:
    components: TrainComponents
    model_info: dict[str, Any]


@dataclass
class TrainingParts:
    """What a spec builds before any data is read: the library API's ``reidbench.build`` returns it.

    ``model`` and ``objective`` (the named, weighted loss terms) on ``device``, the main
    ``optimizer`` over both (loss terms with a private optimiser, the centres, keep theirs:
    ``objective.own_optimizers()``), the LR ``scheduler`` (``granularity`` epoch: stepped once per
    epoch, its counter 0 is epoch 1; step: stepped after every optimizer step, reading where
    training is from ``progress`` — keep its ``epoch``, ``step`` and ``steps_per_epoch`` current as
    ``loop.train_one_epoch`` does), the ``stages`` (what each epoch, or step, freezes and computes), the ``progress`` that curricula read, and the AMP
    settings — exactly what ``reidbench train`` builds for the same spec and number of training
    identities.
    """

    spec: RunSpec
    model: nn.Module
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stages: StagePlan
    progress: TrainProgress
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    synced_bn_layers: tuple[str, ...] = ()

    @property
    def granularity(self) -> str:
        """``schedule.granularity``: ``epoch`` (step the scheduler once per epoch) or ``step`` (once per optimizer step)."""
        return self.spec.schedule.granularity


def build_parts(spec: RunSpec, num_classes: int, device: torch.device | str = "cpu", dist: Any = None
                ) -> TrainingParts:
    """Model, objective, optimiser, LR schedule and stage plan of ``spec`` for ``num_classes`` identities.

    No dataset is needed. The seed is set first, then the architecture is built, then the loss
    terms (their parameters, e.g. the centres, draw from the same stream): the same order as
    always, so a spec builds the same initial weights as ``train`` does. ``dist`` (a
    ``train.distributed.DistContext``) synchronises ``train.sync_bn``'s BatchNorm layers first.
    """
    from reidbench.models.architectures import build_architecture
    from reidbench.models.objective import build_objective

    device = torch.device(device)
    torch.manual_seed(spec.train.seed)  # weight init (classifier, BNNeck, centres) depends only on the seed
    model = build_architecture(spec.model, num_classes)
    progress = TrainProgress(max_epochs=spec.schedule.max_epochs, granularity=spec.schedule.granularity)
    objective = build_objective(spec.loss.terms, num_classes, model.feature_dims, progress)
    synced: list[str] = []
    if dist is not None:
        from reidbench.harness.train.distributed import check_batch_split, sync_batchnorm

        check_batch_split(spec.data.ids_per_batch, dist.world_size)
        synced = sync_batchnorm(model, spec.train.sync_bn, device)  # same parameters: done before the optimiser
    model.to(device)
    if spec.train.channels_last:  # NHWC helps on CPU too (oneDNN: ~20% for MobileNetV2 on 2 cores)
        model.to(memory_format=torch.channels_last)
    objective.to(device)
    stages = stage_plan(spec, model, objective)
    optimizer = build_optimizer_for(spec, model, objective)
    scheduler = build_lr_scheduler(optimizer, spec, stages, progress)
    amp_dtype, scaler = None, None
    if device.type == "cuda" and spec.train.amp != "off":
        amp_dtype = torch.bfloat16 if spec.train.amp == "bf16" else torch.float16
        if amp_dtype is torch.float16:
            scaler = torch.amp.GradScaler("cuda")
    return TrainingParts(spec, model, objective, optimizer, scheduler, stages, progress, amp_dtype, scaler,
                         tuple(synced))


def build_training(spec: RunSpec, train_set: Any, device: torch.device, workers: int, show_progress: bool,
                   dist: Any = None) -> Built:
    """Everything one run's training touches, built from ``spec`` for ``train_set``: ``build_parts`` + the loader.

    ``dist`` (a ``train.distributed.DistContext``, process group initialised): this rank's part of
    a distributed run — the loader yields its share of every global batch, ``train.sync_bn``'s
    BatchNorm layers are synchronised, and the model with the objective is wrapped in DDP
    (``components.step_forward``). Weights start equal on every rank: each builds from the seed.
    """
    from reidbench.harness.data.loader import build_train_loader
    from reidbench.harness.data.masks import mask_source
    from reidbench.harness.data.samplers import build_sampler

    parts = build_parts(spec, train_set.num_train_pids, device, dist)
    model, objective, optimizer, scheduler = parts.model, parts.objective, parts.optimizer, parts.scheduler
    stages, progress, amp_dtype, scaler, synced = (parts.stages, parts.progress, parts.amp_dtype, parts.scaler,
                                                   parts.synced_bn_layers)
    data = spec.data
    masks = mask_source(data.masks, train_set, progress=show_progress)
    sampler = build_sampler(data.sampler, data.sampler_options, [r.pid for r in train_set.train], data.ids_per_batch,
                            data.imgs_per_id, spec.train.seed, progress=progress)
    loader = build_train_loader(
        train_set.train, image_size=tuple(data.image_size), ids_per_batch=data.ids_per_batch,
        imgs_per_id=data.imgs_per_id, seed=spec.train.seed, flip_prob=data.flip_prob, pad_px=data.pad_px,
        random_erasing_prob=data.random_erasing_prob, num_workers=workers, cache=True,
        pin_memory=device.type == "cuda", batch_sampler=sampler, crop_scale=data.crop_scale,
        crop_aspect=data.crop_aspect, autoaug_prob=data.autoaug_prob, masks=masks,
        rank=dist.rank if dist is not None else 0, world_size=dist.world_size if dist is not None else 1,
    )
    progress.steps_per_epoch = len(loader)  # every rank's loader has as many steps: they schedule alike
    components = TrainComponents(
        model=model, objective=objective, optimizer=optimizer, scheduler=scheduler, loader=loader, device=device,
        own_optimizers=objective.own_optimizers(), amp_dtype=amp_dtype, scaler=scaler,
        channels_last=spec.train.channels_last, progress=show_progress, grad_clip_norm=spec.optim.grad_clip_norm,
        stages=stages, train_progress=progress, granularity=spec.schedule.granularity,
    )
    if dist is not None:
        from reidbench.harness.train.distributed import gather_outputs, wrap_ddp
        from reidbench.harness.train.loop import TrainForward

        # Parameters that sit out some steps (frozen, or read only by an inactive loss) need DDP's unused-parameter scan.
        freezing = (len(stages.stages) > 1 or any(frozen for _, _, _, frozen, _ in stages.stages)
                    or bool(stages.losses) or stages.warm_epochs > 0)
        components.step_forward = wrap_ddp(TrainForward(model, objective, amp_dtype, gather=gather_outputs), device,
                                           stages_change_parameters=freezing)
        components.dist = dist
    info = dict(getattr(model, "reid_info", {}) or {})
    info.setdefault("pretrained_source", None)
    info.setdefault("pretrained_digest", None)  # the weights' digest, also in the run hash
    info["test_feature"] = list((model.test_feature,) if isinstance(model.test_feature, str) else model.test_feature)
    info["feature_dims"] = dict(model.feature_dims)
    info["loss_terms"] = [b.label for b in objective.bound]
    # Terms that resolve something at build time (a curriculum's rescaled t0/t1) say what they use.
    details = {b.label: m.describe() for b, m in zip(objective.bound, objective.terms)
               if callable(getattr(m, "describe", None))}
    if details:
        info["loss_term_details"] = details
    if dist is not None:
        info["sync_bn_layers"] = len(synced)  # recorded, never hashed
    if masks is not None:
        from reidbench.harness.data.masks import masks_identity

        info["masks"] = {**masks.describe(), "identity": masks_identity(data.masks)}
    return Built(components, info)
