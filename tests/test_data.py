"""Built-in data and image files: determinism, the split, odd and corrupt files."""

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from kolmotok.data import eval_set, load_images, make_source
from kolmotok.data.images import (
    REDUCE_MARGIN,
    ImageLoadError,
    list_images,
    load_image,
    read_rgb,
    resize_center_crop,
    resized_dims,
)
from kolmotok.data.photos import CROP_FACTORS, SPLITS
from kolmotok.data.shapes import NOISE_COMPLEXITY, draw


def test_photo_splits_are_disjoint():
    names = [n for split in SPLITS.values() for n in split]
    assert len(names) == len(set(names))


def test_training_photos_are_only_the_train_split():
    """What `--data photos` trains on is cut from the train photographs alone, and each crop
    holds pixels of the photograph it names."""
    from kolmotok.data.photos import load_photos

    src = make_source("photos", 32)
    crops, sources, scales = src.sample_with_sources(200, torch.Generator().manual_seed(0))
    assert set(sources) <= set(SPLITS["train"]) and len(set(sources)) >= 10
    assert set(scales) == set(CROP_FACTORS)
    assert torch.equal(crops, make_source("photos", 32).sample(200, torch.Generator().manual_seed(0)))
    photos = dict(zip(SPLITS["train"], load_photos("train")))
    for crop, name in zip(crops[:20], sources[:20]):  # a crop's colours lie within its photograph's range
        lo, hi = photos[name].amin(dim=(1, 2)), photos[name].amax(dim=(1, 2))
        assert (crop.amin(dim=(1, 2)) >= lo - 0.02).all() and (crop.amax(dim=(1, 2)) <= hi + 0.02).all()


