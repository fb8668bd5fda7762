"""Scaffolding the tests share: tiny networks, toy pools and datasets (one place to change them).

conftest.py builds each network once per session (fixtures ``fns``, ``fns_d1``, ``tiny``): one
``ModelFns`` per config, so jitted functions keyed on it (engine's static arguments) compile once for
every module that uses it.
"""

import functools
import importlib.util
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl import app  # noqa: F401  # Defines absl's own flags on the global FLAGS before ``launcher`` swaps it.
from absl import flags

from dcjax import data, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFINES = ("DEFINE_bool", "DEFINE_enum", "DEFINE_float", "DEFINE_integer", "DEFINE_list", "DEFINE_string")
K, SHAPE = 3, (8, 8, 1)  # The toy problem: 3 classes of 8x8 grey images.
TINY = models.ModelConfig(width=8, depth=2)  # The condensation tests' network (fixture ``fns``).
TINY_D1 = models.ModelConfig(width=8, depth=1)  # One block: fixtures ``fns_d1`` (K classes), ``tiny`` (4 classes).


def pool(n=30, seed=0, num_classes=K, offset=True):
    """n toy images (n, *SHAPE) drawn N(0, 1) from key ``seed`` and labels (n,) int32 = i % num_classes.

    ``offset`` adds each image's label to its pixels, so the classes differ (condensation has something to match).
    """
    labels = jnp.arange(n, dtype=jnp.int32) % num_classes
    images = jax.random.normal(jax.random.key(seed), (n,) + SHAPE)
    return (images + labels[:, None, None, None] if offset else images), labels


def dataset(n, seed=0):
    """``pool(n, seed)`` as an ArrayDataset of K classes, as the condensation runs read one."""
    images, labels = pool(n, seed)
    return data.ArrayDataset(np.asarray(images), np.asarray(labels), K, "mnist")


@functools.cache
def launcher(name: str):
    """(experiments/<name>.py loaded as a module, the FlagValues holding its flags, unparsed)."""
    fresh = flags.FlagValues()
    defines = {define: functools.partial(getattr(flags, define), flag_values=fresh) for define in _DEFINES}
    spec = importlib.util.spec_from_file_location(f"_flags_{name}", os.path.join(ROOT, "experiments", f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with mock.patch.multiple(flags, FLAGS=fresh, **defines), mock.patch.object(sys, "path", list(sys.path)):
        with mock.patch.dict(sys.modules, {spec.name: module}):  # absl names a flag's module from sys.modules.
            for shared in ("common", "configs"):  # Imported afresh: their FLAGS is this launcher's.
                sys.modules.pop(shared, None)
            spec.loader.exec_module(module)
    return module, fresh
