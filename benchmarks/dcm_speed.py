"""How much faster is DCM with all masks of a circuit trained in one optimisation than one mask at a time?

Chapter 5 trains one mask per (group, desideratum) of a circuit: 4 x 3 on the organism's base. The
batched trainer (`dcm.train_masks`) stacks every mask's training batch into one forward pass and
validates every rounded mask in shared passes; one at a time is `dcm.train_mask` per job, the
authors' loop. This script trains both ways on the same prepared data, checks that they select the
same heads (and masks equal to float noise), and prints the wall time of each and their ratio. It is a
measurement to read, not a test: timings depend on the machine and its load.

    OMP_NUM_THREADS=1 python benchmarks/dcm_speed.py                     # organism-base, the paper's sizes
    OMP_NUM_THREADS=1 python benchmarks/dcm_speed.py --pairs 400 --epochs 1
"""

from __future__ import annotations

import argparse
import time

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
    pairs = {d: dcm.dcm_pairs(lm, d, config) for d in D.DESIDERATA}
    jobs = [dcm.mask_job(lm, circuit.groups[g], g, d, config, pairs[d]) for d in D.DESIDERATA for g in GROUPS
            if circuit.groups[g]]
    print(f"model {variants.label(args.model)}: {len(jobs)} masks (groups with heads x {len(D.DESIDERATA)} "
          f"desiderata), {config.n_train} training pairs, {args.epochs} epochs, torch threads 1")

    start = time.perf_counter()
    together = dcm.train_masks(lm.model, jobs, config)
    t_together = time.perf_counter() - start
    start = time.perf_counter()
    alone = [dcm.train_mask(lm.model, j.heads, j.train, j.val, config) for j in jobs]
    t_alone = time.perf_counter() - start

    same_heads = all(dcm.selected_heads(j.heads, a[0]) == dcm.selected_heads(j.heads, b[0])
                     for j, a, b in zip(jobs, together, alone))
    max_diff = max(float((a[0] - b[0]).abs().max()) if len(j.heads) else 0.0 for j, a, b in zip(jobs, together, alone))
    print(f"same heads selected by every mask: {same_heads}; max |mask together - mask alone| = {max_diff:.1e}; "
          f"same validation accuracy: {all(a[2] == b[2] for a, b in zip(together, alone))}")
    print(f"one mask at a time: {t_alone:.1f} s   all masks together: {t_together:.1f} s")
    print(f"speed-up x{t_alone / t_together:.1f}")


if __name__ == "__main__":
    main()
