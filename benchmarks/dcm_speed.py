"""How much faster is DCM with all masks of a circuit trained in one optimisation than one mask at a time?

Chapter 5 trains one mask per (group, desideratum) of a circuit: 4 x 3 on the organism's base. One
at a time is the authors' loop: each run records its own source activations and trains its mask on
whole prompts (`dcm.mask_job` and `dcm.train_mask` per run, with the clean-prefix budget set to 0).
Together is what the book runs (`dcm.mask_jobs`, `dcm.train_masks`): each desideratum's source
prompts recorded once for every run, every mask's training batch in one forward pass, and only the
tokens from the patched one on run, on top of the base prompts' clean run recorded once
(`patching.prefix_reuse_hooks`). The script times both (preparation included), checks that they
select the same heads with the same validation and test accuracy (masks equal to float noise), and
prints the ratio last. It is a measurement to read, not a test: timings depend on the machine and
its load.

    OMP_NUM_THREADS=1 python benchmarks/dcm_speed.py                     # organism-base, the paper's sizes
    OMP_NUM_THREADS=1 python benchmarks/dcm_speed.py --pairs 400 --epochs 1
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from entity_tracking import data as D
from entity_tracking import dcm
from entity_tracking import path_patching as PP
from entity_tracking import variants
from entity_tracking.circuit import GROUPS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism-base")
    parser.add_argument("--pairs", type=int, default=2000, help="DCM pairs (the paper: 2,000)")
    parser.add_argument("--epochs", type=int, default=2, help="(the paper: 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    lm = variants.load(args.model)
    circuit = PP.stored_circuit(args.model)
    config = dcm.DCMConfig(task=D.TaskConfig(n_samples=args.pairs), epochs=args.epochs)
    runs = [(circuit.groups[g], g, d) for d in D.DESIDERATA for g in GROUPS if circuit.groups[g]]
    print(f"model {variants.label(args.model)}: {len(runs)} masks (groups with heads x {len(D.DESIDERATA)} "
          f"desiderata), {config.n_train} training pairs, {args.epochs} epochs, torch threads 1")

    start = time.perf_counter()
    together = dcm.run_dcms(lm, dcm.mask_jobs(lm, runs, config), config)
    t_together = time.perf_counter() - start
    alone_config = replace(config, prefix_budget_mb=0)
    start = time.perf_counter()
    alone = [dcm.run_dcm(lm, heads, g, d, alone_config) for heads, g, d in runs]
    t_alone = time.perf_counter() - start

    same_heads = all(a.heads == b.heads for a, b in zip(together, alone))
    max_diff = max(float((a.mask - b.mask).abs().max()) if len(a.mask) else 0.0 for a, b in zip(together, alone))
    same_acc = all((a.validation_accuracy, a.test_accuracy) == (b.validation_accuracy, b.test_accuracy)
                   for a, b in zip(together, alone))
    print(f"same heads selected by every mask: {same_heads}; max |mask together - mask alone| = {max_diff:.1e}; "
          f"same validation and test accuracy: {same_acc}")
    print(f"one mask at a time: {t_alone:.1f} s   all masks together: {t_together:.1f} s")
    print(f"speed-up x{t_alone / t_together:.1f}")


if __name__ == "__main__":
    main()
