"""Flags shared by the launchers, and the one place where errors become exit codes.

Launchers stay thin (Flax-examples style): parse flags, build frozen configs, call one
library function, report. Library code defines no flags and prints nothing.
"""

import os
import sys

from absl import flags
from absl import logging

from dcjax import models

FLAGS = flags.FLAGS


def define_data_flags():
    flags.DEFINE_string("dataset", "mnist", "TFDS dataset name (mnist, fashion_mnist, "
                        "svhn_cropped, cifar10).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory; default: $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets (TFDS downloads there when online).")


def define_model_flags():
    flags.DEFINE_enum("model", "convnet", models.MODEL_NAMES, "Network architecture.")
    flags.DEFINE_integer("width", 128, "ConvNet width (channels).", lower_bound=1)
    flags.DEFINE_integer("depth", 3, "ConvNet depth (blocks).", lower_bound=1)
    flags.DEFINE_enum("norm", "instancenorm", models.NORMS, "ConvNet normalisation.")
    flags.DEFINE_enum("activation", "relu", models.ACTIVATIONS, "ConvNet activation.")
    flags.DEFINE_enum("pooling", "avgpool", models.POOLINGS, "ConvNet pooling.")
    flags.DEFINE_enum("net_init", "reference", models.INITS,
                      "Weight init: 'reference' = PyTorch default uniform, 'flax' = Flax defaults.")
    flags.DEFINE_enum("conv_impl", "im2col", models.CONV_IMPLS,
                      "Convolution lowering: im2col (matmul; fastest on CPU) or lax.conv.")


def define_run_flags():
    flags.DEFINE_integer("seed", 0, "Root PRNG seed; every random choice derives from it.")
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_bool("overwrite", False, "Replace finished results in --workdir.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first: one "
                      "process per host of a multi-host GPU/TPU job (see BUILD.md).")


def init_runtime():
    """Multi-host jobs join JAX's distributed runtime before any other JAX call."""
    if FLAGS.distributed:
        import jax
        jax.distributed.initialize()


def model_config():
    return models.ModelConfig(
        name=FLAGS.model, width=FLAGS.width, depth=FLAGS.depth, norm=FLAGS.norm,
        activation=FLAGS.activation, pooling=FLAGS.pooling, init=FLAGS.net_init,
        conv_impl=FLAGS.conv_impl)


class _DropLibraryInfo:
    """absl-handler filter: INFO records from TFDS/Orbax internals drown the progress lines."""

    NOISY = ("orbax", "tensorflow_datasets")

    def filter(self, record):
        return record.levelno > 20 or not any(n in record.pathname for n in self.NOISY)


def quiet_libraries():
    """TFDS imports TensorFlow: keep it quiet before it loads; hide library INFO chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_DropLibraryInfo())


def fail(message: str):
    """One clear line on stderr and a non-zero exit: the contract for bad input."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def run_guarded(fn, *errors):
    """Calls fn(); user-facing errors become `fail`, anything else is a real crash."""
    from dcjax import data, workdir
    known = (ValueError, data.DataError, workdir.WorkdirError) + errors
    try:
        return fn()
    except known as e:
        logging.debug("user error", exc_info=True)
        fail(str(e))


def launcher_main(run):
    """absl main for a launcher: no stray arguments, runtime and logs set up, errors in one line."""
    def main(argv):
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        init_runtime()
        quiet_libraries()
        run_guarded(run)
    return main
