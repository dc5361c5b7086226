"""Training for a time instead of a step count (`train_hf.py --time_budget MINUTES`).

The whole run (imports, tokenizer, tokenization, compilation, training, the evaluations, the final evaluation on
the whole validation set, samples and saving) ends within the budget, and its learning-rate schedule ends where
training ends, never cut off midway. How: the number of steps is planned from measurements taken during the run
itself (seconds per training step, seconds per evaluated block, the time the samples take), and re-planned at
every step until the schedule starts to depend on it: at the end of the warm-up for schedules that decay from
there (cosine, linear), at the start of the decay for warmup-stable-decay, whose stable phase is flat, and in any
case not before 15% of the steps, when the speed has settled. Then the plan is fixed: it is logged, saved in the
checkpoints (with the scheduler's state: a resumed run finishes the plan of its checkpoint, fixed or not yet, and
neither measures nor re-plans) and shown by the progress bar. From then on
it follows the speed (a shared machine's moves by 10-20%): every 10 steps it is fitted again to the median of
the last 50 steps, and if the machine slowed down the steps that no longer fit are taken off the end, if it sped
up by more than 1% steps are added; the rest of the schedule follows the new end (the decay steepens or
flattens a little), so the run ends in time with its schedule complete and the budget used.

`Schedule` is the learning-rate factor of every run (timed or not): transformers' schedules (`get_scheduler`),
rebuilt when the planned step count changes. For warmup_stable_decay, `lr_scheduler_kwargs` may give the decay
as a share of the steps, {"decay_ratio": 0.2}, instead of transformers' absolute `num_decay_steps`.

A `TimeBudget` owns the Schedule it plans and is attached to a trainer with one call, `budget.attach(trainer)`:
the trainer then trains by that schedule, the budget measures and plans from Trainer's callback events (the
evaluation's cost from the `eval_runtime` metric, so the callbacks may run in any order), and the progress bar
shows the plan.
"""

import functools
import json
import math
import os
import statistics
import time

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback, get_scheduler
from transformers.trainer_callback import ProgressCallback

from .ranks import decided_by_rank_zero, is_deciding_process, processes
from .throughput import StepTimer

# Schedules whose learning rate after the warm-up depends on the total number of steps.
_DECAY_AFTER_WARMUP = {"linear", "cosine", "cosine_with_restarts", "polynomial", "cosine_with_min_lr",
                       "cosine_warmup_with_min_lr"}
SAFETY = 0.985  # share of the remaining time that is planned; the rest absorbs noise
# The plan is fixed no earlier than this share of the steps into the run: a fresh process runs its first steps
# slower (measured: 1.63 s per step over the first 30 steps, 1.30 s after), and a cosine barely moves from its
# peak over the first 15% (a factor 0.95 there), so waiting costs nothing.
SETTLED = 0.15
GROW = 1.01  # a fixed plan grows only for more than 1% more steps: noise in the step times does not move it
# Trainer's max_steps while a budget without --max_steps plans the run (transformers has no "until a callback
# stops" setting; a dataset without a length needs a step count when Trainer is built): Trainer reads it to size
# its loop, then the budget puts the user's value (-1, unset) back, so no saved file records it.
UNBOUNDED_STEPS = 10_000_000


def process_start_time() -> float:
    """When this process started (wall clock), so interpreter start-up and imports count too (Linux; elsewhere
    the time this module was imported)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return time.time() - float(uptime.read().split()[0]) + started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


@functools.lru_cache(maxsize=64)
def _library_factor(name: str, warmup: int, total: int, kwargs_json: str):
    """The learning-rate factor function of transformers' schedule `name` for these step counts."""
    # Missing hook: transformers exposes its schedules only as LambdaLR objects over an optimizer (get_scheduler);
    # the factor functions inside are private (_get_*_lr_lambda). A one-parameter optimizer that nothing steps
    # carries them out, so a re-planned step count needs no new scheduler on the real optimizer.
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    kwargs = json.loads(kwargs_json)
    return get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=total,
                         scheduler_specific_kwargs=kwargs).lr_lambdas[0]


