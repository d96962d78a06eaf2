"""Draw predictions onto images: a box, landmarks and a ``label pct`` caption per face, and a probability panel.

Why sizes follow each face and not the image: a group photo holds many small faces and a portrait one large one;
scaling text with the image made every panel cover the neighbouring faces on the first and hide the face on a
thumbnail. Here the caption height grows with the face box, clamped so that it stays legible on a 40 px face
(:data:`MIN_CAPTION_PX`) and modest on a 4000 px photo (at most 1/:data:`MAX_CAPTION_DIVISOR` of the
image's short side). Captions are kept inside the image. A probability panel is drawn only where it covers no
other face's box, no caption and no other panel (right, left, below, then above the face); where no such spot
exists the panel is left out for that face rather than drawn on a margin added outside the image, because the
annotated copy keeps the input's size: video frames must all have one size, and the ``box``/``landmarks`` in the
records stay valid on the annotated picture. The caption still gives the label and its probability, and the
records give every probability.

:func:`layout_predictions` plans every rectangle without drawing (tests and other renderers check geometry with
it); :func:`draw_predictions` draws that plan and nothing outside it (box outlines lie inside the box).
Draw modes (:data:`DRAW_MODES`): ``none`` still draws the boxes, because an unchanged copy of the input would tell
nothing; ``auto`` draws panels for at most :data:`AUTO_BARS_MAX_FACES` faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .recognizer import FaceResult
from .tracking import reading_order

__all__ = [
    "AUTO_BARS_MAX_FACES", "DRAW_MODES", "FaceLayout", "caption_height", "check_draw", "class_colour",
    "draw_predictions", "layout_predictions", "resolve_draw",
]

#: ``label``: box, landmarks and caption; ``bars``: also a probability panel per face (where it fits);
#: ``none``: boxes and landmarks only, no text (what was detected, nothing covering a face); ``auto``: ``bars``
#: for up to :data:`AUTO_BARS_MAX_FACES` faces, else ``label``.
DRAW_MODES = ("auto", "label", "bars", "none")

#: ``auto`` draws panels up to this many faces. A panel is about as tall as its face and wider than it: beside
#: one to four faces (a portrait, a couple, a small family) it usually finds free space and is worth reading;
#: on a group photo the panels crowd out the picture even where they fit, and the records hold every number.
AUTO_BARS_MAX_FACES = 4

#: Smallest caption bar, in pixels: capitals are then about 8 px high, the least that reads at 100 % zoom.
MIN_CAPTION_PX = 15
#: Caption bar height as a fraction of the face box's shorter side, before clamping.
CAPTION_FACE_FRACTION = 0.2
#: The caption bar is never taller than the image's short side divided by this (a 1500 px face on a 4000 px
#: photo gets a caption that reads when the photo is shown whole, not a banner).
MAX_CAPTION_DIVISOR = 24

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ASCENT, _DESCENT = cv2.getTextSize("Hg", _FONT, 1.0, 1)[0][1], cv2.getTextSize("Hg", _FONT, 1.0, 1)[1]
_PANEL_NAME_CHARS = 10  # class names are cut to this many characters in the panel

# Distinct, readable colours (RGB) cycled by class index.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 200, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (170, 110, 40),
)

Rect = tuple[int, int, int, int]  # (x, y, w, h) in pixels, like FaceResult.box


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of class ``index``."""
    return _PALETTE[index % len(_PALETTE)]


def check_draw(draw: object) -> str:
    """``draw`` if it is one of :data:`DRAW_MODES`, else a ValueError naming the choices."""
    if not isinstance(draw, str) or draw not in DRAW_MODES:
        raise ValueError(f"draw must be one of {', '.join(DRAW_MODES)}; got {draw!r}")
    return draw


def resolve_draw(draw: str, n_faces: int) -> str:
    """The mode actually drawn for ``n_faces`` faces: ``auto`` becomes ``bars`` or ``label``."""
    draw = check_draw(draw)
    if draw == "auto":
        return "bars" if n_faces <= AUTO_BARS_MAX_FACES else "label"
    return draw


@dataclass(frozen=True)
class FaceLayout:
    """Where one face's drawing goes. Rectangles are ``(x, y, w, h)`` inside the image.

    ``caption`` is None in ``none`` mode; ``panel`` is None unless the mode is ``bars`` and a free spot was
    found. ``caption_scale``/``row``/``thickness`` are the font scale, the panel's row height and the line
    width, all derived from the face size.
    """

    box: Rect
    caption_text: str
    caption: Rect | None
    caption_scale: float
    panel: Rect | None
    row: int
    thickness: int


