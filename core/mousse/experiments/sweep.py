"""An ablation directory: its plan (`ablation.toml`), one run dir per run under `runs/`, the
tuning the results on disk decide, and results.json, rewritten after every run. Finished runs are
skipped and interrupted ones resumed; `runner` trains the rest, optionally K runs at a time in
worker processes."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from mousse.distributed.process import is_main_process
from mousse.train import tomlio
from mousse.train.config import ConfigError, TrainConfig, coerce, parse_budgets, resolve
from mousse.train.data import check_fits, load_dataset
from mousse.train.estimate import counted
from mousse.train.fileio import atomic_write_text, write_json
from mousse.train.rundir import FINISHED, exclusive
from mousse.train.summary import RunSummary, TimingContext, read_summary

from .ablation import PLAN_ID, AblationPlan, RunSpec, in_shard
from .inputs import SETTING_CHOICES
from .records import RunRecord, final_loss, read_budget_from, record, with_split
from .results import Results, TuningColumns, apply_timing_pass, summarize
from .runner import Job, train_runs
from .settings import Settings, Value, settings_of
from .timing import (
    TIMING_FILE,
    TimingRecord,
    default_budget,
    read_timing_record,
    summarize_rounds,
    timing_pass,
)
from .tuning import (
    Tuned,
    TuneSpec,
    TuningState,
    needed_by_budget,
    run_label,
    same_runs,
    tune_by_budget,
    tune_variant,
)

NAME_MAX = 255  # bytes in a file name (ext4, XFS, APFS); run dirs are named after their runs
TUNED_SUFFIX = 64  # room a tuned run's '@knob=value+...' label may add
PLAN_LOCK = ".plan.lock"  # held while ablation.toml is checked and written
# what an ablation dir may hold besides its ablation.toml (moved away, its runs start afresh)
ABLATION_FILES = {PLAN_LOCK, "runs", "results.json", TIMING_FILE, "tb", "wandb"}


def read_plan(plan_file: Path, fix: str) -> AblationPlan:
    """The plan an ablation.toml records; a damaged one (not TOML, not UTF-8, a field of the
    wrong type) is a ConfigError naming it and `fix`."""
    try:
        return AblationPlan.from_dict(tomlio.load(plan_file))
    except (tomlio.TOMLDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{plan_file} is damaged ({exc}); {fix}") from None


def _tuning_columns(state: TuningState) -> TuningColumns:
    """A variant's tuning in its results row: the tuned values once done, the knobs tuned at a
    grid edge, and every phase's record."""
    return {
        "tuned": state.tuned if state.done else None,
        "tuned_at_edge": state.at_edge,
        "tuning": [p.to_dict() for p in state.phases],
    }


def _shared_seeds(plan: AblationPlan) -> list[int]:
    """The seeds a plan both tunes and compares on (only plans made before tuning seeds were
    kept apart have any)."""
    return sorted(set((plan.tune or {}).get("seeds", ())) & set(plan.seeds))


def _tuned_on_compared(saved: AblationPlan) -> str | None:
    """Why a dir's plan from before tuning seeds were kept apart is not this command's: it
    tuned on comparison seeds (`mousse report` still reads it)."""
    shared = _shared_seeds(saved)
    if not shared:
        return None
    return (
        f"it tunes on seeds {shared}, which it also compares on, as ablations did before "
        "tuning seeds were kept apart; `mousse report` still reads it"
    )


def continued_dir(default: Path, plans: Mapping[str | None, AblationPlan]) -> Path:
    """Where a command without --ablation-dir trains: its plans' default dir (named after their
    hash, which counts the seeds), or while that does not exist, a sibling of the same name but
    for the hash whose plans these add seeds to (`AblationPlan.adds_seeds_to`: the same command
    with more --seeds or --tune-seeds), so that the rerun continues it rather than training
    every run again in a new dir. Of several, the one with the most seeds; `plans` are keyed by
    preset (None: the dir holds one plan, no per-preset subdirs)."""
    if default.exists():
        return default
    pattern = re.compile(re.escape(default.name[:-PLAN_ID]) + f"[0-9a-f]{{{PLAN_ID}}}")

    def seeds_of(candidate: Path) -> int | None:
        """How many seeds the candidate's plans hold, or None unless these plans extend them."""
        count = 0
        for preset, plan in plans.items():
            plan_file = (candidate if preset is None else candidate / preset) / "ablation.toml"
            try:
                saved = read_plan(plan_file, "")
            except (OSError, ConfigError):
                return None  # not an ablation dir of this shape: not a continuation
            if not plan.adds_seeds_to(saved):
                return None
            count += len(saved.seeds) + len((saved.tune or {}).get("seeds", []))
        return count

    found = [
        (n, c.stat().st_mtime, c)
        for c in (default.parent.iterdir() if default.parent.is_dir() else ())
        if pattern.fullmatch(c.name) and (n := seeds_of(c)) is not None
    ]
    return max(found, key=lambda f: f[:2])[2] if found else default