def test_odd_modes_convert_to_rgb_by_the_documented_rule(tmp_path):
    """Grayscale repeated to RGB, 16-bit scaled by 65535, palette expanded, alpha composited on white."""
    from kolmotok.data.images import to_rgb_array

    grey = Image.fromarray(np.array([[0, 51], [204, 255]], np.uint8))
    np.testing.assert_allclose(to_rgb_array(grey)[..., 1], [[0, 0.2], [0.8, 1.0]], atol=1e-6)
    g16 = Image.fromarray(np.array([[0, 65535], [13107, 32768]], np.uint16))
    np.testing.assert_allclose(to_rgb_array(g16)[..., 2], [[0, 1], [0.2, 32768 / 65535]], atol=1e-6)
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (0, 0, 255, 0)  # fully transparent: white
    rgba[0, 2] = (0, 0, 0, 102)  # black at alpha 0.4 over white: 0.6
    out = to_rgb_array(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_allclose(out[0], [[1, 0, 0], [1, 1, 1], [0.6, 0.6, 0.6]], atol=1 / 255)
    pal = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    np.testing.assert_allclose(to_rgb_array(pal)[0] * 255, [[10, 20, 30], [200, 100, 0]], atol=1e-4)


def test_sources_are_deterministic_and_in_range():
    for spec in ("photos", "photos:test", "shapes", "shapes:gradient", "photos@3+shapes+shapes:flat@0.5"):
        src = make_source(spec, 32)
        a = src.sample(6, torch.Generator().manual_seed(3))
        b = src.sample(6, torch.Generator().manual_seed(3))
        assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1


def test_photo_eval_set_names_the_photograph_of_each_crop():
    """photos:calib has one colour photograph (chelsea) and two grayscale ones: a crop's
    colourfulness must agree with the photograph it is attributed to."""
    data = eval_set("photos:calib", 32, num_images=60)
    assert torch.equal(data.images, make_source("photos:calib", 32).sample(60, torch.Generator().manual_seed(1234)))
    assert set(data.names) == set(SPLITS["calib"])
    gray = (data.images.amax(1) - data.images.amin(1)).flatten(1).amax(1) < 1e-6
    assert gray.tolist() == [name != "chelsea.png" for name in data.names]


def test_eval_set_size_must_be_positive_except_all_of_a_folder():
    for spec in ("shapes", "photos:test"):
        with pytest.raises(ValueError, match="folder: data only"):
            eval_set(spec, 32, num_images=0)
    with pytest.raises(ValueError, match=">= 0"):
        eval_set("folder:/nowhere", 32, num_images=-1)


def test_shapes_complexity_labels():
    images, labels = draw(64, 32, torch.Generator().manual_seed(0))
    flat = labels == 0
    assert flat.any()
    assert torch.all(images[flat].flatten(2).std(-1) < 1e-6), "flat images must be one colour"
    assert (labels <= NOISE_COMPLEXITY).all()


def test_shapes_of_one_kind():
    grads = eval_set("shapes:gradient", 32, num_images=16)
    assert grads.labels is not None and (grads.labels == 1).all()
    noise = make_source("shapes:noise", 32).sample(4, torch.Generator().manual_seed(0))
    assert noise.flatten(1).std(-1).min() > 0.2


def test_bad_specs():
    for spec in ("nope", "photos:nosuchsplit", "folder:", "photos@x", "shapes:triangles"):
        with pytest.raises(ValueError):
            make_source(spec, 32)


def _write_odd_images(root):
    root.mkdir()
    Image.fromarray((np.random.rand(20, 30, 3) * 255).astype(np.uint8)).save(root / "rgb.png")
    Image.fromarray((np.random.rand(20, 30) * 65535).astype(np.uint16)).save(root / "gray16.png")
    Image.fromarray((np.random.rand(12, 12, 4) * 255).astype(np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray((np.random.rand(40, 25) * 255).astype(np.uint8)).convert("P").save(root / "pal.bmp")
    Image.fromarray((np.random.rand(16, 16, 3) * 255).astype(np.uint8)).save(root / "sub.jpg")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("ignored: not an image suffix")


def test_folder_with_odd_and_corrupt_files(tmp_path):
    _write_odd_images(tmp_path / "imgs")
    ev = eval_set(f"folder:{tmp_path / 'imgs'}", 16)
    assert ev.images.shape == (5, 3, 16, 16)
    assert ev.images.min() >= 0 and ev.images.max() <= 1
    assert not any("corrupt" in n for n in ev.names)
    sub = eval_set(f"folder:{tmp_path / 'imgs'}", 16, num_images=3)  # a fixed subset of the files
    assert len(sub.names) <= 3 and set(sub.names) <= set(ev.names)
    assert sub.names == eval_set(f"folder:{tmp_path / 'imgs'}", 16, num_images=3).names
    assert eval_set(f"folder:{tmp_path / 'imgs'}", 16, num_images=0).names == ev.names


def test_corrupt_file_is_named_and_skipped(tmp_path):
    _write_odd_images(tmp_path / "imgs")
    paths = sorted((tmp_path / "imgs").iterdir())
    loaded = load_images(paths, 16)
    failed = {p.name for p, _ in loaded.failures}
    assert failed == {"corrupt.png", "notes.txt"}
    assert all(str(p.name) in reason for p, reason in loaded.failures)
    with pytest.raises(ImageLoadError, match="corrupt.png"):
        load_image(tmp_path / "imgs" / "corrupt.png", 16)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png", 16)


def test_nan_huge_and_directory_inputs_are_named_and_skipped(tmp_path, monkeypatch):
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), mode="F").save(tmp_path / "nan.tif")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "big.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "ok.png")
    (tmp_path / "sub").mkdir()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 is then a decompression bomb
    loaded = load_images([tmp_path / n for n in ("nan.tif", "big.png", "sub", "ok.png")], 16)
    assert [p.name for p in loaded.paths] == ["ok.png"]
    reasons = {p.name: r for p, r in loaded.failures}
    assert "not finite" in reasons["nan.tif"] and "too large" in reasons["big.png"]
    assert "a directory" in reasons["sub"]


@pytest.mark.parametrize("orientation, turn", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                               (3, Image.Transpose.ROTATE_180)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    """A camera stores a portrait photo sideways with an orientation tag; it loads upright."""
    upright = Image.new("RGB", (48, 32), "white")
    upright.paste((255, 0, 0), (0, 0, 24, 16))  # red top-left quadrant, as a viewer shows it
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(turn).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "photo.jpg", 16)
    red = (x[0] > 0.8) & (x[1] < 0.3)
    assert red[:8, :8].float().mean() > 0.9 and red[8:].float().mean() < 0.1


def test_sixteen_bit_grey_with_a_transparent_value_is_white_there(tmp_path):
    grey = np.full((8, 8), 30000, dtype=np.uint16)
    grey[:2, :2] = 1000
    Image.fromarray(grey).save(tmp_path / "g16.png", transparency=1000)
    arr = read_rgb(tmp_path / "g16.png")
    np.testing.assert_allclose(arr[0, 0], 1.0)
    np.testing.assert_allclose(arr[4, 4], 30000 / 65535, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_images_are_shrunk_first_and_match_the_full_resize(tmp_path, fmt):
    """A photo 16x the model size or more is shrunk to exactly 8x the size the resize rule gives
    it (odd sizes included: the rule's rounding is kept), and the result is the full rule's."""
    from skimage import data as skdata

    size, (w, h) = 16, (700, 530)
    Image.fromarray(skdata.astronaut()).resize((w, h), Image.BICUBIC).save(tmp_path / "p", format=fmt, quality=95)
    shrunk = read_rgb(tmp_path / "p", size)
    assert shrunk.shape[:2] == tuple(REDUCE_MARGIN * d for d in resized_dims(h, w, size))
    full = resize_center_crop(read_rgb(tmp_path / "p"), size)
    diff = np.abs(load_image(tmp_path / "p", size).permute(1, 2, 0).numpy() - full)
    assert diff.mean() < 1e-3 and diff.max() < 0.01


@pytest.mark.parametrize("mode", ["P", "I", "F"])
def test_modes_a_filter_would_distort_are_read_whole(tmp_path, mode):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 200, (300, 400), dtype=np.uint8)).convert(mode)
    img.save(tmp_path / "x.tif")
    assert read_rgb(tmp_path / "x.tif", 8).shape == (300, 400, 3)