def _clip_box(box: Sequence[float], w: int, h: int) -> Rect:
    x0 = int(round(min(max(float(box[0]), 0.0), w - 1)))
    y0 = int(round(min(max(float(box[1]), 0.0), h - 1)))
    x1 = int(round(min(max(float(box[0]) + float(box[2]), x0 + 1), w)))
    y1 = int(round(min(max(float(box[1]) + float(box[3]), y0 + 1), h)))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(r: Rect, w: int, h: int) -> bool:
    return r[0] >= 0 and r[1] >= 0 and r[0] + r[2] <= w and r[1] + r[3] <= h


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(v, hi))


def _scale_for(height: float) -> float:
    """Font scale whose text (ascent + descent) fills ``height`` pixels with a little air."""
    return 0.8 * height / (_ASCENT + _DESCENT)


def caption_height(face_box: Sequence[float], shape: Sequence[int]) -> int:
    """Caption bar height for a face box in an image of ``shape`` (height first): follows the face, clamped."""
    h, w = int(shape[0]), int(shape[1])
    side = max(1.0, min(float(face_box[2]), float(face_box[3])))
    high = max(MIN_CAPTION_PX, min(h, w) / MAX_CAPTION_DIVISOR)
    return int(round(min(max(CAPTION_FACE_FRACTION * side, MIN_CAPTION_PX), high)))


def _caption_text(face: FaceResult, track: int | None) -> str:
    return f"{face.label} {face.confidence:.0%}" + (f" #{track}" if track is not None else "")


@dataclass(frozen=True)
class _PanelGeometry:
    """Sizes inside a panel with ``row`` px rows: class name, bar, then the probability in percent."""

    width: int
    height: int
    scale: float
    thick: int
    pad: int
    name_w: int
    bar_w: int
    pct_w: int


