"""DeeperForward's own Tiny net, run from a checkout of their code, on the MNIST file ffrun reads: the
peer beside `deeperforward_tiny_mnist` on the same CPU and data.

    python benchmarks/peer_deeperforward.py --code <their checkout> --epochs 1

Needs PyTorch (not one of ffrun's dependencies: `pip install torch`). Nothing of their code is copied
here: the script imports their `model/tinycnn.py` from ``--code`` and calls its own `update` (one epoch
of training), `pruning` (the readout range chosen on the validation split) and `test_local_acc`, as
their `main.py` does. The data follow their `data/mnist_dataloader.py`: pixels / 255, normalized with
mean 0.1307 and std 0.3081, then resized to 32x32 (bilinear; `--size 28` keeps the original size),
50,000 / 10,000 split by `random_split` under seed 2222, batches of 128. Their schedule is a cosine over
`--schedule-epochs` (their default 20) of which the first `--epochs` run, so a short run shows the
start of their full run. Prints one line per epoch: training seconds, the validation accuracy of the
chosen range, the range, the test accuracy and each layer's own validation accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def load_mnist(path: str, size: int):
    """Their transform on the whole arrays: ToTensor, Normalize, Resize."""
    import torch
    import torch.nn.functional as F

    with np.load(path) as data:
        arrays = {key: data[key] for key in ("x_train", "y_train", "x_test", "y_test")}

    def images(x: np.ndarray) -> torch.Tensor:
        x = (torch.tensor(x, dtype=torch.float32)[:, None] / 255.0 - 0.1307) / 0.3081
        return x if size == x.shape[-1] else F.interpolate(x, size=(size, size), mode="bilinear",
                                                            align_corners=False)

    train = torch.utils.data.TensorDataset(images(arrays["x_train"]), torch.tensor(arrays["y_train"]).long())
    test = torch.utils.data.TensorDataset(images(arrays["x_test"]), torch.tensor(arrays["y_test"]).long())
    return train, test


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", required=True, help="a checkout of DeeperForward's code (holds model/tinycnn.py)")
    parser.add_argument("--data", default=os.path.join(os.environ.get("FFRUN_DATA_DIR", "data"), "mnist.npz"))
    parser.add_argument("--epochs", type=int, default=1, help="epochs to run")
    parser.add_argument("--schedule-epochs", type=int, default=20, help="the cosine schedule's length")
    parser.add_argument("--size", type=int, default=32, help="image side after resizing (theirs: 32)")
    parser.add_argument("--seed", type=int, default=2222, help="their main.py's seed")
    parser.add_argument("--valid-size", type=int, default=10000, help="images held out of training (theirs: 10,000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, os.path.abspath(args.code))
    from model.tinycnn import TinyCNN  # their file, imported from their checkout

    torch.set_num_threads(args.threads)
    train, test = load_mnist(args.data, args.size)
    torch.manual_seed(2222)                      # their split's seed
    train, valid = torch.utils.data.random_split(train, [len(train) - args.valid_size, args.valid_size])
    torch.manual_seed(args.seed)
    loader = lambda data, shuffle: torch.utils.data.DataLoader(data, batch_size=128, shuffle=shuffle)
    train_batches, valid_batches, test_batches = loader(train, True), loader(valid, False), loader(test, False)
    model = TinyCNN(1, num_class=10, dropout=0.2, learning_rate=0.08, epochs=args.schedule_epochs, lr_decay=0.1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}x{args.size} images")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.update(train_batches)
        seconds = time.perf_counter() - start
        valid_acc, _ = model.pruning(valid_batches)
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_batches:
                correct += int((model(x).argmax(1) == y).sum())
        layers = ", ".join(f"{acc:.2f}" for acc in model.test_local_acc(valid_batches))
        print(f"epoch {epoch}: train {seconds:.0f} s, validation {valid_acc:.2f} "
              f"(layers {int(model.start_layer) + 1}-{int(model.end_layer) + 1}), "
              f"test {100 * correct / len(test):.2f}, each layer on validation: {layers}", flush=True)


if __name__ == "__main__":
    main()
