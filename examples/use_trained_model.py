"""Use a trained Fashion-MNIST model elsewhere: load it, embed images, find each one's nearest neighbours.

mlcl export runs/qs --out models/qs           # safetensors + config, loadable without pickle
python examples/use_trained_model.py models/qs  # a run folder works too (it is rebuilt with its data)
"""

from __future__ import annotations

import argparse

import torch

import mlcl
from mlcl.data.registry import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported folder (mlcl export) or a run folder")
    parser.add_argument("--head", default="fine", help="a projection head, or 'encoder' for the features")
    args = parser.parse_args()

    model = mlcl.load_run(args.model)  # encoder + heads in eval mode, with level and class names
    print(f"heads: {', '.join(model.head_names)}; levels: "
          + "; ".join(f"{level.name} ({len(level.classes)} classes)" for level in model.levels))

    test = load_dataset("fashion-mnist", val_size=0, limit_test=1000).test
    vectors = model.embed(test.inputs, head=args.head)  # (N, D), L2-normalised for a head
    fine = next(level for level in model.levels if level.name == "fine")
    queries, bank = vectors[:5], vectors[5:]
    nearest = (queries @ bank.T).topk(5, dim=1).indices + 5
    for i, row in enumerate(nearest.tolist()):
        neighbours = ", ".join(fine.classes[test.targets["fine"][j]] for j in row)
        print(f"{fine.classes[test.targets['fine'][i]]:>12} -> nearest 5: {neighbours}")
    agree = (test.targets["fine"][nearest] == test.targets["fine"][:5, None]).float().mean()
    print(f"{agree:.0%} of the neighbours share the query's class")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
