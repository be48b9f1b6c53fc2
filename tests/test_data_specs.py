"""Data specs that name nothing usable fail at once with the spec in the message, never hang or
silently read something else: ``folder:`` without a path, ``wds:`` shards that are missing,
unreadable or empty."""

import io
import signal
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from kolmotok.data import eval_set, make_source

pytest.importorskip("webdataset")


@pytest.fixture
def deadline():
    """Turn a hang into a failure (the old wds: stream retried unreadable shards forever)."""
    def expire(*_):
        signal.alarm(1)  # again, until the error escapes a reader that swallows exceptions
        raise TimeoutError("still reading after 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def png_shard(path, n=3):
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((24, 24, 3), 40 * (i + 1), np.uint8)).save(buf, format="PNG")
            sink.write({"__key__": f"{path.stem}_{i}", "png": buf.getvalue()})


def test_folder_without_a_path_is_not_the_current_directory(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "here.png")
    monkeypatch.chdir(tmp_path)
    for spec in ("folder:", "photos@1+folder:"):
        with pytest.raises(ValueError, match="folder: needs a path"):
            eval_set(spec, 16, num_images=4)


def test_wds_missing_shards_are_named(tmp_path, deadline):
    png_shard(tmp_path / "train-0.tar")
    pattern = f"{tmp_path}/train-{{0..2}}.tar"
    with pytest.raises(ValueError, match=r"wds:.*train-\{0\.\.2\}\.tar: 2 of its 3 shards do not exist: .*-1\.tar"):
        eval_set(f"wds:{pattern}", 16, num_images=4)
    with pytest.raises(ValueError, match="nonexist-0.tar"):
        make_source("wds:/nonexist-{0..1}.tar", 16)


@pytest.mark.parametrize("content", [b"junk!", None], ids=["junk", "empty-tar"])
def test_wds_shards_without_any_sample_fail_instead_of_hanging(tmp_path, deadline, content):
    path = tmp_path / "bad.tar"
    if content is None:
        tarfile.open(path, "w").close()  # a valid tar with no members
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"wds:.*bad\.tar: \d+ shard reads in a row gave no sample"):
        eval_set(f"wds:{path}", 16, num_images=4)


def test_wds_unreadable_shard_among_good_ones_is_skipped(tmp_path, deadline):
    png_shard(tmp_path / "part-0.tar")
    (tmp_path / "part-1.tar").write_bytes(b"junk!")
    batch = make_source(f"wds:{tmp_path}/part-{{0..1}}.tar", 16).sample(8, torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 16, 16)
    # all 8 come from the good shard's three flat images (levels 40, 80, 120), none from the junk
    levels = {round(v * 255) for v in batch.flatten(1)[:, 0].tolist()}
    assert (batch.flatten(1).amax(1) - batch.flatten(1).amin(1)).max() < 1e-5 and levels <= {40, 80, 120}


def test_folder_paths_with_mixture_characters_home_and_dangling_links(tmp_path, monkeypatch):
    """A folder named with + or @ is read as that folder (train and eval alike); ~ is the home
    directory; a link to nothing is listed, and reading it reports it."""
    from kolmotok.data import list_images, load_images

    for name in ("shots@2x", "my+imgs"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 20), "red").save(tmp_path / name / "a.png")
        spec = f"folder:{tmp_path / name}"
        assert make_source(spec, 16).sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
        assert eval_set(spec, 16).images.shape == (1, 3, 16, 16)
    mix = make_source(f"folder:{tmp_path / 'shots@2x'}@2+shapes", 16)  # in a mixture the last @ weighs
    assert mix.weights.tolist() == [2.0, 1.0] and mix.sources[0].name == f"folder:{tmp_path / 'shots@2x'}"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert eval_set("folder:~/my+imgs", 16).names == [str(tmp_path / "my+imgs" / "a.png")]
    (tmp_path / "my+imgs" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    files = list_images(tmp_path / "my+imgs")
    assert [f.name for f in files] == ["a.png", "gone.png"]
    assert [(p.name, "no such file" in why) for p, why in load_images(files, 16).failures] == [("gone.png", True)]


def test_shared_sources_finds_overlapping_training_data(tmp_path, monkeypatch):
    from kolmotok.data import shared_sources

    for sub in ("proj/data/train/a", "proj/data/train2", "elsewhere/data/train"):
        (tmp_path / sub).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    trained = "photos@3+folder:data/train@2"  # typed relative to the training directory
    proj = str(tmp_path / "proj")
    inside = f"folder:{tmp_path}/proj/data/train/a"
    assert shared_sources(inside, trained, proj) == [str(tmp_path / "proj/data/train/a")]
    assert shared_sources(f"folder:{tmp_path}/proj/data/train2", trained, proj) == []  # a sibling, not inside
    assert shared_sources("folder:data/train", trained, proj) == []  # the same words, another folder
    assert shared_sources(inside, trained, None) == []  # where training ran is unknown: no guess
    assert shared_sources(f"folder:{tmp_path}/proj/data", trained, proj) == [str(tmp_path / "proj/data")]  # holds it
    assert shared_sources("photos:train", trained, proj) == ["photos:train"]  # photos is photos:train
    assert shared_sources("photos:calib", trained, proj) == []
    assert shared_sources("wds:/x/{0..3}.tar", "wds:/x/{0..3}.tar", None) == ["wds:/x/{0..3}.tar"]
    assert shared_sources("folder:", trained, proj) == [] and shared_sources("nonsense@x", trained, proj) == []
