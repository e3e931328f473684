"""Does CwComp's gap come from the frozen blocks' BatchNorm statistics? Load a finished cwcomp run,
score the classes readout on validation and test, then recompute every block's BN running statistics
from the training images with the final weights (block by block, in order) and score again."""
import sys
from pathlib import Path
import numpy as np, tensorflow as tf, keras
from ffrun.app.evaluate import load_run

run, mgr, epoch = load_run(Path(sys.argv[1]))
net, plan = run.network, run.plan
def score(tag):
    m = {**mgr.evaluate(plan.val, prefix="val/"), **mgr.evaluate(plan.test, prefix="test/")}
    print(tag, {k: round(v, 4) for k, v in m.items() if k.endswith("/acc")}, flush=True)
score(f"checkpoint epoch {epoch}")
train = plan.train[0].resolve(1)
train = train[0] if isinstance(train, tuple) else train
convs = [n for n in net.ff_names if hasattr(net.layers[n].layer, "layers")]
print("blocks", convs, flush=True)
for name in convs:
    seqm = net.layers[name].layer
    bn = seqm.layers[-1]
    pre = keras.Sequential(seqm.layers[:-1])
    s = s2 = 0.0; n = 0
    for i in range(0, len(train), 1000):
        outs = net.transform(train.X[i:i+1000], train.y[i:i+1000], train.y_ff[i:i+1000])
        node = next(nd for nd in net.nodes if nd.name == name)
        x = outs[node.inputs[0]]
        h = tf.cast(pre(x), tf.float64)
        s += tf.reduce_sum(h, [0, 1, 2]).numpy(); s2 += tf.reduce_sum(h * h, [0, 1, 2]).numpy()
        n += int(h.shape[0] * h.shape[1] * h.shape[2])
    mean = s / n; var = s2 / n - mean ** 2
    print(name, "old mean/var", float(tf.reduce_mean(bn.moving_mean)), float(tf.reduce_mean(bn.moving_variance)),
          "new", mean.mean(), var.mean(), flush=True)
    bn.moving_mean.assign(mean.astype(np.float32)); bn.moving_variance.assign(var.astype(np.float32))
    score(f"after recalibrating {name}")
