"""Unit tests of the learning-rate Schedule and the TimeBudget planner (tinygpt.budget), with a fake clock."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import DefaultFlowCallback, ProgressCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments, get_cosine_schedule_with_warmup

from tinygpt.budget import UNBOUNDED_STEPS, Schedule, TimeBudget


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


def simulate(step_time=lambda step: 1.0, max_steps=None, stop_at=None):
    """A 600 s run with 100 s spent before training, on a fake clock: steps of `step_time(step)` s, an evaluation
    (10 s of evaluating 1/4 of the validation data + 2 s of samples) when the planner asks and every 100 steps.
    The clock when training stops, the planner and its warmup-stable-decay schedule."""
    clock = FakeClock()
    args = TrainingArguments(output_dir="unused", eval_steps=100, report_to=[])
    state, control = TrainerState(), TrainerControl()
    schedule = Schedule("warmup_stable_decay", 5, 10_000_000, {"decay_ratio": 0.2})
    planner = TimeBudget(schedule, started=clock.now - 100, budget_s=600, final_share=4.0, calibration_steps=5,
                         margin_s=10, max_steps=max_steps, clock=clock.time)
    for step in range(1, 1000):
        clock.now += step_time(step)  # the training step
        state.global_step = step
        control.should_training_stop = step == stop_at  # another callback's request, made before the planner's
        planner.on_step_end(args, state, control)
        if control.should_training_stop:
            break
        if control.should_evaluate or step % 100 == 0:  # what the planner asked for, or a periodic evaluation
            control.should_evaluate = False
            clock.now += 2.0  # the sample stories: callbacks run in any order, the trainer reports its own time
            clock.now += 10.0
            planner.on_evaluate(args, state, control, metrics={"eval_loss": 1.0, "eval_runtime": 10.0})
    return clock.now, planner, state, schedule


def test_the_plan_fits_the_budget_with_evaluations_and_the_final_work():
    """1 s per step: the steps planned leave room for every evaluation and the final work."""
    now, planner, state, schedule = simulate()
    decision = planner.decision
    assert schedule.planned and decision["planned_steps"] == state.global_step == schedule.total_steps
    # 600 s - 100 s before training - the final work (Trainer's evaluation at the last step, 12 s, then 40 s of
    # evaluation, 2 s of samples, 10 s of margin) = 436 s, less 4 evaluations along the way (12 s each: the
    # planner's at step 6, then at 100, 200, 300): 388 steps of 1 s, a little less with the safety factor on what
    # is left when the plan is fixed
    assert decision["final_work_s"] == 64.0 and 380 <= decision["planned_steps"] <= 388
    assert now + decision["final_work_s"] <= planner.started + 600
    assert decision["decided_at_step"] == schedule.decay_start(decision["planned_steps"])  # fixed when decay starts
    assert "first_planned_steps" not in decision  # a steady speed never shrinks the plan


@pytest.mark.parametrize("later_step_s", [1.3, 0.8])
def test_a_run_whose_speed_changes_after_the_plan_ends_in_time_with_its_budget_used(later_step_s):
    """Steps 30% slower, or 20% faster, from step 320 on (after the plan is fixed at the decay start): the plan
    follows, the run ends within the budget and not more than 3% of it early, and the learning rate still
    comes down to zero at the last step."""
    now, planner, state, schedule = simulate(lambda step: 1.0 if step < 320 else later_step_s)
    decision = planner.decision
    assert decision["decided_at_step"] < 320 < decision["last_refitted_at_step"]
    assert decision["planned_steps"] == state.global_step == schedule.total_steps
    assert (decision["planned_steps"] < decision["first_planned_steps"]) == (later_step_s > 1)
    end_of_run = now + decision["final_work_s"]
    assert planner.started + 0.97 * 600 <= end_of_run <= planner.started + 600
    assert schedule(state.global_step - 1) < 0.01


def test_the_cpu_recipe_is_a_timed_muon_run_with_a_warmup_stable_decay_schedule(tmp_path):
    """`--preset cpu` as BENCHMARKS.md measured it: the tinystories-cpu preset, 30 minutes, Muon at 4e-3 on batches of 32
    (AdamW's part at beta2 0.99, the embeddings at 3x), and a warmup-stable-decay schedule whose last 30% decays to
    zero along a half cosine (transformers' default decay shape; the plan is fixed when the decay starts)."""
    from tinygpt.training import parse_arguments

    model_args, data_args, args = parse_arguments(["--preset", "cpu", "--output_dir", str(tmp_path)])
    assert (model_args.recipe, model_args.model_preset) == ("cpu", "tinystories-cpu")
    assert args.time_budget == 30 and args.muon and args.learning_rate == 4e-3 and data_args.block_size == 256
    assert args.per_device_train_batch_size == 32 and args.embedding_lr_multiplier == 3 and args.adam_beta2 == 0.99
    schedule = Schedule(args.lr_scheduler_type, args.warmup_steps, 1000, args.lr_scheduler_kwargs)
    assert schedule.decay_start(1000) == 700
    assert [round(schedule(s), 3) for s in (0, 29, 30, 699, 850, 999)] == [0.0, 0.967, 1.0, 1.0, 0.5, 0.0]
    # an explicit option wins over the recipe's
    _, _, args = parse_arguments(["--preset", "cpu", "--output_dir", str(tmp_path), "--lr_scheduler_type", "cosine"])
    assert args.lr_scheduler_type == "cosine"
    assert model_args.auto_shape == "96x6,128x6,160x8,192x8"  # the shape is measured for the machine
    model_args, _, _ = parse_arguments(["--preset", "cpu", "--output_dir", str(tmp_path),
                                        "--config_overrides", "hidden_size=96"])
    assert model_args.auto_shape is None  # a shape on the command line wins


def test_an_explicit_max_steps_caps_the_budget_plan():
    """--time_budget with --max_steps: the run stops at the smaller of the two, its schedule ending there."""
    now, planner, state, schedule = simulate(max_steps=150)
    assert state.global_step == schedule.total_steps == planner.decision["planned_steps"] == 150
    assert schedule(150) == 0.0 and schedule(149) > 0.0
    uncapped = simulate(max_steps=10_000)[2].global_step
    assert 300 < uncapped < 10_000  # a cap above what the budget allows changes nothing


def test_the_command_line_wins_over_the_recipe():
    """`--preset cpu --max_steps 40` keeps the 40 (the recipe's time budget then only caps it); other recipe
    values written on the command line win too."""
    from tinygpt.training import parse_arguments

    _, _, args = parse_arguments(["--preset", "cpu", "--max_steps", "40", "--learning_rate", "1e-3", "--output_dir", "x"])
    assert args.max_steps == 40 and args.time_budget == 30 and args.learning_rate == 1e-3


def test_a_budget_attached_with_one_call_plans_the_trainers_schedule_and_progress_bar(tokenizer_dir, tmp_path):
    """TimeBudget.attach on a real TinyGPTTrainer, on a clock that moves 1 s per step: the run trains by the
    budget's schedule and stops at its plan, the evaluation it asks for is timed by the trainer (eval_runtime),
    the progress bar shows the plan (no placeholder before it), and no saved file records a placeholder limit."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from conftest import tiny_model
    from tinygpt.budget import UNBOUNDED_STEPS, PlannedProgress
    from tinygpt.data import CausalLMCollator
    from tinygpt.training import TinyGPTTrainer, TinyGPTTrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                       eos_token_id=tokenizer.eos_token_id).train()
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, len(tokenizer), (64, 16)).tolist()})
    stories = Dataset.from_dict({"text": ["Tom had a red ball. He gave it to Sue."] * 2})
    args = TinyGPTTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3,
                             max_steps=UNBOUNDED_STEPS,  # as training.py builds Trainer for a budget
                             lr_scheduler_type="warmup_stable_decay", lr_scheduler_kwargs={"decay_ratio": 0.5},
                             warmup_steps=2, eval_strategy="steps", eval_steps=1000, save_strategy="no",
                             logging_steps=5, report_to=[], use_cpu=True, disable_tqdm=False)
    trainer = TinyGPTTrainer(model=model, args=args, train_dataset=blocks, eval_dataset=stories, block_size=16,
                             data_collator=CausalLMCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                             started=0.0)
    budget = TimeBudget(Schedule.of(args), started=0.0, budget_s=60, final_share=1.0, calibration_steps=3,
                        margin_s=5, clock=lambda: 10.0 + trainer.state.global_step)  # 10 s spent before training
    budget.attach(trainer)
    callbacks = trainer.callback_handler.callbacks
    assert trainer.schedule is budget.schedule and budget in callbacks
    bars = [c for c in callbacks if isinstance(c, ProgressCallback)]
    assert len(bars) == 1 and isinstance(bars[0], PlannedProgress)  # Trainer's bar replaced, not doubled
    lr_seen, totals = [], []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            lr_seen.append(optimizer.param_groups[0]["lr"])
            totals.append(bars[0].training_bar.total)

    trainer.add_callback(Watch())
    trainer.train()
    plan = budget.decision["planned_steps"]
    # 60 s - 10 s before training - the final work (5 s of margin, evaluations of ~0 s) = 45 s, less the safety
    # factor's share and the planner's own evaluation step: about 43 steps of 1 s
    assert 40 <= plan <= 45 and trainer.state.global_step == plan == budget.schedule.total_steps
    assert budget.eval_seconds and budget.eval_seconds[0] < 5  # the trainer's eval_runtime, not the fake clock
    # no total while the estimate moves (a redrawn bar writes a line to a log at every change), then the plan
    decided = budget.decision["decided_at_step"]
    assert set(totals[:decided - 1]) == {None} and set(totals[decided:]) == {plan}
    assert trainer.lr_scheduler.lr_lambdas[0] is budget.schedule
    assert lr_seen[0] < lr_seen[5] == pytest.approx(1e-3) and lr_seen[-1] < 1e-4  # warm-up, stable, decayed
    assert trainer.args.max_steps == -1 != UNBOUNDED_STEPS
    trainer.save_model(str(tmp_path / "final"))
    assert torch.load(tmp_path / "final" / "training_args.bin", weights_only=False).max_steps == -1


def test_the_plan_keeps_a_stop_another_callback_asked_for():
    """Another callback (an early stop, a user's) asks to stop at the very step the plan is fixed: the plan does
    not clear the request."""
    decided = simulate()[1].decision["decided_at_step"]
    _, _, state, _ = simulate(stop_at=decided)
    assert state.global_step == decided


def _budgeted_steps(step_seconds) -> tuple[int, list[int], list[int], int]:
    """(the plan, the steps evaluated, the steps saved, the step it stopped at) of a budgeted run with
    --eval_steps/--save_steps 0.25 whose step `s` takes `step_seconds(s)`, Trainer's own checks
    (DefaultFlowCallback: `step % interval`, `step >= max_steps`) run before the budget's as in Trainer."""
    clock = FakeClock()
    args = TrainingArguments(output_dir="unused", eval_strategy="steps", eval_steps=0.25, save_strategy="steps",
                             save_steps=0.25, report_to=[])
    state = TrainerState()
    state.max_steps = UNBOUNDED_STEPS  # as Trainer sizes its loop for a budget without --max_steps
    state.compute_steps(args, UNBOUNDED_STEPS)
    planner = TimeBudget(Schedule("warmup_stable_decay", 5, UNBOUNDED_STEPS, {"decay_ratio": 0.2}),
                         started=clock.now - 100, budget_s=600, final_share=4.0, calibration_steps=5, margin_s=10,
                         clock=clock.time)
    flow = DefaultFlowCallback()
    evaluated, saved = [], []
    for step in range(1, 1000):
        clock.now += step_seconds(step)
        state.global_step = step
        control = TrainerControl()
        flow.on_step_end(args, state, control)
        planner.on_step_end(args, state, control)
        if control.should_evaluate:
            clock.now += 10.0
            evaluated.append(step)
            planner.on_evaluate(args, state, control, metrics={"eval_loss": 1.0, "eval_runtime": 10.0})
        if control.should_save:
            saved.append(step)
            planner.on_save(args, state, control)
        if control.should_training_stop:
            break
    assert planner.decision["decided_at_step"] > planner.decision["planned_steps"] // 2  # quarters 1-2 come first
    return planner.decision["planned_steps"], evaluated, saved, state.global_step


def test_shares_of_the_plan_evaluate_and_save_at_each_quarter_also_before_the_plan_is_fixed():
    """--eval_steps/--save_steps 0.25: an evaluation and a checkpoint at about 25%, 50% and 75% of the planned steps,
    although the first two come while the plan is an estimate that moves at every step (Trainer's own
    `step % interval == 0` misses those: a measured run evaluated and saved first at 75%)."""
    plan, evaluated, saved, _ = _budgeted_steps(lambda step: 1.0 + 0.02 * (step % 3))  # noisy: the estimate moves
    for quarter in (1, 2, 3):
        assert [s for s in evaluated if abs(s - quarter * plan / 4) <= 0.03 * plan], (quarter, plan, evaluated)
        assert [s for s in saved if abs(s - quarter * plan / 4) <= 0.03 * plan], (quarter, plan, saved)
    assert evaluated[-1] == saved[-1] == plan  # and at the end
    assert len(evaluated) == 5 and len(saved) == 4, (plan, evaluated, saved)  # calibration, 3 quarters, the end


def test_a_quarter_is_evaluated_and_saved_once_when_the_estimate_grows_past_it():
    """The machine speeds up after the first quarter's evaluation: the estimate, and with it Trainer's interval,
    grows past the steps already evaluated, and Trainer's check met it again (a measured run evaluated and saved
    twice near 25%, 73 steps apart). The budget counts each mark once."""
    plan, evaluated, saved, _ = _budgeted_steps(lambda step: (1.0 if step < 80 else 0.7) + 0.02 * (step % 3))
    assert len(evaluated) == 5 and len(saved) == 4, (plan, evaluated, saved)  # calibration, 3 quarters, the end
    marks = evaluated[1:]
    assert all(later - earlier > plan / 8 for earlier, later in zip(marks, marks[1:])), (plan, evaluated)
    assert saved == marks, (saved, evaluated)


def test_a_plan_reached_is_the_step_the_run_stops_at_when_the_machine_speeds_up_at_its_end():
    """The machine speeds up in the last steps and the plan's re-fit, every 10 steps, fell on its last step: Trainer
    had already stopped there, and the plan grew past it (a 2-process run stopped at step 50 of a plan of 51). A plan
    reached is final."""
    for speed_up_at, faster in ((370, 0.9), (378, 0.5), (382, 0.3)):
        plan, evaluated, saved, stopped = _budgeted_steps(
            lambda step: (1.0 if step < speed_up_at else faster) + 0.02 * (step % 3))
        assert stopped == plan == evaluated[-1] == saved[-1], (speed_up_at, faster, plan, stopped)