def test_damaged_exif_is_ignored_not_fatal(tmp_path, monkeypatch):
    Image.new("RGB", (20, 10), "red").save(tmp_path / "a.jpg")

    def broken(self):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    assert load_image(tmp_path / "a.jpg", 8).shape == (3, 8, 8)


def test_small_images_are_not_shrunk(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert read_rgb(tmp_path / "a.png", 16).shape == (40, 50, 3)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png", 16).permute(1, 2, 0).numpy(),
                                  resize_center_crop(read_rgb(tmp_path / "a.png"), 16))


def test_folders_follow_symbolic_links_once(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere" / "linked.png")
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "own.png")
    (root / "cameras").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)  # must not recurse forever
    (root / "one.png").symlink_to(tmp_path / "elsewhere" / "linked.png")
    (root / "broken.png").symlink_to(tmp_path / "nothing.png")
    listed = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert listed == ["broken.png", "cameras/linked.png", "one.png", "own.png"]  # broken: listed, reported when read
    (root / "aa_alias").symlink_to(root / "sub", target_is_directory=True)  # a second name for a real folder
    Image.new("RGB", (4, 4)).save(root / "sub" / "s.png")
    names = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert "sub/s.png" in names and "aa_alias/s.png" not in names  # the real folder's name, whatever the order


def test_folder_source_reads_lazily_and_skips_corrupt_files(tmp_path):
    import numpy as np
    from PIL import Image

    from kolmotok.data import make_source

    root = tmp_path / "tree"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.jpg")
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG broken")
    src = make_source(f"folder:{root}", 16)
    assert len(src.paths) == 7  # listed, not loaded
    batch = src.sample(20, torch.Generator().manual_seed(0))
    assert batch.shape == (20, 3, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    assert [p.name for p in src.bad] == ["bad.png"]
    again = make_source(f"folder:{root}", 16).sample(20, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)


def test_random_resized_crop_for_large_presets():
    import numpy as np

    from kolmotok.data.augment import training_view

    arr = np.random.default_rng(0).random((300, 400, 3), dtype=np.float32)
    views = [training_view(arr, 128, torch.Generator().manual_seed(s)) for s in range(3)]
    assert all(v.shape == (3, 128, 128) for v in views) and not torch.equal(views[0], views[1])


def test_webdataset_shards_stream_and_skip_corrupt_samples(tmp_path):
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    from kolmotok.data import make_source

    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"train-{shard}.tar")) as sink:
            for i in range(5):
                buf = io.BytesIO()
                Image.fromarray(np.full((24, 24, 3), 25 * (i + 1), np.uint8)).save(buf, format="PNG")
                sink.write({"__key__": f"s{shard}_{i}", "png": buf.getvalue(), "cls": b"0"})
            sink.write({"__key__": f"s{shard}_bad", "jpg": b"not an image"})
    src = make_source(f"wds:{tmp_path}/train-{{0..1}}.tar", 16)
    batch = src.sample(25, torch.Generator().manual_seed(0))
    assert batch.shape == (25, 3, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    # every image is one of the flat good samples: the bad ones left no blank or garbage image
    values = batch.flatten(1)
    assert (values.amax(1) - values.amin(1)).max() < 1e-5
    level = values[:, 0] * 255 / 25
    assert torch.allclose(level, level.round(), atol=1e-3) and set(level.round().int().tolist()) <= {1, 2, 3, 4, 5}


def test_an_output_whose_name_just_fits_is_written(tmp_path):
    """Atomic writes go through a temporary name beside the output: it must fit where the name fits."""
    from kolmotok.data.images import save_image

    name = "é" * 119 + ".png"  # 242 bytes: the temporary name would not fit if it held the whole name
    save_image(torch.zeros(3, 4, 4), tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    from kolmotok.io import short_name

    cut = short_name("日" * 100)  # 300 bytes, cut at a character boundary (valid UTF-8 for any file system)
    assert cut == "日" * 66 and len(cut.encode()) <= 200