class Schedule:
    """Learning-rate factor at a step, for `LambdaLR`. Its plain attributes are saved and restored with the
    scheduler's state (that is how a resumed run keeps a planned step count)."""

    def __init__(self, name: str, warmup: float, total_steps: int, kwargs: dict | None = None):
        self.name, self.warmup, self.total_steps = str(getattr(name, "value", name)), warmup, int(total_steps)
        self.kwargs = dict(kwargs or {})
        self.planned = False  # True once a time budget has fixed total_steps
        self._factor(0)  # unknown names and bad kwargs fail here, before training starts

    @classmethod
    def of(cls, args) -> "Schedule":
        """The schedule TrainingArguments name; its step count is set when training starts (or by a budget)."""
        return cls(args.lr_scheduler_type, args.warmup_steps, max(1, args.max_steps), args.lr_scheduler_kwargs)

    def warmup_steps(self, total: int | None = None) -> int:
        return steps_of(self.warmup, self.total_steps if total is None else total)

    def decay_start(self, total: int) -> int:
        """The first step whose learning rate depends on `total`."""
        if self.name == "warmup_stable_decay":
            return total - self._decay_steps(total)
        return self.warmup_steps(total) if self.name in _DECAY_AFTER_WARMUP else total

    def _decay_steps(self, total: int) -> int:
        if "num_decay_steps" in self.kwargs:
            return int(self.kwargs["num_decay_steps"])
        return round(float(self.kwargs.get("decay_ratio", 0.2)) * total)

    def _factor(self, step: int) -> float:
        kwargs = {k: v for k, v in self.kwargs.items() if k != "decay_ratio"}
        if self.name == "warmup_stable_decay":
            kwargs["num_decay_steps"] = self._decay_steps(self.total_steps)
        return _library_factor(self.name, self.warmup_steps(), self.total_steps,
                               json.dumps(kwargs, sort_keys=True))(step)

    def __call__(self, step: int) -> float:
        return self._factor(step)


