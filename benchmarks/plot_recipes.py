"""Validation bits per byte against wall-clock minutes for finished training runs, on one plot (BENCHMARKS.md).

    python benchmarks/plot_recipes.py --out docs/cpu_recipes.png \
        --run "new recipe (--preset cpu)=runs/cpu" --run "former recipe, 30 min=runs/former" \
        --run "GPT-Neo, Trainer defaults=runs/gpt-neo-defaults"
    python benchmarks/plot_recipes.py --x tokens --out docs/screening/half_horizon_96x6.png \
        --run "base=runs/scr/base" --run "lr 3e-3=runs/scr/lr3e-3"    # token-matched screens: against tokens

Each run folder is one written by train_hf.py or benchmarks/gpt_neo_baseline.py, or its record in docs/cpu-runs
(log_history.json instead of trainer_state.json): its trainer_state.json holds
the evaluations made during training, each with the seconds since the process started (`elapsed_s`), and its
training_summary.json the final evaluation (drawn as the last point, at the run's wall time).
"""

import argparse
import json
from pathlib import Path


def curve(folder: Path, x: str = "minutes") -> tuple[list[float], list[float]]:
    """(minutes or millions of tokens trained, bits per byte) of the run's evaluations, the final one last."""
    if (folder / "trainer_state.json").is_file():
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    else:  # a kept record (docs/cpu-runs/NAME) holds the log history alone
        history = json.loads((folder / "log_history.json").read_text())
    summary = json.loads((folder / "training_summary.json").read_text())
    training = summary["training"]
    if x == "tokens":
        per_step = training["tokens_seen"] / max(1, training["global_step"]) / 1e6
        points = [(e["step"] * per_step, e["eval_bits_per_byte"]) for e in history if "eval_bits_per_byte" in e]
        points.append((training["tokens_seen"] / 1e6, summary["eval"]["eval_bits_per_byte"]))
    else:
        points = [(e["elapsed_s"] / 60, e["eval_bits_per_byte"]) for e in history
                  if "eval_bits_per_byte" in e and "elapsed_s" in e]
        points.append((training["wall_time_s"] / 60, summary["eval"]["eval_bits_per_byte"]))
    return [p[0] for p in points], [p[1] for p in points]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=FOLDER, repeatable")
    parser.add_argument("--out", default="docs/cpu_recipes.png")
    parser.add_argument("--x", choices=["minutes", "tokens"], default="minutes",
                        help="minutes since the command started, or millions of tokens trained")
    parser.add_argument("--ymax", type=float, default=None, help="top of the bits-per-byte axis (the first "
                        "evaluation, of a barely trained model, otherwise sets the scale)")
    parser.add_argument("--title", default="held-out bits per byte against wall time (2 CPU cores)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for item in args.run:
        label, _, folder = item.partition("=")
        where, bpb = curve(Path(folder), args.x)
        axis.plot(where, bpb, "o-", label=f"{label}: {bpb[-1]:.3f}")
    xlabel = "minutes since the command started" if args.x == "minutes" else "millions of tokens trained"
    axis.set(xlabel=xlabel, ylabel="validation bits per byte", title=args.title)
    if args.ymax:
        axis.set_ylim(top=args.ymax)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