@dataclass(frozen=True)
class RunSkipped:
    """A run that had already finished in this ablation dir."""

    run: str
    summary: RunSummary


@dataclass(frozen=True)
class RunsQueued:
    """Runs the ablation will train next (tuning adds them phase by phase)."""

    runs: list[RunSpec]


@dataclass(frozen=True)
class WaitingForShards:
    """This shard has nothing left it may run; these runs of other shards must finish first."""

    runs: list[RunSpec]


def check_ablation_dir(path: Path, marker: str, own: set[str]) -> None:
    """Refuse (ConfigError, before the plan is shown) an --ablation-dir that is a file, lies
    inside one, or, without its `marker` file, holds anything but the entries `own`: a train
    run's dir or a user's files, which `train` would refuse as a run dir too."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--ablation-dir {path} is a file; pass a directory")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(
            f"--ablation-dir {path} lies inside the file {ancestor}; pass a directory"
        )
    if path.is_dir() and not (path / marker).exists():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in own)
        if foreign:
            raise ConfigError(
                f"--ablation-dir {path} holds files that are not an ablation's "
                f"({', '.join(foreign[:3])}); pass an empty or new --ablation-dir"
            )


def plan_budgets(base: Settings) -> list[float] | None:
    """The budgets each run of a plan yields (`--budgets`: a list, or '0.25,0.5,1'), ascending;
    None without them; a ConfigError, as `train` gives, for a value that is not budgets (a
    spec's `budgets = "abc"` or `true`)."""
    value = base.get("budgets")
    if value is None:
        return None
    return list(parse_budgets(coerce("budgets", value)))


class Ablation:
    """One ablation directory: its plan, run dirs and results."""

    def __init__(self, plan: AblationPlan, ablation_dir: Path):
        self.plan = plan
        self.dir = Path(ablation_dir)
        self.tune = TuneSpec.from_dict(plan.tune) if plan.tune else None
        self.budgets = plan_budgets(plan.base)  # each run's budgets; None: one loss per run
        self.invocation = uuid.uuid4().hex[:12]  # labels the timings this process takes
        self.trained = False  # whether this process trained any run here
        self.busy: set[str] = set()  # runs found locked by another process
        self.devices: list[str] | None = None  # GPUs the --parallel workers go to, round-robin

    def run_dir(self, run: RunSpec) -> Path:
        """Where `run` trains: runs/<its name> under the ablation dir, or for the first seed's
        run of a variant, the dir named after the variant alone where that exists: this plan
        added seeds to one of a single seed, whose runs' names had no '-s<seed>'."""
        path = self.dir / "runs" / run.name
        if run.seed == self.plan.seeds[0] and run.name == f"{run.variant}-s{run.seed}":
            single = path.with_name(run.variant)
            if not path.exists() and single.is_dir():
                return single
        return path

    def validate(self) -> None:
        """Check every run's settings and data, and that the dir holds no other plan; writes
        nothing, so bad input fails before anything runs."""
        check_ablation_dir(self.dir, "ablation.toml", ABLATION_FILES)
        self._check_plan_file()
        longest = max(self.plan.runs, key=lambda r: len(r.name.encode()))
        room = NAME_MAX - (TUNED_SUFFIX if self.tune else 0)
        if len(longest.name.encode()) > room:
            raise ConfigError(
                f"run name {longest.name[:60]}... is {len(longest.name.encode())} "
                f"bytes, more than a file name may hold here ({room}); sweep fewer "
                "knobs at once (or use --grid less)"
            )
        configs = [resolve(self.plan.settings(run)) for run in self.plan.runs]
        keys = [(c.data, c.val_data, c.split) for c in configs]
        datasets = {key: load_dataset(*key) for key in dict.fromkeys(keys)}
        for c, key in zip(configs, keys, strict=True):  # every run's batches fit its data,
            # before ablation.toml is written
            check_fits(datasets[key], c.batch_size, c.micro_batch_size, c.seq_len, c.seed)

    def _check_plan_file(self) -> None:
        """ConfigError unless the dir's ablation.toml, if any, records this plan or this plan
        with fewer seeds (its checkpointing and logging settings aside: `prepare` records this
        run's)."""
        plan_file = self.dir / "ablation.toml"
        if plan_file.exists():
            saved = read_plan(
                plan_file,
                "move it away to start this ablation afresh in the same dir, or pass another "
                "--ablation-dir",
            )
            if saved.defining() != self.plan.defining() and not self.plan.adds_seeds_to(saved):
                change = self.plan.setting_change(saved) or _tuned_on_compared(saved)
                raise ConfigError(
                    f"{self.dir} holds a different ablation plan"
                    + (f" ({change})" if change else "")
                    + "; rerun the original command (it may add seeds: --seeds 5 after 3, "
                    "--tune-seeds 2 after 1), or pass another --ablation-dir"
                )

    def prepare(self) -> None:
        """Create the dir and record the plan (after `validate`; under torchrun rank 0 only),
        checked again under the dir's lock: another ablate started meanwhile with another plan
        is refused, never overwritten."""
        if is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            with exclusive(self.dir / PLAN_LOCK):
                self._check_plan_file()
                atomic_write_text(self.dir / "ablation.toml", tomlio.dumps(self.plan.to_dict()))

    # ---- tuning -----------------------------------------------------------------------------

    def centre(self, variant: RunSpec) -> dict[str, Value | None]:
        """The variant's own value of each tuned knob (its default grid's centre), as frozen in
        the plan when it was made (plans from before that: resolved from today's presets)."""
        frozen = (self.plan.tune or {}).get("centres", {}).get(variant.variant)
        if frozen is not None:
            return dict(frozen)
        cfg = resolve(self.plan.settings(variant))
        assert self.tune is not None  # asked only of a plan that tunes
        return {k: getattr(cfg, k) for k in self.tune.knobs}

    def tune_for(self, variant: RunSpec) -> TuneSpec:
        """The tuning a variant gets: every phase but those of knobs the variant sets itself (a
        `momentum_style=nesterov` variant keeps Nesterov while the others tune the style)."""
        assert self.tune is not None  # asked only of a plan that tunes
        phases = tuple((k, v) for k, v in self.tune.phases if k not in variant.knobs)
        return replace(self.tune, phases=phases)

    def tuned_run(self, variant: RunSpec, values: Tuned, seed: int) -> RunSpec:
        """The run of `variant` at the tuned knobs' `values` on `seed`, named after them: after
        the shortest values that give the same run (`same_runs`), so no phase trains a run again,
        unless a longer name's run dir exists (one an ablation dir from before this kept)."""
        specs = [
            RunSpec(
                f"{run_label(variant.variant, same)}-s{seed}",
                variant.variant,
                settings_of([*variant.knobs.items(), *same.items()]),
                seed,
                variant.is_baseline,
            )
            for same in same_runs(values, self.centre(variant))
        ]
        return next((r for r in specs if self.run_dir(r).is_dir()), specs[-1])

    def tuning(self) -> dict[str, TuningState]:
        """Every variant's tuning as far as the results on disk decide it (with budgets: at the
        largest, each run's full length)."""
        if self.budgets:
            return self.budget_tuning()[self.budgets[-1]]
        states = {}
        for name, variant in self.plan.variants.items():

            def lookup(values: Tuned, seed: int, variant: RunSpec = variant) -> float | None:
                return final_loss(read_summary(self.run_dir(self.tuned_run(variant, values, seed))))

            states[name] = tune_variant(
                name, self.centre(variant), self.tune_for(variant), lookup, SETTING_CHOICES
            )
        return states

    def budget_tuning(self) -> dict[float, dict[str, TuningState]]:
        """With budgets: every variant's tuning at each budget, chosen from the same tuning
        runs (`tuning.tune_by_budget`), as {budget: {variant: state}}."""
        assert self.budgets  # asked only of a plan with budgets
        out: dict[float, dict[str, TuningState]] = {b: {} for b in self.budgets}
        summaries: dict[str, RunSummary | None] = {}  # each run dir read once
        for name, variant in self.plan.variants.items():

            def summary_of(
                values: Tuned, seed: int, variant: RunSpec = variant
            ) -> RunSummary | None:
                run_dir = self.run_dir(self.tuned_run(variant, values, seed))
                if run_dir.name not in summaries:
                    summaries[run_dir.name] = read_summary(run_dir)
                return summaries[run_dir.name]

            states = tune_by_budget(
                name,
                self.centre(variant),
                self.tune_for(variant),
                summary_of,
                SETTING_CHOICES,
                self.budgets,
            )
            for budget, state in states.items():
                out[budget][name] = state
        return out

    def budget_runs(
        self, budget: float, by_budget: dict[float, dict[str, TuningState]] | None = None
    ) -> list[RunSpec]:
        """The comparison's runs that `budget`'s results are read from: each variant and seed at
        that budget's tuned values once its tuning there is done (the plan's run until then).
        A comparison run shares one lr over all its budgets: when the budgets' choices differ,
        each distinct choice is a run of its own, and each budget reads the run at its own
        choice; budgets that chose alike share their runs."""
        states = (by_budget or self.budget_tuning())[budget]
        return [
            self.tuned_run(run, states[run.variant].tuned, run.seed)
            if states[run.variant].done
            else run
            for run in self.plan.runs
        ]

    def grids(self) -> dict[str, list[tuple[str, list[Value]]]]:
        """Each variant's (knob, starting grid) per phase of its tuning."""
        return {name: self._grids(variant) for name, variant in self.plan.variants.items()}

    def _grids(self, variant: RunSpec) -> list[tuple[str, list[Value]]]:
        """One variant's (knob, starting grid) per phase (`grids`)."""
        from .tuning import start_grid

        centre = self.centre(variant)
        return [
            (k, start_grid(k, values, centre.get(k), SETTING_CHOICES))
            for k, values in self.tune_for(variant).phases
        ]

    def progress(self) -> str:
        """'4 of 30 runs done', or while tuning decides what to run '4 of at most 69 runs done':
        the plan's runs in the dir that finished (every shard's, and earlier invocations')
        against all the plan takes (`tally`)."""
        done, total, exact = self.tally()
        return f"{done} of {'' if exact else 'at most '}{counted(total, 'run')} done"

    def run_count(self) -> tuple[int, bool]:
        """(runs, exact): all the plan takes (`tally`)."""
        _, total, exact = self.tally()
        return total, exact

    def tally(self) -> tuple[int, int, bool]:
        """(done, runs, exact): of the runs the plan uses so far (each variant's tuning runs as
        far as its tuning got, and its comparison runs), those that finished; and all the plan
        takes. That is exact without tuning or once every tuning is decided; until then each
        variant whose tuning is decided (at every budget) counts the runs it trains, and each
        other one its upper bound. Runs in the dir the plan no longer uses (the comparison at
        a choice more tuning seeds overturned) are not counted."""
        if self.tune is None:
            return (
                len(self.plan.runs) - len(self.pending(self.plan.runs)),
                len(self.plan.runs),
                True,
            )
        if self.budgets:
            by_budget = self.budget_tuning()
            states = {n: [by_budget[b][n] for b in self.budgets] for n in self.plan.variants}
            finals = [r for b in self.budgets for r in self.budget_runs(b, by_budget)]
        else:
            tuning = self.tuning()
            states = {n: [s] for n, s in tuning.items()}
            finals = self.final_runs(tuning)
        used = {name: self._used_runs(name, s, finals) for name, s in states.items()}
        total = sum(
            len(used[name]) if all(x.done for x in s) else self._variant_bound(name)
            for name, s in states.items()
        )
        runs = [r for by_variant in used.values() for r in by_variant]
        exact = all(x.done for s in states.values() for x in s)
        return len(runs) - len(self.pending(runs)), total, exact

    def _used_runs(
        self, name: str, states: list[TuningState], finals: list[RunSpec]
    ) -> set[RunSpec]:
        """The runs a variant uses so far: every phase's grid on the tuning seeds as far as its
        tuning got (at each budget's choices of the phases before it), and its comparison runs;
        once its tuning is decided, all it trains."""
        variant = self.plan.variants[name]
        seeds = self.tune_for(variant).seeds
        runs = {r for r in finals if r.variant == name}
        for state in states:
            chosen: Tuned = {}
            for phase in state.phases:
                runs |= {
                    self.tuned_run(variant, {**chosen, phase.knob: value}, seed)
                    for value in phase.grid
                    for seed in seeds
                }
                if phase.chosen is None:  # later phases have not started
                    break
                chosen[phase.knob] = phase.chosen
        return runs

    def upper_bound_runs(self) -> int:
        """Most runs the plan can train: tuning (grid extensions included) plus the comparison's
        runs on seeds that are not tuning seeds."""
        if self.tune is None:
            return len(self.plan.runs)
        return sum(self._variant_bound(name) for name in self.plan.variants)

    def _variant_bound(self, name: str) -> int:
        """Most runs one variant of a tuned plan can train (`upper_bound_runs`)."""
        from .tuning import upper_bound_runs

        assert self.tune is not None  # asked only of a plan that tunes
        variant = self.plan.variants[name]
        tune, centre = self.tune_for(variant), self.centre(variant)
        budgets = len(self.budgets or [None])
        grids = [grid for _, grid in self._grids(variant)]
        # with budgets, a variant and seed may run once per budget (each at its own choice)
        comparison = len([s for s in self.plan.seeds if s not in self.tune.seeds]) * budgets
        return upper_bound_runs(tune, grids, centre, budgets) + comparison

    def variant_configs(self) -> list[TrainConfig]:
        """Each variant's resolved config (its first run's), for cost estimates."""
        return [resolve(self.plan.settings(run)) for run in self.plan.variants.values()]

    def _finished(self) -> list[RunSummary]:
        """Summaries of the runs already finished in this dir."""
        root = self.dir / "runs"
        summaries = [read_summary(f.parent) for f in sorted(root.glob("*/summary.json"))]
        return [
            s for s in summaries if s and s.get("status") in FINISHED and s.get("train_seconds")
        ]

    def finished_seconds(self) -> list[float]:
        """Training seconds of the runs already finished in this dir."""
        return [float(s["train_seconds"]) for s in self._finished()]

    def time_left(self) -> tuple[float, int, int, bool] | None:
        """(seconds, runs, finished runs, exact): the runs still to train (`tally`: all the plan
        takes less its runs done; exact, or at most) at the pace of the runs finished here, each
        run's training, evaluation and checkpoint seconds shared among the runs it ran beside
        (--parallel); None before any run finished."""
        finished = self._finished()
        if not finished:
            return None
        pace = [
            sum(
                float(seconds or 0)
                for seconds in (
                    s.get("train_seconds"),
                    s.get("eval_seconds"),
                    s.get("checkpoint_seconds"),
                )
            )
            / max(1, s.get("timing_context", {}).get("parallel") or 1)
            for s in finished
        ]
        done, total, exact = self.tally()
        runs = max(0, total - done)
        return runs * sum(pace) / len(pace), runs, len(finished), exact

    def final_runs(self, states: dict[str, TuningState] | None = None) -> list[RunSpec]:
        """The comparison's runs: each variant at its tuned values once its tuning is done (the
        plan's own runs without tuning); with budgets, those of every budget, each once."""
        if self.tune is None:
            return list(self.plan.runs)
        if self.budgets:
            by_budget = self.budget_tuning()
            runs = [r for b in self.budgets for r in self.budget_runs(b, by_budget)]
            return list(dict.fromkeys(runs))
        states = states or self.tuning()
        return [
            self.tuned_run(run, states[run.variant].tuned, run.seed)
            if states[run.variant].done
            else run
            for run in self.plan.runs
        ]

    def wanted(self) -> list[RunSpec]:
        """What the ablation needs trained now: the plan's runs, or with tuning each variant's
        current phase and, for tuned variants, the comparison's runs; without those finished."""
        if self.tune is None:
            return self.pending(self.plan.runs)
        runs = [
            self.tuned_run(self.plan.variants[name], values, seed)
            for name, needed in self._tuning_needed().items()
            for values, seed in needed
        ]
        runs += [r for r in self.final_runs() if r not in self.plan.runs]  # the tuned ones
        return self.pending(list(dict.fromkeys(runs)))

    def _tuning_needed(self) -> dict[str, list[tuple[Tuned, int]]]:
        """Per variant, the (tuned values, seed) runs its tuning needs now (with budgets, those
        of any budget's)."""
        if not self.budgets:
            return {name: state.needed for name, state in self.tuning().items()}
        by_budget = self.budget_tuning()
        return {
            name: needed_by_budget({b: by_budget[b][name] for b in self.budgets})
            for name in self.plan.variants
        }

    # ---- results ----------------------------------------------------------------------------

    def records(self, states: dict[str, TuningState] | None = None) -> list[RunRecord]:
        """The run records of the comparison's runs, as far as they got (`with_split`: the split
        of runs from before summaries said it). With tuned budgets: those at the largest
        budget's tuned values (each run's full length), each smaller budget's entry read from
        the run at that budget's own choice (`budget_runs`)."""
        if not (self.tune and self.budgets):
            return [
                self._record(run, read_summary(self.run_dir(run)))
                for run in self.final_runs(states)
            ]
        by_budget = self.budget_tuning()
        summaries: dict[str, RunSummary | None] = {}

        def summary(run: RunSpec) -> RunSummary | None:
            if run.name not in summaries:
                summaries[run.name] = read_summary(self.run_dir(run))
            return summaries[run.name]

        runs = self.budget_runs(self.budgets[-1], by_budget)
        rows = [self._record(run, summary(run)) for run in runs]
        for budget in self.budgets[:-1]:
            for row, run in zip(rows, self.budget_runs(budget, by_budget), strict=True):
                if run.name != row["name"]:
                    read_budget_from(row, budget, run.name, summary(run))
        return rows

    def _record(self, run: RunSpec, summary: RunSummary | None) -> RunRecord:
        """The run record of `run` (`records.record`, `with_split`)."""
        return with_split(record(run, summary), self.plan.settings(run))

    def results(self, against: str | None = None) -> Results:
        """The results object of what is on disk, with the protocol, the last timing pass and
        each variant's tuning; every variant compared with the plan's baseline, or with the
        variant `against` (ConfigError when the plan has none of that name)."""
        baseline = next((r.variant for r in self.plan.runs if r.is_baseline), None)
        if against is not None:
            variants = list(dict.fromkeys(r.variant for r in self.plan.runs))
            if against not in variants:
                raise ConfigError(
                    f"bad --against {against!r}: not a variant of {self.dir}; choose one of "
                    + ", ".join(variants)
                )
            baseline = against
        states = self.tuning() if self.tune else None
        out = summarize(self.records(states), baseline)
        out["ablation_dir"] = str(self.dir)
        out["protocol"] = {
            "tuned": self.tune.knobs if self.tune else [],
            "tune_seeds": list(self.tune.seeds) if self.tune else [],
            "seeds": list(self.plan.seeds),
            "tune_seeds_apart": None if self.tune is None else not _shared_seeds(self.plan),
        }
        out = apply_timing_pass(out, self.read_timing(out))
        if states:
            for v in out["variants"]:
                columns = _tuning_columns(states[v["variant"]])
                v["tuned"], v["tuned_at_edge"] = columns["tuned"], columns["tuned_at_edge"]
                v["tuning"] = columns["tuning"]
        if states and self.budgets:
            by_budget = self.budget_tuning()
            for v in out["variants"]:
                v["tuned_by_budget"] = [
                    {"budget": b, **_tuning_columns(by_budget[b][v["variant"]])}
                    for b in self.budgets
                ]
        return out

    def read_timing(self, results: Results) -> TimingRecord | None:
        """The last timing pass, when it covers every variant of the results; its overheads
        against the results' baseline (recomputed from its rounds for `results(against=...)`)."""
        record = read_timing_record(self.dir / TIMING_FILE)
        if record is None:
            return None
        names = {v["variant"] for v in results["variants"] if v["n"]}
        if not names <= set(record["variants"]):
            return None
        base = results["baseline"]
        if base and record["baseline"] != base and base in record["round_ms"]:
            record = {
                **record,
                "baseline": base,
                "variants": summarize_rounds(record["round_ms"], base),
            }
        return record

    def timing_settings(self) -> dict[str, Settings]:
        """Each variant's run settings for the timing pass: those of its first completed
        comparison run (tuned values included)."""
        out = {}
        for run in self.final_runs():
            summary = read_summary(self.run_dir(run))
            if run.variant not in out and summary and summary.get("status") == "completed":
                out[run.variant] = self.plan.settings(run)
        return out

    def retime(self, budget_s: float | None = None) -> TimingRecord | None:
        """Time every completed variant side by side (`experiments.timing`) and keep the record
        in timing.json; None when fewer than two variants have completed runs."""
        settings = self.timing_settings()
        if len(settings) < 2:
            return None
        baseline = next((r.variant for r in self.plan.runs if r.is_baseline), None)
        budget = budget_s if budget_s is not None else default_budget(sum(self.finished_seconds()))
        record = timing_pass(settings, baseline if baseline in settings else None, budget)
        if is_main_process():
            write_json(self.dir / TIMING_FILE, record)
        return record

    def write_results(self) -> Results:
        """The results, also written to results.json."""
        results = self.results()
        if is_main_process():  # under torchrun every rank runs every run; rank 0 writes
            write_json(self.dir / "results.json", results)
        return results

    def pending(self, runs: list[RunSpec]) -> list[RunSpec]:
        """`runs` without those that finished (a failed run counts as finished when tuning: it
        scores as infinitely bad and is not retried)."""
        finished = (*FINISHED, "failed") if self.tune else FINISHED
        return [
            r
            for r in runs
            if (s := read_summary(self.run_dir(r))) is None or s["status"] not in finished
        ]

    def run(
        self,
        runs: list[RunSpec],
        on_update: Callable[[object], None],
        parallel: int = 1,
        stop: threading.Event | None = None,
    ) -> Results:
        """Run what is not finished of `runs` (a shard of the plan, or all of it)."""
        stop = stop or threading.Event()
        todo = self.pending(runs)
        for run in runs:
            if run not in todo:
                summary = read_summary(self.run_dir(run))
                assert summary is not None  # a finished run's (`pending` kept the others)
                on_update(RunSkipped(run.name, summary))
        self._train(todo, on_update, parallel, stop)
        return self.write_results()

    def run_tuned(
        self,
        on_update: Callable[[object], None],
        parallel: int = 1,
        stop: threading.Event | None = None,
        shard: tuple[int, int] | None = None,
        wait: float | None = None,
    ) -> tuple[Results, list[RunSpec]]:
        """Tune every variant and run the comparison, phase by phase, until nothing is left that
        this shard may run. Returns the results and the runs of other shards still needed (this
        shard waits for them, polling every `wait` seconds, when `wait` is given)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            wanted = self.wanted()
            mine = [
                r
                for r in wanted
                if (shard is None or in_shard(r.name, shard)) and r.name not in self.busy
            ]
            if mine:
                on_update(RunsQueued(mine))
                self._train(mine, on_update, parallel, stop)
                continue
            if not wanted or wait is None:
                break
            on_update(WaitingForShards(wanted))
            stop.wait(wait)
        return self.write_results(), ([] if stop.is_set() else self.wanted())

    def context(self, parallel: int) -> TimingContext:
        """Where a run's timings are taken: this invocation, and how many runs shared the
        machine with it (--parallel)."""
        return {"invocation": self.invocation, "parallel": parallel}

    def _train(
        self,
        todo: list[RunSpec],
        on_update: Callable[[object], None],
        parallel: int,
        stop: threading.Event,
    ) -> None:
        """Train `todo` (see `runner.train_runs`), rewriting results.json as each run ends."""
        self.trained = self.trained or bool(todo)
        jobs = [Job(run.name, self.plan.settings(run), self.run_dir(run)) for run in todo]
        context = self.context(max(parallel, 1))
        train_runs(
            jobs, on_update, parallel, stop, context, self.write_results, self.busy, self.devices
        )
