"""Annotated pictures: sizes follow the face, captions stay inside, panels cover no other face, draw modes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from poster_fer.faces import load_image
from poster_fer.inference import FaceResult
from poster_fer.inference.annotate import (
    AUTO_BARS_MAX_FACES,
    DRAW_MODES,
    MIN_CAPTION_PX,
    draw_predictions,
    layout_predictions,
)
from poster_fer.inference.job import JobOptions
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def _face(x: float, y: float, w: float, h: float, label: str = "happiness") -> FaceResult:
    probs = {c: 0.02 for c in CLASSES}
    probs[label] = 1.0 - 0.02 * (len(CLASSES) - 1)
    lm = np.array([[x + 0.3 * w, y + 0.4 * h], [x + 0.7 * w, y + 0.4 * h], [x + 0.5 * w, y + 0.6 * h],
                   [x + 0.35 * w, y + 0.8 * h], [x + 0.65 * w, y + 0.8 * h]])
    return FaceResult(box=(x, y, w, h), landmarks=lm, score=0.9, label=label, probabilities=probs)


def _grid16() -> list[FaceResult]:
    """Where YuNet finds the 16 faces of a 1024 px 4 x 4 tiling of two portraits (256 px tiles)."""
    return [_face(82 + 256 * c + 4 * (r % 2), 45 + 256 * r, 86, 106, CLASSES[(r + c) % 2])
            for r in range(4) for c in range(4)]


def _overlap(a, b) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _inside(r, w: int, h: int) -> bool:
    x, y, rw, rh = r
    return x >= 0 and y >= 0 and x + rw <= w and y + rh <= h


def test_caption_height_follows_the_face_and_stays_legible():
    shape = (1000, 1000, 3)
    small = layout_predictions(shape, [_face(100, 100, 40, 40)], CLASSES, draw="label")[0]
    large = layout_predictions(shape, [_face(100, 100, 200, 200)], CLASSES, draw="label")[0]
    assert small.caption[3] >= MIN_CAPTION_PX  # still readable on a 40 px face
    assert large.caption[3] >= 2 * small.caption[3]  # grows with the face ...
    assert large.caption_scale > small.caption_scale and large.caption[2] > small.caption[2]
    # ... on the same image: the image size alone no longer decides
    small_big_image = layout_predictions((4000, 4000, 3), [_face(100, 100, 40, 40)], CLASSES, draw="label")[0]
    assert small_big_image.caption[3] == small.caption[3]
    # not absurd on a 4000 px photo with a 1500 px face: at most 1/24 of the short side
    huge = layout_predictions((4000, 3400, 3), [_face(900, 700, 1500, 1500)], CLASSES, draw="label")[0]
    assert large.caption[3] < huge.caption[3] <= 3400 / 24 + 1


def _tight16() -> list[FaceResult]:
    """16 faces packed 180 px apart in the top-left of a 1024 px image: no room beside most of them."""
    return [_face(60 + 180 * c, 60 + 180 * r, 86, 106) for r in range(4) for c in range(4)]


@pytest.mark.parametrize("crowd", [_grid16, _tight16])
def test_group_photo_panels_cover_no_other_face_and_captions_stay_inside(crowd):
    faces, h, w = crowd(), 1024, 1024
    boxes = [lay.box for lay in layout_predictions((h, w), faces, CLASSES, draw="none")]
    lays = layout_predictions((h, w), faces, CLASSES, draw="bars")
    panels = [lay.panel for lay in lays if lay.panel is not None]
    assert len(panels) >= 4  # where there is room the panel is drawn: they are not simply all left out
    if crowd is _grid16:
        assert len(panels) >= 12  # the tiled photo has room beside most faces
    for i, lay in enumerate(lays):
        assert lay.caption is not None and _inside(lay.caption, w, h)
        if lay.panel is None:
            continue
        assert _inside(lay.panel, w, h)
        assert not _overlap(lay.panel, lay.box)
        for j, other in enumerate(lays):
            if j != i:
                assert not _overlap(lay.panel, boxes[j]), (i, j)
                assert not _overlap(lay.panel, other.caption), (i, j)
                assert other.panel is None or not _overlap(lay.panel, other.panel), (i, j)
    # 16 faces is beyond what "auto" draws panels for: captions only
    assert all(lay.panel is None for lay in layout_predictions((h, w), faces, CLASSES))


def test_drawing_follows_the_layout_on_the_tiled_portrait():
    """Real pixels: bars mode changes the label-mode picture only inside the planned panels."""
    portrait = load_image(sample_path())[40:552, :512][::2, ::2]  # 256 x 256
    tile = np.ascontiguousarray(portrait)
    group = np.vstack([np.hstack([tile if (r + c) % 2 == 0 else tile[:, ::-1] for c in range(4)]) for r in range(4)])
    faces = _grid16()
    label = draw_predictions(group, faces, CLASSES, draw="label")
    bars = draw_predictions(group, faces, CLASSES, draw="bars")
    assert label.shape == group.shape == bars.shape  # no margin added: the copy keeps the input's size
    changed = np.any(label != bars, axis=2)
    inside = np.zeros_like(changed)
    for lay in layout_predictions(group.shape, faces, CLASSES, draw="bars"):
        if lay.panel is not None:
            x, y, pw, ph = lay.panel
            inside[y:y + ph, x:x + pw] = True
    assert changed.any() and not (changed & ~inside).any()


def test_captions_never_leave_the_image():
    h, w = 120, 100
    faces = [_face(-10, -5, 40, 40, "happiness"), _face(75, 90, 40, 40, "contempt"), _face(30, 40, 40, 30)]
    for lay in layout_predictions((h, w), faces, CLASSES, tracks=[12, 345, 6789], draw="label"):
        assert _inside(lay.caption, w, h) and _inside(lay.box, w, h)
    # a caption wider than the whole image is shrunk, not cut
    tiny = layout_predictions((30, 40), [_face(5, 5, 30, 20)], CLASSES, tracks=[1234], draw="label")[0]
    assert _inside(tiny.caption, 40, 30)
    assert draw_predictions(np.zeros((30, 40, 3), np.uint8), [_face(5, 5, 30, 20)], CLASSES).shape == (30, 40, 3)


def test_thumbnail_keeps_the_face_clear():
    """A 160 px portrait has no room beside the face: the panel is left out rather than drawn over it."""
    face = _face(55, 34, 54, 68, "neutral")
    (lay,) = layout_predictions((188, 160), [face], CLASSES, draw="bars")
    assert lay.panel is None and lay.caption is not None and _inside(lay.caption, 160, 188)
    assert not _overlap(lay.caption, (62, 40, 40, 56))  # the caption sits above the face, not on it


def test_draw_modes_draw_what_they_say():
    img = np.full((300, 400, 3), 128, np.uint8)
    face = _face(60, 80, 100, 120)
    out = {mode: draw_predictions(img, [face], CLASSES, draw=mode) for mode in DRAW_MODES}
    lay = {mode: layout_predictions(img.shape, [face], CLASSES, draw=mode)[0] for mode in DRAW_MODES}
    assert lay["bars"].panel is not None and lay["bars"].caption is not None
    assert lay["label"].panel is None and lay["label"].caption is not None
    assert lay["none"].panel is None and lay["none"].caption is None
    assert (img == 128).all()  # every mode drew on a copy
    # every mode draws only inside its planned rectangles: none the box, label also the caption, bars the panel
    for mode, parts in (("none", ("box",)), ("label", ("box", "caption")), ("bars", ("box", "caption", "panel"))):
        drawn = np.any(out[mode] != 128, axis=2)
        planned = np.zeros_like(drawn)
        for part in parts:
            x, y, pw, ph = getattr(lay[mode], part)
            assert drawn[y:y + ph, x:x + pw].any(), (mode, part)
            planned[y:y + ph, x:x + pw] = True
        assert not (drawn & ~planned).any(), mode
    assert np.array_equal(out["auto"], out["bars"])  # one face: auto draws panels
    many = [_face(10 + 75 * i, 100, 60, 60) for i in range(AUTO_BARS_MAX_FACES + 1)]
    assert all(lay.panel is None for lay in layout_predictions((600, 800), many, CLASSES))
    few = many[:AUTO_BARS_MAX_FACES]
    assert np.array_equal(draw_predictions(np.zeros((600, 800, 3), np.uint8), few, CLASSES),
                          draw_predictions(np.zeros((600, 800, 3), np.uint8), few, CLASSES, draw="bars"))


@pytest.mark.parametrize("bad", ["fancy", "Label", "", None, 3])
def test_an_unknown_draw_mode_is_a_clear_error(bad):
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=r"draw must be one of auto, label, bars, none; got"):
        draw_predictions(img, [], CLASSES, draw=bad)
    with pytest.raises(ValueError, match="draw must be one of"):
        JobOptions(draw=bad)


def test_predict_command_takes_draw(tmp_path, capsys):
    """--draw label through the real command: the picture is written, and nothing is drawn where a panel would be."""
    src = tmp_path / "portrait.png"
    shutil.copy(sample_path(), tmp_path / "portrait.jpg")
    from PIL import Image

    Image.open(tmp_path / "portrait.jpg").save(src)  # lossless, so untouched pixels can be compared exactly
    out = tmp_path / "out"
    assert main(["predict", str(src), "--out", str(out), "--draw", "label", "--no-progress"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    written = load_image(out / "portrait.png")
    original = load_image(src)
    assert written.shape == original.shape and not np.array_equal(written, original)
    probs = {c: 0.0 for c in CLASSES}  # the default model's classes; only the caption text matters to the layout
    probs[record["label"]] = record["confidence"]
    face = FaceResult(box=tuple(record["box"]), landmarks=None, score=None, label=record["label"],
                      probabilities=probs)
    (lay,) = layout_predictions(original.shape, [face], CLASSES, draw="bars")
    assert lay.panel is not None  # in bars mode a panel would have been drawn here ...
    x, y, pw, ph = lay.panel
    assert np.array_equal(written[y:y + ph, x:x + pw], original[y:y + ph, x:x + pw])  # ... label drew none
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(src), "--out", str(out), "--draw", "fancy"])
    assert exc.value.code == 2 and "invalid choice: 'fancy'" in capsys.readouterr().err


def test_command_choices_match_the_library():
    import argparse

    from poster_fer_apps.commands import predict

    parser = argparse.ArgumentParser()
    predict.register(parser.add_subparsers())
    (action,) = [a for a in parser._subparsers._group_actions[0].choices["predict"]._actions if a.dest == "draw"]
    assert tuple(action.choices) == DRAW_MODES and action.default == "auto"


def _dense_grid() -> list[FaceResult]:
    """A 4 x 4 grid of 60 px faces 12 px apart (a class photo): captions above a face land on the row above."""
    return [_face(20 + 72 * c, 30 + 80 * r, 60, 62, CLASSES[(r + c) % 3]) for r in range(4) for c in range(4)]


@pytest.mark.parametrize("draw", ["label", "bars"])
def test_no_caption_covers_another_face_or_caption_on_a_dense_grid(draw):
    """Issue 39 item 7: on a dense grid every label stays clear of the other faces' boxes and labels."""
    faces = _dense_grid()
    layout = layout_predictions((360, 320, 3), faces, CLASSES, draw=draw)
    for i, a in enumerate(layout):
        assert a.caption is not None and _inside(a.caption, 320, 360)
        for j, b in enumerate(layout):
            if i != j:
                assert not _overlap(a.caption, b.box), (i, j)
                assert not _overlap(a.caption, b.caption), (i, j)
                if a.panel is not None:
                    assert not _overlap(a.panel, b.box) and not _overlap(a.panel, b.caption)


