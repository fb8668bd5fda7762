"""Tests for dcjax.data: loading (TFDS mocked, never the network), class index sampling, splits."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcjax import data

MOCK_EXAMPLES = 24
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)


@pytest.fixture(scope="module")
def tfds():
    # Through the library, so TensorFlow is configured (quiet, off the GPU) exactly as in real use.
    return data._import_tfds()


@pytest.fixture
def mock_mnist(tfds):
    # Function-scoped: the patches must not leak into the real-data test.
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        yield


def _raw_mock(tfds, split="train"):
    ds = tfds.load("mnist", split=split, as_supervised=True, data_dir="/nonexistent")
    return next(iter(tfds.as_numpy(ds.batch(MOCK_EXAMPLES).take(1))))


# ----------------------------------------------------------------------------------------------- loading


def test_import_is_cheap():
    code = "import sys, dcjax.data; sys.exit('tensorflow' in sys.modules or 'tensorflow_datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_mock_yields_mnist_like_uint8(tfds, mock_mnist):
    images, labels = _raw_mock(tfds)
    assert images.shape == (MOCK_EXAMPLES, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (MOCK_EXAMPLES,) and np.all((labels >= 0) & (labels < 10))


def test_load_split_normalises_like_manual(tfds, mock_mnist, tmp_path):
    raw_images, raw_labels = _raw_mock(tfds)
    # An existing directory (mock_data ignores it): a missing one fails before TFDS when not downloading.
    ds = data.load_split("mnist", "train", data_dir=str(tmp_path))
    assert ds.images.shape == (MOCK_EXAMPLES, 28, 28, 1) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int32 and np.array_equal(ds.labels, raw_labels)
    assert ds.num_classes == 10 and ds.name == "mnist" and ds.image_shape == (28, 28, 1) and len(ds) == MOCK_EXAMPLES
    manual = (raw_images.astype(np.float64) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.images, manual, atol=1e-5)


def test_load_train_test(mock_mnist):
    train, test = data.load_train_test("mnist")
    for ds in (train, test):
        assert ds.images.shape == (MOCK_EXAMPLES, 28, 28, 1) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int32 and np.all((ds.labels >= 0) & (ds.labels < ds.num_classes))


def test_unknown_dataset_fails_before_tfds(monkeypatch):
    def boom():
        raise AssertionError("TFDS must not be touched for an unknown name")

    monkeypatch.setattr(data, "_import_tfds", boom)
    with pytest.raises(data.DataError, match="'imagenet'.*mnist, fashion_mnist, svhn_cropped, cifar10"):
        data.load_split("imagenet", "train")


def _no_name_resolves(*args, **kwargs):
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


@pytest.mark.parametrize("where", ["arg", "env", "default"])
def test_missing_data_is_one_line_data_error(tfds, monkeypatch, tmp_path, where):
    cause = AssertionError("Dataset mnist: could not find data in /x.\nPlease make sure to call download_and_prepare")

    def absent(*args, **kwargs):
        raise cause

    monkeypatch.setattr(tfds, "load", absent)
    monkeypatch.setattr(socket, "getaddrinfo", _no_name_resolves)  # Default dir: it would download; offline here.
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    if where == "env":
        monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError) as info:
        data.load_split("mnist", "train", data_dir=str(tmp_path) if where == "arg" else None)
    message = str(info.value)
    assert "\n" not in message and "mnist" in message and "TFDS_DATA_DIR" in message and "--data_dir" in message
    assert ("~/tensorflow_datasets" if where == "default" else str(tmp_path)) in message
    assert info.value.__cause__ is cause


@pytest.mark.skipif(
    not os.environ.get("TFDS_DATA_DIR"),
    reason="TFDS_DATA_DIR is unset; set it to a directory holding mnist/3.0.1 (CI does)",
)
@pytest.mark.slow
def test_real_mnist_train():
    if not os.path.isdir(os.path.join(os.environ["TFDS_DATA_DIR"], "mnist", "3.0.1")):
        pytest.skip("TFDS_DATA_DIR has no mnist/3.0.1")
    train = data.load_split("mnist", "train")
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.float32
    assert tuple(np.bincount(train.labels, minlength=10)) == MNIST_TRAIN_COUNTS
    assert abs(float(train.images.mean(dtype=np.float64))) < 0.01


# ----------------------------------------------------------------------------------------- normalisation


def test_normalization_constants():
    assert data.DATASETS == ("mnist", "fashion_mnist", "svhn_cropped", "cifar10")
    assert data.NORMALIZATION["svhn_cropped"] == ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    assert data.NORMALIZATION["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert data.NORMALIZATION["fashion_mnist"] == ((0.2861,), (0.3530,))


def test_normalize_roundtrip_and_channel_check():
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    x = data.normalize(pixels, "cifar10")
    assert x.dtype == np.float32 and x.shape == pixels.shape
    np.testing.assert_allclose(x[..., 1], (pixels[..., 1] / 255 - 0.4822) / 0.1994, rtol=1e-5)
    np.testing.assert_allclose(data.denormalize(x, "cifar10"), pixels / 255, atol=1e-6)
    with pytest.raises(data.DataError, match="channel"):
        data.normalize(pixels, "mnist")


# ------------------------------------------------------------------------------------------- class index


def _labels(counts, seed=0):
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def test_build_class_index_ragged():
    labels = _labels((3, 7, 1, 5))
    index = data.build_class_index(labels, 4)
    assert index.table.shape == (4, 7) and index.table.dtype == jnp.int32
    np.testing.assert_array_equal(index.counts, [3, 7, 1, 5])
    table = np.asarray(index.table)
    for c, count in enumerate((3, 7, 1, 5)):
        np.testing.assert_array_equal(table[c, :count], np.flatnonzero(labels == c))
        np.testing.assert_array_equal(table[c], np.resize(table[c, :count], 7))  # documented cyclic padding


def test_build_class_index_errors():
    with pytest.raises(data.DataError, match="class 2 has no examples"):
        data.build_class_index(np.array([0, 1, 3, 1]), 4)
    with pytest.raises(data.DataError, match="in \\[0, 3\\)"):
        data.build_class_index(np.array([0, 1, 3]), 3)


@pytest.mark.slow
def test_sample_per_class_in_jit():
    labels = _labels((4, 9, 3, 6))
    index = data.build_class_index(labels, 4)
    sample = jax.jit(data.sample_per_class, static_argnums=2)
    out = np.asarray(sample(jax.random.key(0), index, 3))
    assert out.shape == (4, 3) and out.dtype == np.int32
    for c in range(4):
        assert np.all(labels[out[c]] == c) and len(set(out[c])) == 3
    np.testing.assert_array_equal(out, sample(jax.random.key(0), index, 3))
    np.testing.assert_array_equal(out, data.sample_per_class(jax.random.key(0), index, 3))
    assert not np.array_equal(out, sample(jax.random.key(1), index, 3))
    # A smaller draw under the same key is a prefix.
    np.testing.assert_array_equal(out[:, :2], sample(jax.random.key(0), index, 2))


def test_sample_class_matches_per_class_and_accepts_traced_class():
    index = data.build_class_index(_labels((4, 9, 3, 6)), 4)
    key = jax.random.key(7)
    per_class = np.asarray(data.sample_per_class(key, index, 3))
    keys = jax.random.split(key, 4)
    one = jax.jit(data.sample_class, static_argnums=3)
    for c in range(4):
        np.testing.assert_array_equal(one(keys[c], index, jnp.int32(c), 3), per_class[c])
    full = np.asarray(data.sample_class(key, index, 1, 9))
    assert sorted(full) == sorted(np.asarray(index.table)[1])


@pytest.mark.slow
def test_sample_per_class_is_uniform():
    labels = _labels((3, 7, 1, 5))
    index = data.build_class_index(labels, 4)
    keys = jax.random.split(jax.random.key(3), 2000)
    draws = jax.jit(jax.vmap(lambda k: data.sample_class(k, index, 1, 3)))(keys)
    draws = np.asarray(draws)  # [2000, 3] from class 1 (7 examples)
    assert all(len(set(row)) == 3 for row in draws[:200])
    members = np.flatnonzero(labels == 1)
    freq = (draws[:, :, None] == members).any(axis=1).mean(axis=0)
    np.testing.assert_allclose(freq, 3 / 7, atol=0.05)  # std ~0.011
    first = (draws[:, 0, None] == members).mean(axis=0)
    np.testing.assert_allclose(first, 1 / 7, atol=0.04)  # std ~0.008
    per_class = jax.jit(jax.vmap(lambda k: data.sample_per_class(k, index, 1)))(keys[:500])
    assert set(np.asarray(per_class)[:, 2, 0]) == set(np.flatnonzero(labels == 2))


def test_sample_size_checks():
    labels = _labels((3, 7, 1, 5))
    index = data.build_class_index(labels, 4)
    with pytest.raises(data.DataError, match="class 2 has only 1"):
        data.sample_per_class(jax.random.key(0), index, 2)
    with pytest.raises(data.DataError, match="class 0 has only 3"):
        data.sample_class(jax.random.key(0), index, 0, 4)
    with pytest.raises(data.DataError, match="largest class has 7"):
        data.sample_per_class(jax.random.key(0), index, 8)
    # Inside jit the counts are traced: no check, and the cyclic padding keeps every index in its class.
    out = np.asarray(jax.jit(data.sample_per_class, static_argnums=2)(jax.random.key(0), index, 5))
    np.testing.assert_array_equal(labels[out], np.repeat(np.arange(4), 5).reshape(4, 5))


# ---------------------------------------------------------------------------------------------- splits


def test_split_indices():
    parts = data.split_indices(jax.random.key(0), 1000, {"target": 300, "rest": -1, "canary": 50})
    assert {k: len(v) for k, v in parts.items()} == {"target": 300, "rest": 650, "canary": 50}
    joined = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(joined), np.arange(1000))
    for v in parts.values():
        assert v.dtype == np.int32 and np.all(np.diff(v) > 0)
    again = data.split_indices(jax.random.key(0), 1000, {"target": 300, "rest": -1, "canary": 50})
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = data.split_indices(jax.random.key(1), 1000, {"target": 300, "rest": -1, "canary": 50})
    assert not np.array_equal(parts["target"], other["target"])


@pytest.mark.parametrize("sizes", [{"a": 600, "b": 401}, {"a": -1, "b": -1}, {"a": -2}])
def test_split_indices_errors(sizes):
    with pytest.raises(data.DataError):
        data.split_indices(jax.random.key(0), 1000, sizes)


def test_stratified_subset():
    labels = _labels((30, 12, 25, 10))
    subset = data.stratified_subset(jax.random.key(0), labels, 10, 4)
    assert subset.shape == (40,) and subset.dtype == np.int32 and len(set(subset)) == 40
    np.testing.assert_array_equal(labels[subset], np.repeat(np.arange(4), 10))
    np.testing.assert_array_equal(subset, data.stratified_subset(jax.random.key(0), labels, 10, 4))
    assert not np.array_equal(subset, data.stratified_subset(jax.random.key(1), labels, 10, 4))
    with pytest.raises(data.DataError, match="class 3 has 10 examples, fewer than per_class=11"):
        data.stratified_subset(jax.random.key(0), labels, 11, 4)
