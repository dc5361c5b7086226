"""Unit tests of the learning-rate Schedule and the TimeBudget planner (tinygpt.budget), with a fake clock."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerControl, TrainerState, TrainingArguments, get_cosine_schedule_with_warmup

import tinygpt.budget as budget
from tinygpt.budget import Schedule, TimeBudget


def scheduler(schedule: Schedule) -> LambdaLR:
    return LambdaLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), schedule)


def test_the_schedules_are_transformers_own():
    ours = Schedule("cosine", 10, 100)
    theirs = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 10, 100)
    assert all(math.isclose(ours(s), theirs.lr_lambdas[0](s)) for s in range(101))
    assert Schedule("cosine", 0.1, 200).warmup_steps() == 20  # a ratio, as TrainingArguments allows
    wsd = Schedule("warmup_stable_decay", 10, 100, {"decay_ratio": 0.25, "decay_type": "linear"})
    assert wsd(5) == pytest.approx(0.5) and wsd(10) == wsd(74) == 1.0 and wsd(75) == 1.0
    assert wsd(85) == pytest.approx(0.6) and wsd(100) == 0.0
    assert wsd.decay_start(100) == 75 and ours.decay_start(100) == 10 and Schedule("constant", 0, 9).decay_start(9) == 9
    with pytest.raises(ValueError):
        Schedule("nonsense", 10, 100)


def test_a_planned_step_count_is_saved_with_the_scheduler_state():
    """How a resumed run keeps its plan: the Schedule's attributes travel in the scheduler's state_dict."""
    planned = Schedule("cosine", 10, 10_000_000)
    planned.total_steps, planned.planned = 321, True
    state = scheduler(planned).state_dict()
    fresh = Schedule("cosine", 10, 10_000_000)
    scheduler(fresh).load_state_dict(state)
    assert (fresh.total_steps, fresh.planned) == (321, True) and fresh(321) == planned(321)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def test_the_plan_fits_the_budget_with_evaluations_and_the_final_work(monkeypatch):
    """1 s per step, 10 s per evaluation of 1/4 of the validation data (+2 s of samples), 100 s spent before
    training, 600 s in all: the steps planned leave room for every evaluation and the final one."""
    clock = FakeClock()
    monkeypatch.setattr(budget.time, "time", clock.time)
    args = TrainingArguments(output_dir="unused", eval_steps=100, report_to=[])
    state, control = TrainerState(), TrainerControl()
    planner = TimeBudget(started=clock.now - 100, budget_s=600, final_share=4.0, calibration_steps=5, margin_s=10)
    lr_scheduler = scheduler(Schedule("warmup_stable_decay", 5, 10_000_000, {"decay_ratio": 0.2}))
    schedule = lr_scheduler.lr_lambdas[0]
    for step in range(1, 1000):
        clock.now += 1.0  # the training step
        state.global_step = step
        planner.on_step_end(args, state, control, lr_scheduler=lr_scheduler)
        if control.should_training_stop:
            break
        if control.should_evaluate or step % 100 == 0:  # what the planner asked for, or a periodic evaluation
            control.should_evaluate = False
            clock.now += 10.0
            planner.on_evaluate(args, state, control)
            clock.now += 2.0  # the sample stories
    decision = planner.decision
    assert schedule.planned and decision["planned_steps"] == state.global_step == schedule.total_steps
    # 600 s - 100 s before training - the final work (40 s of evaluation, 2 s of samples, 10 s of margin) = 448 s,
    # less 4 evaluations along the way (12 s each: the planner's at step 6, then at 100, 200, 300): 400 steps of
    # 1 s, a little less with the safety factor on what is left when the plan is fixed
    assert decision["final_work_s"] == 52.0 and 390 <= decision["planned_steps"] <= 400
    end_of_run = clock.now + decision["final_work_s"]
    assert end_of_run <= planner.started + 600
    assert decision["decided_at_step"] == schedule.decay_start(decision["planned_steps"])  # fixed when decay starts