def test_every_face_of_a_three_face_frame_gets_its_panel():
    """Issue 39 item 7: three tall faces across a 720 x 360 video frame, with room for one panel left of the first
    face and one in each gap, none right of the last: each face gets its panel (before, the first two took the
    gaps on their right and the last face had none)."""
    faces = [_face(140 + 220 * k, 120, 80, 150) for k in range(3)]
    layout = layout_predictions((360, 720, 3), faces, CLASSES, draw="bars")
    panels = [lay.panel for lay in layout]
    assert all(p is not None and _inside(p, 720, 360) for p in panels), panels
    rects = [lay.box for lay in layout] + [lay.caption for lay in layout]
    for i, p in enumerate(panels):
        assert not any(_overlap(p, r) for r in rects)
        assert not any(_overlap(p, q) for j, q in enumerate(panels) if j != i)


def test_tracks_are_numbered_in_reading_order():
    """Issue 39 item 7: new faces get ids as a reader meets them (rows from the top, left to right), whatever
    order the detector lists them in; a face that stays keeps its id."""
    from poster_fer.inference.tracking import IoUTracker, reading_order

    boxes = [(400, 20, 80, 90), (220, 30, 80, 90), (40, 25, 80, 90), (300, 200, 80, 90), (60, 210, 80, 90)]
    assert reading_order(boxes) == [2, 1, 0, 4, 3]
    tracker = IoUTracker()
    probs = [np.full(8, 1 / 8)] * len(boxes)
    ids = [t for t, _ in tracker.update(0, boxes, probs)]
    assert ids == [2, 1, 0, 4, 3]
    again = [t for t, _ in tracker.update(1, boxes[::-1], probs)]
    assert again == ids[::-1]
