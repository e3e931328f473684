"""The README's Python API example runs as written (on the 8x8 digits)."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs():
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    from ffrun.experiment.datasets import load_splits
    s = load_splits("digits", val_size=300)
    rng = np.random.default_rng(0)
    # positives: images with their label; negatives: the same images with pixels shuffled
    x_neg = np.stack([rng.permutation(row) for row in s.x_train])
    namespace = {"x_pos": s.x_train, "y_pos": s.y_train, "x_neg": x_neg, "y_neg": s.y_train,
                 "x_val": s.x_val, "y_val": s.y_val, "print": lambda *a: None}
    exec(compile(code, "README.md", "exec"), namespace)
    results = namespace["mgr"].fit([(["softmax"], 1)])
    assert results[-1].metrics["softmax/acc"] > 0.5   # ten classes: chance is 10%
