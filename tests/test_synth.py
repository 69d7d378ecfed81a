"""The synthetic set keeps SYNTH.md's promises: geometry, palette, grammar, determinism."""

import hashlib

import numpy as np
import pytest

from arlm import synth
from arlm.data.writers import write_synth
from arlm.errors import UserError


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = list(write_synth(tmp_path / "a", 300, (64, 64), seed=3, shard_size=100, workers=1))
    b = list(write_synth(tmp_path / "b", 300, (64, 64), seed=3, shard_size=100, workers=2))
    list(write_synth(tmp_path / "c", 300, (64, 64), seed=4, shard_size=100, workers=1))
    assert len(a) == len(b) == 3
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_out_dir_is_not_mixed_with_an_old_set(tmp_path):
    list(write_synth(tmp_path, 30, (32, 32), shard_size=10, workers=1))
    with pytest.raises(UserError, match="overwrite"):
        list(write_synth(tmp_path, 10, (32, 32), shard_size=10, workers=1))
    list(write_synth(tmp_path, 10, (32, 32), shard_size=10, overwrite=True, workers=1))
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar"]  # stale shards removed


def _nearest_name(pixels):
    names = list(synth.COLORS) + list(synth.BACKGROUNDS)
    refs = np.array(list(synth.COLORS.values()) + list(synth.BACKGROUNDS.values()), dtype=np.float32)
    d = ((pixels[..., None, :].astype(np.float32) - refs) ** 2).sum(-1)
    return np.array(names)[d.argmin(-1)]


@pytest.mark.parametrize("size", [(64, 64), (64, 128), (48, 32)])
def test_samples_keep_the_spec(size):
    h, w = size
    kinds_seen = set()
    for s in synth.generate(200, size, seed=11):
        rec, img = s.record, np.asarray(s.image)
        kinds_seen.add(rec["kind"])
        assert img.shape == (h, w, 3) and rec["size"] == [h, w]
        assert set(rec) == {"kind", "caption", "size", "background", "objects", "relation", "word", "seed"}
        # a sample is a pure function of its recorded seed
        again, rec2 = synth.make_sample(rec["seed"], size)
        assert rec2 == rec and np.array_equal(np.asarray(again), img)
        names = _nearest_name(img)
        covered = np.zeros((h, w), bool)
        boxes = [o["bbox"] for o in rec["objects"]]
        for o in rec["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            assert x1 - x0 >= min(h, w) / 5 and y1 - y0 >= min(h, w) / 5
            inside = names[y0:y1, x0:x1]
            assert (inside == o["color"]).any()
            assert set(np.unique(inside)) <= {o["color"], rec["background"]}
            exact = (img[y0:y1, x0:x1] == synth.COLORS[o["color"]]).all(-1)
            assert np.array_equal(exact, inside == o["color"])  # object pixels carry the exact palette colour
            covered[y0:y1, x0:x1] = True
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert synth._apart(a, b)
        if rec["kind"] != "text":
            assert (names[~covered] == rec["background"]).all()  # noise never changes a background's name
        cap = rec["caption"]
        if rec["kind"] == "single":
            assert len(boxes) == 1 and cap.startswith(f"{synth.article(rec['objects'][0]['color'])} ")
        elif rec["kind"] == "count":
            assert len(boxes) in (2, 3) and cap.split()[0] == {2: "two", 3: "three"}[len(boxes)]
            assert len({(o["color"], o["shape"]) for o in rec["objects"]}) == 1
        elif rec["kind"] == "relation":
            assert len(boxes) == 2 and rec["relation"] in cap
            assert synth.relation_holds(boxes[0], boxes[1], rec["relation"], h, w, min_frac=1 / 8)
        else:
            assert rec["word"] in synth.words() and 2 <= len(rec["word"]) <= 6 and f'"{rec["word"]}"' in cap
            color = cap.split(" in ")[1].split()[0]
            assert (names == color).sum() > 0 and (img == synth.COLORS[color]).all(-1).sum() > 0
        if " background" in cap:
            assert cap.endswith(f" on a {rec['background']} background")
    assert kinds_seen == set(synth.KINDS)


def test_articles():
    assert synth.article("orange") == "an" and synth.article("red") == "a"
    caps = [s.caption for s in synth.generate(300, (64, 64), seed=1, kinds=("single",))]
    assert any(c.startswith("an orange ") for c in caps)
    assert not any(c.startswith("a orange") for c in caps)


@pytest.mark.parametrize("bad", ["0", "64x", "x64", "8", "64y64", "64x64x3"])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(UserError):
        synth.parse_size(bad)


def test_kinds_subset():
    assert {s.record["kind"] for s in synth.generate(40, (32, 32), kinds=("count", "text"))} == {"count", "text"}
    with pytest.raises(UserError):
        list(synth.generate(1, (32, 32), kinds=("sphere",)))


def test_a_word_list_and_words_held_out(tmp_path, run_cli):
    held = synth.words()[::10]
    (tmp_path / "held.txt").write_text("\n".join(held) + "\n")
    kept = synth.word_list(None, str(tmp_path / "held.txt"))
    assert set(kept) == set(synth.words()) - set(held) and synth.word_list(None) is None
    drawn = {s.record["word"] for s in synth.generate(300, (32, 32), kinds=("text",), vocabulary=kept)}
    assert drawn and not drawn & set(held)
    only = {s.record["word"] for s in synth.generate(40, (32, 32), kinds=("text",), vocabulary=synth.word_list("UP,OF"))}
    assert only == {"UP", "OF"}
    # the other kinds are drawn as before: a word list changes the text kind's words alone
    a = [s.record for s in synth.generate(20, (32, 32), kinds=("single", "count"))]
    assert a == [s.record for s in synth.generate(20, (32, 32), kinds=("single", "count"), vocabulary=("UP",))]
    for bad, why in (("cat", "capital"), ("ABCDEFG", "capital"), ("UP", "no words left")):
        with pytest.raises(UserError, match=why):
            synth.word_list(bad, "UP" if why == "no words left" else None)
    code, out, err = run_cli("data", "synth", "--n", "30", "--kinds", "text", "--words", "UP,OF", "--size", "32",
                             "--out", tmp_path / "set")
    assert code == 0, err
    code, out, err = run_cli("data", "synth", "--n", "3", "--words", "up", "--out", tmp_path / "bad")
    assert code == 1 and "capital" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
