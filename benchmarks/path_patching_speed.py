"""How much faster is our path patching than one sender per forward pass, step by step?

Runs the four steps of the search (paper.md §4.3) on a model, by default organism-base (3 layers x
4 heads, 100 prompts of 7 boxes), both ways: `path_patching.path_patching_scores` and
`path_patching.path_patching_scores_one_head_per_forward`, the definition written the authors'
way. For each step it checks that both give the same scores, and prints the wall time both ways,
their ratio and the forward passes both ways. Then it counts, without running anything, the
forward passes of a full search at the paper's shape (32 layers x 32 heads, 300 prompts in
batches of 100, 7 boxes) the authors' way and ours. The last line is ``speed-up xN``, N the
smallest ratio of the four steps. It is a measurement to read, not a test: timings depend on the
machine and its load (each time is the best of ``--repeats`` runs).

Receivers of steps B, C and D (``--receivers``):

* ``last`` (default): two heads of the last layer, as this script always used. Every sender below
  the last layer reaches them, so each step patches as many senders as the model allows. For a
  V-composition into the last layer pass 2 runs only the last token (see `path_patching`).
* ``middle``: two heads of the middle layer. Pass 2 of steps C and D then runs each prompt from the
  receivers' position on, the slowest route; on organism-base step D is about x7, not x10.
* ``search``: the previous step's top heads, as the real search picks them. On organism-base its
  B heads all stay under the 2 % threshold, so steps C and D have no receivers and cost nothing.

Our path patching records the clean and corrupted runs once for all four steps (the authors also
cached them once per batch; the one-head-per-forward function repeats them at every call). Their
time is printed on its own line and a quarter of it is added to each step's time.

    OMP_NUM_THREADS=1 python benchmarks/path_patching_speed.py                    # organism-base
    OMP_NUM_THREADS=1 python benchmarks/path_patching_speed.py --receivers middle
    OMP_NUM_THREADS=1 python benchmarks/path_patching_speed.py --model random      # organism-shaped random model
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

import torch

from entity_tracking.data import TaskConfig

from entity_tracking import models
from entity_tracking import patching
from entity_tracking import path_patching as PP


def load(name: str):
    if name == "random":  # the organism's shape, random weights: runs before checkpoints exist
        from entity_tracking.testing import save_tiny_llama

        return models.load_model(str(save_tiny_llama(tempfile.mkdtemp(), n_layers=3, n_heads=4, d_model=64)))
    return models.load_model(name)


class PassCounter:
    """Counts the forward passes (and the token positions they run) that go through
    `patching.run_with_hooks`, the one door every method here uses."""

    def __init__(self):
        self.passes = self.tokens = 0
        self._run = patching.run_with_hooks

    def __enter__(self):
        def counting(model, tokens, hooks=()):
            self.passes += 1
            self.tokens += tokens.numel()
            return self._run(model, tokens, hooks)

        patching.run_with_hooks = counting
        return self

    def __exit__(self, *exc):
        patching.run_with_hooks = self._run


def best_of(repeats: int, run):
    """The result, the shortest wall time of ``repeats`` runs, and the passes of one run."""
    times = []
    for _ in range(repeats):
        with PassCounter() as count:
            start = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - start)
    return result, min(times), count


def paper_shape_counts(lm, max_rows: int):
    """`path_patching.search_cost` at LLaMA-7B's shape, on this model's 300 prompts of 7 boxes (54
    tokens, the layout of the authors' prompts: box labels at 6, 13, ..., 48)."""
    config = PP.PathPatchingConfig(task=TaskConfig(n_boxes=7, n_samples=300), pool=300, batch_size=100, max_rows=max_rows)
    base, _ = PP.pair_batches(lm, config)
    llama_7b = SimpleNamespace(n_layers=32, n_heads=32, spec=SimpleNamespace(name="llama-7b"))
    return PP.search_cost(llama_7b, config, base), base.seq_len


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-base", help="registry name, local directory, or 'random'")
    parser.add_argument("--receivers", default="last", choices=["last", "middle", "search"])
    parser.add_argument("--samples", type=int, default=100, help="base prompts")
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--max-rows", type=int, default=PP.PathPatchingConfig.max_rows,
                        help="prompt copies per forward pass (whole prompts; shorter rows count less)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing; the shortest counts")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm = load(args.model)
    config = PP.PathPatchingConfig(task=TaskConfig(n_boxes=args.boxes, n_samples=args.samples), pool=args.samples,
                                   max_rows=args.max_rows, batch_size=args.samples).resolve(lm)
    base, corrupt = PP.pair_batches(lm, config)
    with torch.no_grad():
        lm.model(base.tokens[:2])  # the first forward of a process pays one-off set-up costs
    print(f"model {lm.spec.name}: {lm.n_layers} layers x {lm.n_heads} heads, {args.samples} prompts of "
          f"{base.seq_len} tokens, {lm.n_layers * lm.n_heads} senders per step, receivers: {args.receivers}, "
          f"torch threads {torch.get_num_threads()}")

    def new_records():
        records = PP.Records(lm, base, corrupt, config.batch_size)
        for start in records.starts():
            records.chunk(start)
        return records

    records, t_shared, shared = best_of(args.repeats, new_records)
    print(f"clean and corrupted runs, once for all four steps: {t_shared:.3f} s, {shared.passes} passes "
          f"(a quarter of the time is added to each step below)")

    fixed = {"last": [(lm.n_layers - 1, h) for h in range(min(2, lm.n_heads))],
             "middle": [(lm.n_layers // 2, h) for h in range(min(2, lm.n_heads))]}
    ratios, worst = [], 0.0
    previous = None
    for step in PP.STEPS:
        if step.receiver_input is None:
            receivers = []
        elif args.receivers == "search":
            receivers = PP.top_heads(previous, config.receivers_of(step.receiver_group), config.min_effect)
        else:
            receivers = fixed[args.receivers]
        src = PP.source_positions(corrupt, step.position, config.pairing_seed)
        fast, t_fast, ours = best_of(args.repeats, lambda: PP.path_patching_scores(
            lm, base, corrupt, step.position, receivers, step.receiver_input, src, config.batch_size,
            config.max_rows, records=records))
        one, t_one, theirs = best_of(args.repeats, lambda: PP.path_patching_scores_one_head_per_forward(
            lm, base, corrupt, step.position, receivers, step.receiver_input, src))
        t_ours = t_fast + t_shared / 4
        diff = float((fast - one).abs().max())
        worst = max(worst, diff)
        ratios.append(t_one / t_ours)
        named = ", ".join(f"L{l}H{h}" for l, h in receivers) or "none"
        print(f"\n{step.group} (senders at {step.position}; receivers {named})")
        print(f"  max |fast - one-at-a-time| = {diff:.1e}{'  EXCEEDS 1e-6' if diff > 1e-6 else ''} "
              f"(largest |score| {float(one.abs().max()):.1e})")
        print(f"  one head per forward: {t_one:.3f} s, forward passes {theirs.passes}, token positions {theirs.tokens:,}")
        print(f"  ours:                 {t_ours:.3f} s, forward passes {ours.passes} (+ {shared.passes / 4:g} shared), "
              f"token positions {ours.tokens:,}   ratio x{t_one / t_ours:.1f}")
        previous = fast

    # The authors' count (paper.md §6): per batch of 100 prompts, one pass per sender in step A and
    # two (sender-patched, then receivers written into a clean run) in each of steps B, C and D, plus
    # a clean and a corrupted caching pass per batch: 3 x (1,024 + 3 x 2 x 1,024) + 3 x 2 = 21,510
    # passes of 100 prompts. `search_cost` recounts it from the steps and counts ours from the plan
    # `path_patched_probs` follows, every sender assumed to reach a receiver below the last layer (an
    # upper bound: unreachable senders and last-token pass 2 only lower it).
    cost, seq_len = paper_shape_counts(lm, args.max_rows)
    print(f"\nforward passes of one full search at the paper's shape (32 x 32 heads, 300 prompts in batches of 100, "
          f"7 boxes = {seq_len} tokens; ours with max_rows {args.max_rows}, i.e. "
          f"{args.max_rows * seq_len:,} token positions per pass):")
    print(cost.to_string(index=False))
    total = cost.set_index("step").loc["total"]
    authors_passes, authors_tokens = total["authors' passes"], total["authors' token positions"]
    print(f"authors: {authors_passes:,} passes of 100 prompts; ours: {total['our passes']:,} passes, "
          f"as much work as {total['our token positions'] / (100 * seq_len):,.0f} passes of 100 whole prompts "
          f"(x{authors_tokens / total['our token positions']:.1f} fewer token positions)")
    print(f"max |fast - one-at-a-time| over the four steps = {worst:.1e}")
    print(f"speed-up x{min(ratios):.1f}")


if __name__ == "__main__":
    main()
