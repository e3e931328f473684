"""On a machine with a GPU: a preset trains for an epoch there, with its graphs on the GPU.
Skipped where TensorFlow sees no GPU (every machine of this project so far)."""
import pytest
import tensorflow as tf

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not tf.config.list_physical_devices("GPU"),
                                                  reason="no GPU visible to TensorFlow")]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_paper_small_trains_an_epoch_on_the_gpu(cfg_factory, tmp_path, precision):
    from ffrun.run import loop, outputs
    cfg = cfg_factory(["experiment=paper_small", "data=digits", "data.val_size=300", "epochs=1", "units=256",
                       f"model.precision={precision}", "checkpoint.every=0", "tensorboard.enabled=false"])
    results = loop.train(cfg, tmp_path, outputs.make_console())
    assert results["status"] == "completed" and results["test_acc"] is not None
    # the variables the step updates live on the GPU, so no batch goes through the host
    from ffrun.experiment.build import build_run
    net = build_run(cfg).network
    kernel = net.layers["dense1"].layer.kernel
    assert "GPU" in kernel.device, kernel.device