class TimeBudget(TrainerCallback):
    """Plans the number of training steps of `schedule` so that the run, final work included, ends within
    `budget_s` seconds of `started` (the process start).

    final_share: how many times the final evaluation's data is that of an evaluation during training (by bytes).
    max_steps: a step count the user gave as well (`--time_budget` with `--max_steps`): the run stops at the
    smaller of the two, and its schedule ends there.
    calibration_steps: steps timed before the first plan (the first two, which may compile, are not counted);
    an evaluation is run right after them, so its cost is measured before the plan is fixed.
    clock: the wall clock in seconds (`time.time`; the tests give a fake one).
    """

    def __init__(self, schedule: Schedule, started: float, budget_s: float, final_share: float,
                 calibration_steps: int = 8, margin_s: float = 10.0, max_steps: int | None = None, clock=time.time):
        self.schedule = schedule
        self.started, self.budget_s, self.final_share, self.clock = started, budget_s, final_share, clock
        self.max_steps = max_steps  # an explicit --max_steps: the plan never exceeds it
        self.calibration_steps, self.margin_s = calibration_steps, margin_s
        self.timer = StepTimer(clock)  # the plain steps; the run's throughput is reported from the same timer
        self.eval_seconds: list[float] = []  # the evaluation loop of an evaluation during training
        self.event_seconds: list[float] = []  # a step with an evaluation (and samples, saving) after it
        self.decision: dict = {}
        self._last_end: float | None = None
        self._eval_loop: float | None = None
        self.resumed = False  # a resumed run finishes its checkpoint's plan
        self._first_step, self._marks_done = 0, {}  # where training began (a checkpoint's step); marks acted on

    def attach(self, trainer) -> None:
        """Plan `trainer`'s run (a TinyGPTTrainer, not yet trained): it trains by this budget's schedule until the
        plan ends, and its progress bar shows the plan."""
        trainer.schedule = self.schedule
        trainer.add_callback(self)
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(PlannedProgress(self.schedule))

    # ---- measuring

    def on_train_begin(self, args, state, control, **kwargs):
        if args.max_steps == UNBOUNDED_STEPS:
            args.max_steps = -1  # Trainer has sized its loop; what is saved is the user's setting
        self._first_step = state.global_step  # a resumed run's marks count from its checkpoint
        if state.global_step > 0 and self.schedule.total_steps != UNBOUNDED_STEPS:
            # A resumed run finishes the plan saved in its checkpoint (restored with the scheduler), fixed or not
            # yet: the same steps at the same learning rates as the uninterrupted run had planned. It neither
            # measures nor re-plans: this process's clock started late, and a plan fitted to it would be a new
            # budget (docs/training.md, "Resuming a budgeted run").
            self.schedule.planned = self.resumed = True
            self.decision.update(planned_steps=self.schedule.total_steps, resumed_at_step=state.global_step)
        if self.schedule.planned:
            state.max_steps = self.schedule.total_steps

    @property
    def step_seconds(self) -> list[float]:
        """Between the ends of consecutive steps with nothing else between (no evaluation, no saving)."""
        return self.timer.seconds

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.timer.on_evaluate(args, state, control)
        if self._last_end is None or self._eval_loop is not None:
            return
        runtime = next((value for key, value in (metrics or {}).items() if key.endswith("_runtime")), None)
        # the evaluation loop alone, as the trainer timed it; without that, all since the last step
        self._eval_loop = runtime if runtime is not None else self.clock() - self._last_end

    def on_step_end(self, args, state, control, **kwargs):
        self._measure_and_plan(args, state, control)
        if processes() > 1:
            self._follow_rank_zero(args, state, control)
        self._marks_passed(args, state, control)

    def _marks_passed(self, args, state, control) -> None:
        """Evaluations and checkpoints where the plan's shares of the run fall (--eval_steps, --save_steps below 1):
        Trainer asks `step % interval == 0` of an interval that moves with every estimate while the plan is not yet
        fixed, and so misses them (a run evaluated and saved only from 70% on); here a mark passed since the last
        evaluation or checkpoint counts, once, and between the marks Trainer's check (which ran before this
        callback) is overruled: where its moving interval met a step after a counted mark, a run evaluated and saved
        twice near 25%. The final step's evaluation and checkpoint stay Trainer's. Every process takes the same
        decision (from the shared plan)."""
        if self.schedule.total_steps >= UNBOUNDED_STEPS:
            return
        for share, strategy, flag in ((args.eval_steps, args.eval_strategy, "should_evaluate"),
                                      (args.save_steps, args.save_strategy, "should_save")):
            if 0 < share < 1 and str(getattr(strategy, "value", strategy)) == "steps":
                every = steps_of(share, self.schedule.total_steps)
                marks = state.global_step // every  # marks passed by now, by the current plan
                if marks > self._marks_done.setdefault(flag, self._first_step // every):
                    setattr(control, flag, True)
                    self._marks_done[flag] = marks
                elif state.global_step < self.schedule.total_steps:
                    setattr(control, flag, False)  # Trainer's check, where its moving interval met this step

    def on_save(self, args, state, control, **kwargs):
        self.timer.on_save(args, state, control)

    def _measure_and_plan(self, args, state, control):
        now = self.clock()
        self.timer.on_step_end(args, state, control)
        if self._last_end is not None and self._eval_loop is not None:
            self.eval_seconds.append(self._eval_loop)
            self.event_seconds.append(now - self._last_end)
        self._last_end, self._eval_loop = now, None
        if self.schedule.planned:
            # A plan whose last step is reached is final: Trainer's own check (DefaultFlowCallback, run before this
            # callback) has stopped the run there, and a plan grown at that step would end after the run did.
            if (not self.resumed and len(self.step_seconds) > 2 and self.event_seconds
                    and state.global_step % 10 == 0 and state.global_step < self.schedule.total_steps):
                self._refit(args, state)
            control.should_training_stop = control.should_training_stop or state.global_step >= self.schedule.total_steps
            return
        timed = len(self.step_seconds) - 1  # the first interval may hold compilation
        if timed == self.calibration_steps and not self.eval_seconds:
            control.should_evaluate = True  # measure what an evaluation costs before planning with it
        if timed >= self.calibration_steps and self.eval_seconds:
            self._plan(args, state, control)

    def _follow_rank_zero(self, args, state, control) -> None:
        """Every process takes process 0's plan, re-plans and stop (tinygpt.ranks): the processes measure their
        own steps, and a step count or an evaluation they disagree on would deadlock their collectives."""
        total, planned, stop, evaluate = decided_by_rank_zero(
            (self.schedule.total_steps, self.schedule.planned, control.should_training_stop, control.should_evaluate))
        if total != self.schedule.total_steps:
            self._set_total(args, state, total)
        self.schedule.planned, control.should_training_stop, control.should_evaluate = planned, stop, evaluate

    def on_train_end(self, args, state, control, **kwargs):
        if "first_planned_steps" in self.decision and is_deciding_process():
            print(f"\ntime budget: the plan followed the machine's speed, {self.decision['first_planned_steps']:,} -> "
                  f"{self.decision['planned_steps']:,} steps (last changed at step "
                  f"{self.decision['last_refitted_at_step']:,})", flush=True)

    # ---- planning

    def _fit(self, args, state) -> tuple[int, float, float, float]:
        """The total number of steps that ends the run in time at the recent speed, with the timings used."""
        step_s = statistics.median(self.step_seconds[1:][-50:])
        # the median of the evaluations after the first (which may hold compilation): the final work is many
        # evaluations' worth (all validation stories and the consistency items), so one slow one must not move it
        eval_s = statistics.median(self.eval_seconds[1:] or self.eval_seconds)
        event_s = max(0.0, statistics.median(self.event_seconds[1:] or self.event_seconds) - step_s)  # evaluation,
        # samples and saving, also the median after the first
        # After the last step: Trainer's own evaluation and checkpoint at the final step (it always makes them),
        # then the final evaluation on all the validation data and the saving.
        final_s = event_s + eval_s * self.final_share + (event_s - eval_s) + self.margin_s
        left = (self.started + self.budget_s - self.clock() - final_s) * SAFETY

        def evals(total: int) -> int:  # evaluations still to come: at the multiples of the evaluation interval
            every = max(1, steps_of(args.eval_steps, total))
            return total // every - state.global_step // every

        # the most steps that fit in the time left, less as many as the evaluations among them need
        total = state.global_step + max(0, int(left / step_s))
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        while total > state.global_step and (total - state.global_step) * step_s + evals(total) * event_s > left:
            total -= 1
        return total, step_s, event_s, final_s

    def _plan(self, args, state, control) -> None:
        total, step_s, event_s, final_s = self._fit(args, state)
        self._set_total(args, state, total)
        if total <= state.global_step or state.global_step >= max(self.schedule.decay_start(total), SETTLED * total):
            self.schedule.planned = True
            self._report(state, total, step_s, event_s, final_s)
            control.should_training_stop = control.should_training_stop or total <= state.global_step

    def _refit(self, args, state) -> None:
        total = max(state.global_step, self._fit(args, state)[0])
        if total < self.schedule.total_steps or total > GROW * self.schedule.total_steps:
            self._set_total(args, state, total)
            self.decision.setdefault("first_planned_steps", self.decision.get("planned_steps"))
            self.decision.update(planned_steps=total, last_refitted_at_step=state.global_step)

    def _set_total(self, args, state, total: int) -> None:
        # The step after this one already has its learning rate (the scheduler stepped before the callbacks): it is
        # the old plan's, which differs from the new one's by at most a step's worth of the decay.
        self.schedule.total_steps = total
        state.max_steps = total  # the progress bar's total: the current estimate, then the plan
        state.compute_steps(args, total)  # eval/save/logging steps given as a share of the run

    def _report(self, state, total, step_s, event_s, final_s) -> None:
        spent = self.clock() - self.started
        self.decision = {"planned_steps": total, "decided_at_step": state.global_step,
                         "seconds_per_step": round(step_s, 4), "seconds_per_evaluation": round(event_s, 2),
                         "final_work_s": round(final_s, 1), "spent_s_when_decided": round(spent, 1),
                         "budget_s": self.budget_s}
        if not is_deciding_process():
            return
        print(f"\ntime budget {self.budget_s / 60:g} min: {spent:.0f} s spent by step {state.global_step}; "
              f"{step_s:.3f} s per step, {event_s:.1f} s per evaluation, {final_s:.0f} s kept for the final "
              f"evaluation and saving -> {total:,} steps in all", flush=True)


def steps_of(value: float, total: int) -> int:
    """A step count given as TrainingArguments allow (warmup_steps, eval_steps): a share of the run if below 1.
    transformers applies the same rule inside TrainingArguments.get_warmup_steps and TrainerState.compute_steps, but
    neither takes a value and a step count alone (the budget asks it for step counts that Trainer never sees)."""
    return math.ceil(value * total) if 0 < value < 1 else int(value)


class PlannedProgress(ProgressCallback):
    """Trainer's progress bar with the budget's plan as its total: none until the plan is fixed (the estimate moves
    at every step before that, and a bar redrawn at every step writes a line each time to a log), then the plan,
    which moves only when the machine's speed does (a refit). tqdm's documented `total` and `refresh()`."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # ProgressCallback's bar, created with the plan's total (or none)
            self.training_bar = tqdm(total=self._total(), dynamic_ncols=True)
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None and self.training_bar.total != self._total():
            self.training_bar.total = self._total()
            self.training_bar.refresh()
        super().on_step_end(args, state, control, **kwargs)

    def _total(self) -> int | None:
        return self.schedule.total_steps if self.schedule.planned else None
