"""One decision per run, whatever the launcher.

Under torchrun or `accelerate launch` every process runs train_hf.py. Left to themselves, each would measure the
machine and decide on its own: bf16 or not, the shape, the step plan and its re-plans, when to evaluate and stop;
processes that disagree on a step count or an evaluation wait in different collectives and abort ("Received
data size doesn't match expected size"). So process 0 measures and decides, and every process follows, through
accelerate's public `broadcast_object_list`. A single process decides alone, at no cost.
"""

from accelerate import PartialState
from accelerate.utils import broadcast_object_list


def processes() -> int:
    """How many processes train this run (1 without a launcher)."""
    return PartialState().num_processes


def is_deciding_process() -> bool:
    return PartialState().is_main_process


def decided_by_rank_zero(value):
    """`value` as process 0 has it, on every process (the value itself when the run has one process). Every
    process must call this at the same point, like any collective."""
    if processes() == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]