def _panel_geometry(classes: Sequence[str], row: int) -> _PanelGeometry:
    scale = _scale_for(row)
    thick = max(1, round(row / 16))
    name_w = max(cv2.getTextSize(c[:_PANEL_NAME_CHARS], _FONT, scale, thick)[0][0] for c in classes)
    pct_w = cv2.getTextSize("100%", _FONT, scale, thick)[0][0]
    pad, bar_w = max(2, row // 5), 4 * row
    return _PanelGeometry(width=pad + name_w + pad + bar_w + pad + pct_w + pad, height=row * len(classes) + 2 * pad,
                          scale=scale, thick=thick, pad=pad, name_w=name_w, bar_w=bar_w, pct_w=pct_w)


def layout_predictions(
    shape: Sequence[int],
    faces: Sequence[FaceResult],
    classes: Sequence[str],
    tracks: Sequence[int | None] | None = None,
    draw: str = "auto",
) -> list[FaceLayout]:
    """Plan the drawing of ``faces`` on an image of ``shape`` (``rgb.shape``, height first), one entry per face.

    Captions are placed face by face in reading order, above the face (else below, else inside its top or bottom
    edge), left-, right- or centre-aligned, at the first spot inside the image that covers no other face's box and
    no caption already placed; where none is free at full size the text is shrunk to the face's width and tried
    again, and as a last resort it goes inside the top of its own box. Panels (``bars``) slide along each side of
    the face (right, left, below, above) and are kept only where they cover no face, no caption and no other panel;
    the face with the fewest free spots chooses first, and a face without one gets a smaller panel or none (see the
    module docstring for why).
    """
    h, w = int(shape[0]), int(shape[1])
    mode = resolve_draw(draw, len(faces))
    if tracks is not None and len(tracks) != len(faces):
        raise ValueError(f"tracks has {len(tracks)} entries for {len(faces)} faces")
    boxes = [_clip_box(f.box, w, h) for f in faces]
    caps = [caption_height(b, (h, w)) for b in boxes]
    texts = [_caption_text(f, tracks[i] if tracks is not None else None) for i, f in enumerate(faces)]
    captions: list[Rect | None] = [None] * len(faces)
    scales = [_scale_for(c) for c in caps]
    if mode != "none":
        for i in reading_order(boxes):
            captions[i], scales[i] = _place_caption(i, boxes, texts[i], caps[i], captions, (h, w))
    rows = [max(12, round(0.65 * c)) for c in caps]  # panel rows: a little smaller than the caption
    panels: list[Rect | None] = [None] * len(faces)
    if mode == "bars":
        panels, rows = _place_panels(boxes, caps, rows, [c for c in captions if c is not None], classes, (h, w))
    return [FaceLayout(box=boxes[i], caption_text=texts[i], caption=captions[i], caption_scale=scales[i],
                       panel=panels[i], row=rows[i], thickness=max(2, round(caps[i] / 8)))
            for i in range(len(faces))]


def _caption_size(text: str, cap: int, width: int) -> tuple[int, float]:
    """(bar width, font scale) of a caption ``cap`` px high, its text shrunk to fit ``width`` when wider."""
    scale, thick, pad = _scale_for(cap), max(1, round(cap / 16)), max(2, cap // 5)
    tw = cv2.getTextSize(text, _FONT, scale, thick)[0][0]
    if tw + 2 * pad > width:
        scale *= max(1, width - 2 * pad) / tw
        tw = cv2.getTextSize(text, _FONT, scale, thick)[0][0]
    return min(width, tw + 2 * pad), scale


def _place_caption(i: int, boxes: Sequence[Rect], text: str, cap: int, placed: Sequence[Rect | None],
                   shape: tuple[int, int]) -> tuple[Rect, float]:
    """The caption rectangle of face ``i`` and its font scale (see :func:`layout_predictions`)."""
    h, w = shape
    x, y, bw, bh = boxes[i]
    blocked = [b for j, b in enumerate(boxes) if j != i] + [c for c in placed if c is not None]
    cap = min(cap, h)
    for width_limit in (w, min(w, bw)):
        ch = cap if width_limit == w else max(MIN_CAPTION_PX // 2, min(cap, bh // 4))
        cw, scale = _caption_size(text, ch, width_limit)
        xs = [_clamp(x, 0, w - cw), _clamp(x + bw - cw, 0, w - cw), _clamp(x + (bw - cw) // 2, 0, w - cw)]
        ys = [y - ch, y + bh, _clamp(y, 0, h - ch), _clamp(y + bh - ch, 0, h - ch)]
        for sy in ys:
            for sx in xs:
                r = (sx, sy, cw, ch)
                if _inside(r, w, h) and not any(_overlaps(r, b) for b in blocked):
                    return r, scale
    return (_clamp(x, 0, w - cw), _clamp(y, 0, h - ch), cw, ch), scale  # inside its own box: overlapping boxes


def _panel_spots(box: Rect, pw: int, ph: int, gap: int, shape: tuple[int, int]) -> list[Rect]:
    """Panel positions beside ``box``, right, left, below then above, each sliding from the face's centre out."""
    h, w = shape
    x, y, bw, bh = box
    cy, cx = y + bh // 2 - ph // 2, x + bw // 2 - pw // 2
    along_y = sorted({_clamp(cy + d, 0, h - ph) for d in range(-ph, ph + 1, max(1, ph // 4))},
                     key=lambda v: abs(v - cy))
    along_x = sorted({_clamp(cx + d, 0, w - pw) for d in range(-pw, pw + 1, max(1, pw // 4))},
                     key=lambda v: abs(v - cx))
    spots = [(x + bw + gap, sy) for sy in along_y] + [(x - gap - pw, sy) for sy in along_y]
    spots += [(sx, y + bh + gap) for sx in along_x] + [(sx, y - gap - ph) for sx in along_x]
    return [(sx, sy, pw, ph) for sx, sy in spots if _inside((sx, sy, pw, ph), w, h)]


def _place_panels(boxes: Sequence[Rect], caps: Sequence[int], rows: Sequence[int], captions: Sequence[Rect],
                  classes: Sequence[str], shape: tuple[int, int]) -> tuple[list[Rect | None], list[int]]:
    """Panels that cover no face, caption or other panel; the most constrained face chooses first. A face with no
    free spot at its row height tries the smallest legible one (12 px rows)."""
    rows = list(rows)
    free: list[list[Rect]] = []
    for i, box in enumerate(boxes):
        options: list[Rect] = []
        for row in dict.fromkeys((rows[i], 12)):
            geo = _panel_geometry(classes, row)
            options = [r for r in _panel_spots(box, geo.width, geo.height, max(3, caps[i] // 4), shape)
                       if not any(_overlaps(r, b) for b in boxes) and not any(_overlaps(r, c) for c in captions)]
            if options:
                rows[i] = row
                break
        free.append(options)
    panels: list[Rect | None] = [None] * len(boxes)
    for i in sorted(range(len(boxes)), key=lambda k: (len(free[k]), k)):
        taken = [p for p in panels if p is not None]
        panels[i] = next((r for r in free[i] if not any(_overlaps(r, p) for p in taken)), None)
    return panels, rows


def draw_predictions(
    rgb: np.ndarray,
    faces: Sequence[FaceResult],
    classes: Sequence[str],
    tracks: Sequence[int | None] | None = None,
    draw: str = "auto",
) -> np.ndarray:
    """A copy of ``rgb`` with each face drawn as :func:`layout_predictions` plans it (``draw``: see DRAW_MODES).

    ``tracks`` (video track ids, one per face) are appended to the captions as ``#id``. The input is untouched.
    """
    out = np.ascontiguousarray(rgb.copy())
    layouts = layout_predictions(out.shape, faces, classes, tracks, draw)
    for face, lay in zip(faces, layouts, strict=True):
        k = list(classes).index(face.label) if face.label in classes else 0
        colour = class_colour(k)
        x, y, bw, bh = lay.box
        t = max(1, min(lay.thickness, bw // 2, bh // 2))  # the outline lies inside the box: nothing drawn
        for rows, cols in ((slice(y, y + t), slice(x, x + bw)), (slice(y + bh - t, y + bh), slice(x, x + bw)),
                           (slice(y, y + bh), slice(x, x + t)), (slice(y, y + bh), slice(x + bw - t, x + bw))):
            out[rows, cols] = colour  # outside the planned rectangles (tests rely on it)
        if face.landmarks is not None:
            radius = max(1, lay.thickness - 1)
            for px, py in np.asarray(face.landmarks, dtype=np.float64).reshape(-1, 2):
                if np.isfinite(px) and np.isfinite(py):
                    cv2.circle(out, (int(round(px)), int(round(py))), radius, (255, 255, 255), -1, cv2.LINE_AA)
    for face, lay in zip(faces, layouts, strict=True):  # text after all boxes, so no box line crosses a caption
        k = list(classes).index(face.label) if face.label in classes else 0
        if lay.caption is not None:
            _caption(out, lay.caption, lay.caption_text, lay.caption_scale, class_colour(k))
        if lay.panel is not None:
            _panel(out, lay.panel, face, classes, lay.row)
    return out


def _ink_for(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black text on light colours, white on dark ones (by luma), so every class colour reads."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _caption(out: np.ndarray, rect: Rect, text: str, scale: float, colour: tuple[int, int, int]) -> None:
    x, y, cw, ch = rect
    cv2.rectangle(out, (x, y), (x + cw - 1, y + ch - 1), colour, -1)
    thick = max(1, round(ch / 16))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    tx = x + max(0, (cw - tw) // 2)
    ty = y + (ch + th - base) // 2  # the baseline that centres ascent + descent in the bar
    cv2.putText(out, text, (tx, ty), _FONT, scale, _ink_for(colour), thick, cv2.LINE_AA)


def _panel(out: np.ndarray, rect: Rect, face: FaceResult, classes: Sequence[str], row: int) -> None:
    x, y, pw, ph = rect
    roi = out[y:y + ph, x:x + pw]
    roi[:] = (roi.astype(np.float32) * 0.25).astype(np.uint8)  # darkened backdrop: the picture still shows
    g = _panel_geometry(classes, row)
    bar_x = x + g.pad + g.name_w + g.pad
    for j, cls in enumerate(classes):
        ry = y + g.pad + j * row
        p = float(face.probabilities.get(cls, 0.0))
        (_, th), base = cv2.getTextSize("Hg", _FONT, g.scale, g.thick)
        ty = ry + (row + th - base) // 2
        ink = (255, 255, 255) if cls == face.label else (200, 200, 200)
        cv2.putText(out, cls[:_PANEL_NAME_CHARS], (x + g.pad, ty), _FONT, g.scale, ink, g.thick, cv2.LINE_AA)
        top, bottom = ry + max(1, row // 6), ry + row - 1 - max(1, row // 6)
        cv2.rectangle(out, (bar_x, top), (bar_x + g.bar_w - 1, bottom), (140, 140, 140), 1)
        if p > 0:
            cv2.rectangle(out, (bar_x, top), (bar_x + max(1, int(round(p * g.bar_w))) - 1, bottom), class_colour(j),
                          -1)
        pct = f"{p:.0%}"
        pw_text = cv2.getTextSize(pct, _FONT, g.scale, g.thick)[0][0]
        cv2.putText(out, pct, (bar_x + g.bar_w + g.pad + g.pct_w - pw_text, ty), _FONT, g.scale, ink, g.thick,
                    cv2.LINE_AA)
