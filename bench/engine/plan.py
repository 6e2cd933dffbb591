"""Planning: a suite bound to its data, checked before anything is written.

Planning loads every task the suite needs, refuses tasks that cannot give meaningful
results, binds each run to the data its task loaded (so keys change when files change),
refuses a method on a task it says it cannot handle, and checks every method against an
untrained model.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fairsqueeze.core.errors import ConfigError, DatasetMissing
from fairsqueeze.core.registry import create_method
from fairsqueeze.engine.reference import build_untrained
from fairsqueeze.methods.base import TaskInfo
from fairsqueeze.spec.entries import RunSpec, Suite
from fairsqueeze.datasets.base import TaskData, build_task, check_task

log = logging.getLogger("fairsqueeze")


def task_label(entry_name: str, options: dict, task: TaskData) -> str:
    """A table title naming the task's identity: dataset, target / sensitive, other options."""
    rest = {k: v for k, v in sorted(options.items()) if k not in ("target", "sensitive")}
    extra = f" ({', '.join(f'{k}={v}' for k, v in rest.items())})" if rest else ""
    return f"{entry_name}: {task.target} / {task.sensitive}{extra}"


@dataclass
class Plan:
    """A suite bound to its data: the runs with their keys and the tasks they need."""

    suite: Suite
    runs: list[RunSpec]
    tasks: dict[str, TaskData]  # task instance key (RunSpec.task_instance) -> loaded task
    labels: dict[str, str]  # task entry key -> table title
    missing_tasks: list[str] = field(default_factory=list)
    studies: list[RunSpec] = field(default_factory=list)  # tuned entries: one study each (see worker.py)

    def member_rows(self, runs: list[RunSpec]) -> list[dict]:
        """Membership rows (suite entry -> run key) of ``runs``."""
        return [{"task_key": r.task.key, "model": r.model.label, "label": r.method.label, "seed": r.seed,
                 "run_key": r.key, "entry": r.method.entry, "entry_label": r.method.entry_label,
                 "sweep": r.method.sweep} for r in runs]

    @property
    def skipped_tasks(self) -> set[str]:
        """Task keys of the suite that this plan could not load (their membership is kept)."""
        return {t.key for t in self.suite.tasks if t.key not in self.labels}

    def entry_tasks(self) -> dict[str, TaskData]:
        """One loaded task per task entry (the first seed's where the split is drawn per seed):
        what the store describes under the entry's key."""
        return {t.key: self.tasks[t.instance_key(self.suite.seeds[0])] for t in {t.key: t for t in self.suite.tasks}.values()
                if t.key in self.labels}


def plan_suite(suite: Suite, data_root: Path, skip_missing_data: bool = False) -> Plan:
    """Load and check everything the suite needs; raises FairsqueezeError before any write."""
    tasks, labels, missing = {}, {}, []
    for entry in {t.key: t for t in suite.tasks}.values():
        # one split per entry, or one per seed (split_seed: per_seed)
        seeds = suite.seeds if entry.per_seed else suite.seeds[:1]
        try:
            loaded = {entry.instance_key(seed): build_task(entry.name, data_root, **entry.options_for(seed))
                      for seed in seeds}
        except DatasetMissing as exc:
            if not skip_missing_data:
                raise
            log.warning("skipping %s", exc)
            missing.append(entry.name)
            continue
        for task in loaded.values():
            check_task(task, entry.label)
        tasks.update(loaded)
        labels[entry.key] = task_label(entry.name, entry.options, next(iter(loaded.values())))
    runs = [spec.bind(tasks[spec.task_instance].fingerprint) for spec in suite.runs() if spec.task.key in labels]
    studies = [spec.bind(tasks[spec.task_instance].fingerprint) for spec in suite.studies() if spec.task.key in labels]
    by_model: dict[tuple[str, str], list[RunSpec]] = defaultdict(list)
    for spec in runs + studies:
        by_model[(spec.task.key, spec.model.label)].append(spec)
    refuse_unsupported(suite.source, runs + studies, tasks, labels)
    for specs in by_model.values():  # parameters that do not fit the model (e.g. k above a layer's rank)
        task = tasks[specs[0].task_instance]
        model = build_untrained(specs[0], task)
        if task.num_classes != 2 and any(s.method.post for s in specs):
            post = next(s.method for s in specs if s.method.post)
            raise ConfigError(f"{suite.source}: method {post.label!r} on {specs[0].task.label}: {post.post!r} needs a"
                              f" binary task ({task.num_classes} classes)")
        for method in {s.method.label: s.method for s in specs}.values():
            try:
                create_method(method.name, method.params).check_model(model)
            except ConfigError as exc:
                raise ConfigError(f"{suite.source}: method {method.label!r} on {specs[0].model.label}: {exc}") from None
    return Plan(suite, runs, tasks, labels, missing, studies)


def refuse_unsupported(source: str, specs: list[RunSpec], tasks: dict[str, TaskData], labels: dict[str, str]) -> None:
    """Raise ConfigError, in one line naming the entry, the task and the method's reason, for a
    method that says it cannot run on a task of the suite (``Method.supports``)."""
    infos = {key: TaskInfo.of(task) for key, task in tasks.items()}
    for spec in {(s.task.key, s.method.label): s for s in specs}.values():
        reason = create_method(spec.method.name, spec.method.params).supports(infos[spec.task_instance])
        if reason:
            raise ConfigError(f"{source}: method {spec.method.label!r} cannot run on task {labels[spec.task.key]}: {reason}")


def suite_definition(suite: Suite) -> dict:
    """What the suite asked for, as stored beside its results."""
    return {
        "seeds": list(suite.seeds),
        "tasks": [{"name": t.name, "options": t.options} for t in suite.tasks],
        "models": [{"name": m.name, "options": m.options, "train": asdict(m.train), "tasks": m.tasks}
                   for m in suite.models],
        "methods": [{"name": m.name, "label": m.label, "params": m.params, "entry": m.entry,
                     "entry_label": m.entry_label, "sweep": m.sweep, "tune": m.tune and asdict(m.tune),
                     **({"protect": m.protect} if m.protect else {}), **({"post": m.post} if m.post else {})}
                    for m in suite.methods],
    }
