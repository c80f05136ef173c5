"""Data loaders, tested on small files written in each data set's real on-disk format."""

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from capsmm.config import DataConfig
from capsmm.data import BatchLoader, ImageSet, ModalSplit, image_split, load_image_dataset, random_crop_flip, resolve_data_root, same_class_partners
from capsmm.errors import DataError


def write_idx(path, array):
    """The MNIST idx format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root, folder, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / "torchvision" / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / "torchvision" / folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_family_reads_torchvision_raw_files(tmp_path, name, folder):
    arrays = write_mnist_like(tmp_path, folder)
    data = load_image_dataset(DataConfig(name=name, root=str(tmp_path), download=False))
    assert data.in_shape == (1, 28, 28) and data.num_classes == 10
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(data.test.labels, torch.from_numpy(arrays["t10k"][1]).long())


def write_cifar(root, hundred, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "torchvision" / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    classes = 100 if hundred else 10
    files = (["train"], ["test"]) if hundred else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    written = {}
    for split, names in zip(("train", "test"), files):
        chunks = []
        for name in names:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, classes, n)]
            (folder / name).write_bytes(pickle.dumps({"data": data, label_key: labels}))
            chunks.append((data, labels))
        written[split] = chunks
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(classes)]}))
    return written


def expect_written_sums(monkeypatch, root, hundred):
    """Make torchvision expect the MD5s of the files written here (the library keeps its checks on)."""
    cls = datasets.CIFAR100 if hundred else datasets.CIFAR10
    folder = root / "torchvision" / cls.base_folder
    md5 = lambda name: hashlib.md5((folder / name).read_bytes()).hexdigest()  # noqa: E731
    monkeypatch.setattr(cls, "train_list", [[name, md5(name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5(name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})
    return folder


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("CAPSMM_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize("name, hundred", [("cifar10", False), ("cifar100", True)])
def test_cifar_reads_torchvision_python_batches(tmp_path, monkeypatch, name, hundred):
    written = write_cifar(tmp_path, hundred)
    expect_written_sums(monkeypatch, tmp_path, hundred)
    data = load_image_dataset(DataConfig(name=name, root=str(tmp_path), download=False))
    assert data.in_shape == (3, 32, 32) and data.num_classes == (100 if hundred else 10)
    first, labels = written["train"][0]
    # CIFAR rows are channel-major 3 x 32 x 32
    assert torch.equal(data.train.images[0], torch.from_numpy(first[0].reshape(3, 32, 32)))
    assert data.train.labels[: len(labels)].tolist() == labels
    assert len(data.train) == sum(len(l) for _, l in written["train"])


def test_cifar_batches_are_hashed_once_and_again_when_they_change(tmp_path, monkeypatch):
    import capsmm.data.integrity as integrity

    write_cifar(tmp_path, hundred=False)
    folder = expect_written_sums(monkeypatch, tmp_path, hundred=False)
    hashed = []
    real = integrity.check_integrity
    monkeypatch.setattr(integrity, "check_integrity", lambda path, md5: hashed.append(Path(path).name) or real(path, md5))
    config = DataConfig(name="cifar10", root=str(tmp_path), download=False)
    load_image_dataset(config)
    assert sorted(set(hashed)) == ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    hashed.clear()
    load_image_dataset(config)
    assert hashed == []  # verified before, unchanged since
    # a batch replaced by a pickle that would run code: same name, other bytes
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 6}))
    with pytest.raises(DataError, match="cifar10.*corrupted"):
        load_image_dataset(config)
    assert "data_batch_3" in hashed


def test_cifar_with_the_real_sums_refuses_other_files(tmp_path):
    write_cifar(tmp_path, hundred=False)  # random bytes: not the published batches
    with pytest.raises(DataError, match="corrupted"):
        load_image_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))


@pytest.mark.parametrize("name, expected", [
    ("fashion-mnist", "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte in {root}/torchvision/FashionMNIST/raw"),
    ("cifar10", "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta in {root}/torchvision/cifar-10-batches-py"),
])
def test_missing_data_names_the_expected_path_and_files(tmp_path, name, expected):
    with pytest.raises(DataError) as info:
        load_image_dataset(DataConfig(name=name, root=str(tmp_path), download=False))
    message = str(info.value)
    assert expected.format(root=tmp_path) in message and "\n" not in message


def test_truncated_file_is_a_data_error(tmp_path):
    write_mnist_like(tmp_path, "MNIST")
    path = tmp_path / "torchvision" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="unreadable"):
        load_image_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))


def test_digits_is_offline_and_split_deterministically():
    from sklearn.datasets import load_digits

    a = load_image_dataset(DataConfig(name="digits"))
    b = load_image_dataset(DataConfig(name="digits"))
    assert (len(a.train), len(a.test), a.in_shape, a.num_classes) == (1437, 360, (1, 8, 8), 10)
    assert torch.equal(a.test.images, b.test.images)
    # the split is a partition of scikit-learn's 1,797 digits, 0..16 rescaled to 0..255, each with its label
    bunch = load_digits()
    expected = torch.cat([torch.from_numpy(bunch.images * 255 / 16).round().flatten(1), torch.from_numpy(bunch.target)[:, None]], 1)
    split = torch.cat([torch.cat([s.images.flatten(1).double(), s.labels[:, None].double()], 1) for s in (a.train, a.test)])
    assert torch.equal(split.unique(dim=0), expected.double().unique(dim=0)) and len(split) == len(expected)
    # stratified: each class holds its 20% share of the test set, up to rounding
    share = 0.2 * torch.bincount(torch.from_numpy(bunch.target))
    assert ((torch.bincount(a.test.labels) - share).abs() <= 1).all()


def test_subsets_are_stratified_by_class_and_fixed():
    full = load_image_dataset(DataConfig(name="digits"))
    part = load_image_dataset(DataConfig(name="digits", train_subset=100, test_subset=7))
    assert len(part.train) == 100 and len(part.test) == 7
    assert torch.bincount(part.train.labels, minlength=10).tolist() == [10] * 10  # digits are balanced: 10 each
    again = load_image_dataset(DataConfig(name="digits", train_subset=100, test_subset=7))
    assert torch.equal(part.train.images, again.train.images)
    # 100 distinct samples of the full training split, each with its label (no test sample leaks in)
    rows = lambda s: {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(s.images, s.labels)}  # noqa: E731
    assert len(rows(part.train)) == 100 and rows(part.train) <= rows(full.train) and rows(part.test) <= rows(full.test)


def test_stratified_indices_on_sorted_and_unbalanced_labels():
    from capsmm.data import stratified_indices

    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)  # sorted by class, very unbalanced
    index = stratified_indices(labels, 10, torch.Generator().manual_seed(0))
    assert len(index) == 10 and index.tolist() == sorted(index.tolist())
    assert torch.bincount(labels[index], minlength=3).tolist() == [8, 1, 1]  # every class, in proportion
    assert torch.equal(stratified_indices(labels, 1000, torch.Generator()), torch.arange(100))


def write_folder(root, colour, sizes):
    for split in ("train", "test"):
        for index, cls in enumerate(["zebra", "ant", "cat"]):  # not sorted on purpose
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k, size in enumerate(sizes):
                value = 40 * index + k
                if colour:
                    Image.new("RGB", size, (value, 255 - value, 7)).save(folder / f"{k}.png")
                else:
                    Image.new("L", size, value).save(folder / f"{k}.png")


@pytest.mark.parametrize("colour", [False, True])
def test_image_folder_any_size_grayscale_or_colour(tmp_path, colour):
    write_folder(tmp_path, colour, sizes=[(10, 14), (40, 33), (64, 64)])
    data = load_image_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=12))
    assert data.classes == ["ant", "cat", "zebra"]
    assert data.in_shape == ((3 if colour else 1), 12, 12)
    assert len(data.train) == 9 and len(data.test) == 9
    ant = data.train.images[data.train.labels == 0]
    assert int(ant[0, 0, 0, 0]) == 40  # "ant" was written with index 1 -> value 40


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_a_corrupt_image_in_a_folder_is_a_one_line_error_naming_it(tmp_path, content):
    write_folder(tmp_path, colour=False, sizes=[(8, 8)])
    broken = tmp_path / "train" / "cat" / "broken.png"
    broken.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_image_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert str(broken) in str(info.value) and "\n" not in str(info.value)


def test_image_folder_relative_path_and_layout_errors(tmp_path):
    write_folder(tmp_path / "pets", False, sizes=[(8, 8)])
    data = load_image_dataset(DataConfig(name="imagefolder", root=str(tmp_path), path="pets", image_size=8))
    assert data.num_classes == 3
    with pytest.raises(DataError, match="needs train/ and test/"):
        load_image_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    (tmp_path / "pets" / "test" / "ant").rename(tmp_path / "pets" / "test" / "bee")
    with pytest.raises(DataError, match="test classes"):
        load_image_dataset(DataConfig(name="imagefolder", root=str(tmp_path), path="pets", image_size=8))


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSMM_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert str(resolve_data_root("/elsewhere")) == "/elsewhere"  # a given root beats the variable
    assert resolve_data_root("~/x") == Path.home() / "x"
    monkeypatch.delenv("CAPSMM_DATA")
    assert str(resolve_data_root(None)) == "data"


def small_set(n=50):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return ImageSet(images, torch.arange(n) % 3)


def test_batch_order_depends_only_on_seed_and_epoch_and_covers_every_sample():
    loader = BatchLoader(image_split(small_set(), [0.0], [1 / 255]), 8, shuffle=True, seed=3)
    first = torch.cat([x[:, 0, 0, 0] for x, _ in loader.epoch(1)])
    again = torch.cat([x[:, 0, 0, 0] for x, _ in BatchLoader(image_split(small_set(), [0.0], [1 / 255]), 8, shuffle=True, seed=3).epoch(1)])
    other = torch.cat([x[:, 0, 0, 0] for x, _ in loader.epoch(2)])
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.round().long().tolist()) == list(range(50))
    assert len(loader) == 7


def test_normalisation_uses_mean_and_std():
    loader = BatchLoader(image_split(small_set(4), [0.5], [0.25]), 4)
    x, _ = next(iter(loader))
    torch.testing.assert_close(x[:, 0, 0, 0], (torch.arange(4) / 255 - 0.5) / 0.25)


def test_crop_flip_without_padding_returns_the_image_or_its_mirror():
    images = torch.randint(0, 255, (64, 3, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54


def test_crop_shifts_content_by_at_most_the_padding():
    image = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    image[0, 0, 8, 8] = 255
    for seed in range(20):
        out = random_crop_flip(image, torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(out[0, 0], as_tuple=True)
        assert len(ys) == 1 and abs(int(ys[0]) - 8) <= 2 and (abs(int(xs[0]) - 8) <= 2 or abs(int(xs[0]) - 7) <= 2)


def test_pairing_matches_classes_and_is_redrawn_per_epoch_only_when_asked():
    audio = ModalSplit(torch.arange(30).float()[:, None], torch.arange(30) % 3)
    images = ModalSplit(torch.arange(300).float()[:, None] * 10, torch.arange(300) % 3)
    train = BatchLoader({"audio": audio, "image": images}, 8, shuffle=True, seed=0, anchor="audio", repair=True)
    test = BatchLoader({"audio": audio, "image": images}, 8, anchor="audio")
    seen = {}
    for epoch in (0, 1):
        for loader, name in ((train, "train"), (test, "test")):
            pairs = [(int(a), int(i)) for batch, labels in loader.epoch(epoch) for a, i in zip(batch["audio"][:, 0], batch["image"][:, 0])]
            assert sorted(a for a, _ in pairs) == list(range(30))  # every anchor sample once per epoch
            assert all(a % 3 == (i // 10) % 3 for a, i in pairs)  # partners share the class
            seen[name, epoch] = dict(pairs)
    assert seen["test", 0] == seen["test", 1] and seen["train", 0] != seen["train", 1]


def test_pairing_needs_every_class_in_both():
    with pytest.raises(DataError, match="class 2 has samples in one modality but none in the other"):
        same_class_partners(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), torch.Generator())
