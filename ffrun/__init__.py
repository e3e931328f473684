"""ffrun: Forward-Forward experiments declared in Hydra YAML, trained on TensorFlow."""
import os

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly() -> None:
    """TF 2.21 prints a oneDNN banner and CUDA probing lines straight to fd 2 whatever
    TF_CPP_MIN_LOG_LEVEL says. Park fd 2 in a temp file while TF loads and finds its devices;
    replay it if anything fails, so real errors are never hidden. FFRUN_TF_VERBOSE=1 skips this."""
    if os.environ.get("FFRUN_TF_VERBOSE"):
        return
    import sys
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as parked:
        os.dup2(parked.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
        except BaseException as exc:
            os.dup2(saved, 2)
            if isinstance(exc, KeyboardInterrupt):   # a stop, not a failure: TF's start-up lines explain nothing
                raise
            parked.seek(0)
            sys.stderr.write(parked.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_API = {"BaseFFLayer": "core.layers", "FFDense": "core.layers", "FFGoodness": "core.layers",
        "FFOverlay": "core.layers", "FFPreNorm": "core.layers", "FFSoftmax": "core.layers", "Task": "core.layers",
        "FFData": "core.trainer", "TaskEntry": "core.trainer", "TrainMgr": "core.trainer"}
__all__ = list(_API)
try:
    from importlib.metadata import PackageNotFoundError, version as _installed_version
    __version__ = _installed_version("ffrun")
except PackageNotFoundError:    # a source tree on sys.path, not installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    # Lazy, so that commands which do not train (ffrun-report) start without TensorFlow.
    if name in _API:
        import importlib
        _import_tensorflow_quietly()
        return getattr(importlib.import_module(f"ffrun.{_API[name]}"), name)
    raise AttributeError(f"module 'ffrun' has no attribute {name!r}")
