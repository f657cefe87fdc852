"""How much faster is path patching with many senders per forward pass than one sender per pass?

Prints the wall time of one path-patching step (every head as a sender) both ways and their ratio,
after checking that both give the same scores. It is a measurement to read, not a test: timings
depend on the machine and its load.

    OMP_NUM_THREADS=1 python benchmarks/path_patching_speed.py                      # organism-base
    OMP_NUM_THREADS=1 python benchmarks/path_patching_speed.py --model random       # organism-shaped random model
    python benchmarks/path_patching_speed.py --step position_transmitter --samples 100
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from entity_tracking import models
from entity_tracking import path_patching as PP


def load(name: str):
    if name == "random":  # the organism's shape (train.py defaults), random weights: runs before checkpoints exist
        from entity_tracking.testing import save_tiny_llama

        return models.load_model(str(save_tiny_llama(tempfile.mkdtemp(), n_layers=4, n_heads=8, d_model=128)))
    return models.load_model(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-base", help="registry name, local directory, or 'random'")
    parser.add_argument("--step", default="position_transmitter", choices=[s.group for s in PP.STEPS])
    parser.add_argument("--samples", type=int, default=100, help="base prompts")
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--max-rows", type=int, default=4096, help="prompt copies per batched forward pass")
    args = parser.parse_args()

    torch.manual_seed(0)
    lm = load(args.model)
    config = PP.PathPatchingConfig(n_boxes=args.boxes, n_samples=args.samples, pool=args.samples,
                                   max_rows=args.max_rows, batch_size=args.samples)
    base, corrupt = PP.pair_batches(lm, config)
    step = PP.STEP_OF[args.step]
    # Receivers: the layer-last heads, so every earlier sender has a path to them.
    receivers = [(lm.n_layers - 1, h) for h in range(min(2, lm.n_heads))] if step.receiver_input else []
    src = PP.source_positions(corrupt, step.position, config.seed)
    senders = lm.n_layers * lm.n_heads

    start = time.perf_counter()
    batched = PP.path_patching_scores(lm, base, corrupt, step.position, receivers, step.receiver_input, src,
                                      config.batch_size, config.max_rows)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    one = PP.path_patching_scores_one_head_per_forward(lm, base, corrupt, step.position, receivers,
                                                       step.receiver_input, src)
    t_one = time.perf_counter() - start

    print(f"model {lm.spec.name}: {lm.n_layers} layers x {lm.n_heads} heads, {args.samples} prompts of "
          f"{base.seq_len} tokens, step {step.group} ({senders} senders, torch threads {torch.get_num_threads()})")
    print(f"max |batched - one-at-a-time| = {(batched - one).abs().max().item():.2e}")
    print(f"one head per forward: {t_one:.2f} s   batched ({config.max_rows} rows per pass): {t_batched:.2f} s   "
          f"speed-up x{t_one / t_batched:.1f}")


if __name__ == "__main__":
    main()
