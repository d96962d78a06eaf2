"""Recognizer API: preprocessing from checkpoint metadata, input kinds, batching, backends, tracking."""

from __future__ import annotations

import json
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from poster_fer import CheckpointError, create_model, save_model
from poster_fer.faces import (
    HAAR_LANDMARK_RATIOS,
    Face,
    align_face,
    bundled_yunet_path,
    get_geometry,
    load_image,
)
from poster_fer.faces import download as download_module
from poster_fer.hub import OfficialOptions, open_checkpoint
from poster_fer.inference import (
    FaceResult,
    InferenceError,
    IoUTracker,
    Preprocessing,
    Recognizer,
    TorchBackend,
    VideoReader,
    box_iou,
    draw_predictions,
)
from poster_fer.inference import recognizer as recognizer_module
from poster_fer.samples import sample_path
from poster_fer_apps.cli import main

#: class names for the tiny models these tests build (save_model refuses a model without any)
_CLASS_NAMES = {n: [f"c{i}" for i in range(n)] for n in range(1, 11)}
_CLASS_NAMES[7] = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
_CLASS_NAMES[8] = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 56  # tiny model at a tiny input: fast on any CPU


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("poster_v1_tiny", num_classes=7, input_size=SIZE, backbone_size=SIZE, classes=_CLASS_NAMES[7])


def _save(tmp_path, name: str, model=None, **prep) -> str:
    preprocessing = {"input_size": SIZE, "crop_geometry": get_geometry("rafdb").to_dict(), "grayscale": False,
                     "resize_interpolation": "bilinear", **prep}
    return str(save_model(model or _tiny_model(), tmp_path / name, preprocessing=preprocessing))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread


@pytest.fixture(scope="module")
def yunet():
    return str(bundled_yunet_path())  # byte-identical to the development copy


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    """A one-face 512 x 512 portrait: the top of the shipped sample (face at x 183-353, y 120-333), so a
    newcomer's suite, which has no development assets, runs these tests too."""
    path = tmp_path_factory.mktemp("portrait") / "portrait.png"
    cv2.imwrite(str(path), cv2.imread(str(sample_path()))[:512, :512])
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ckpt"), "rgb")


@pytest.fixture(scope="module")
def rec(ckpt, yunet):
    return Recognizer.from_checkpoint(ckpt, detector="yunet", detector_model=yunet)


def _manual_input(rgb, landmarks, geometry="rafdb", bgr=False, grey=False) -> np.ndarray:
    """The documented preprocessing, written out independently of the package."""
    crop = align_face(rgb, landmarks, geometry)
    if grey:
        crop = np.repeat(np.asarray(Image.fromarray(crop).convert("L"))[:, :, None], 3, axis=2)
    x = np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
    if bgr:
        x = x[:, :, ::-1]
    return ((x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)


class _Capture:
    """Forward pre-hook keeping the input batches of the network a backend runs (``backend.net``)."""

    def __init__(self, model):
        self.inputs: list[np.ndarray] = []
        self.handle = model.register_forward_pre_hook(lambda m, a: self.inputs.append(a[0].detach().numpy().copy()))

    def close(self):
        self.handle.remove()


# ---------------------------------------------------------------------------------------------------------
# preprocessing


def test_preprocessing_defaults_for_official_metadata():
    prep = Preprocessing.from_meta({"preprocessing": {"input_size": 224, "mean": list(MEAN), "std": list(STD),
                                                      "channel_order": "BGR"}})
    assert prep.geometry == get_geometry("rafdb") and prep.geometry_assumed
    assert (prep.channel_order, prep.grayscale, prep.interpolation) == ("BGR", False, "bilinear")
    fer = Preprocessing.from_meta({"preprocessing": {"input_size": 112, "grayscale": True,
                                                     "crop_geometry": get_geometry("fer2013").to_dict()}})
    assert fer.geometry.size == (48, 48) and fer.grayscale and not fer.geometry_assumed
    with pytest.raises(ValueError, match="channel_order"):
        Preprocessing.from_meta({"preprocessing": {"input_size": 112, "channel_order": "GBR"}})
    with pytest.raises(ValueError, match="resize_interpolation"):
        Preprocessing.from_meta({"preprocessing": {"input_size": 112, "resize_interpolation": "cubic-ish"}})


def test_model_input_matches_documented_preprocessing_rgb_bgr_grey(tmp_path, yunet, astronaut):
    rgb = load_image(astronaut)
    for name, prep, kw in (("rgb", {}, {}), ("bgr", {"channel_order": "BGR"}, {"bgr": True}),
                           ("grey", {"grayscale": True}, {"grey": True})):
        r = Recognizer.from_checkpoint(_save(tmp_path, name, **prep), detector="yunet", detector_model=yunet)
        cap = _Capture(r.backend.net)
        (face,) = r.predict(rgb)
        cap.close()
        (x,) = cap.inputs
        np.testing.assert_allclose(x[0], _manual_input(rgb, face.landmarks, **kw), atol=1e-5, err_msg=name)
        raw = x[0] * np.array(STD)[:, None, None] + np.array(MEAN)[:, None, None]  # undo the normalisation
        if name == "grey":
            np.testing.assert_allclose(raw[0], raw[1], atol=1e-5)
            np.testing.assert_allclose(raw[1], raw[2], atol=1e-5)
        else:
            assert np.abs(raw[0] - raw[2]).mean() > 0.05  # a colour face: red and blue planes differ
        if name == "bgr":
            # the model gets the crop's blue plane first: same pixels as the RGB model's input, reversed
            rgb_raw = _manual_input(rgb, face.landmarks) * np.array(STD)[:, None, None] + \
                np.array(MEAN)[:, None, None]
            np.testing.assert_allclose(raw, rgb_raw[::-1], atol=1e-5)


def test_crop_geometry_from_metadata_sets_crop_size(tmp_path, yunet, astronaut):
    path = _save(tmp_path, "fer", crop_geometry=get_geometry("fer2013").to_dict(), grayscale=True)
    r = Recognizer.from_checkpoint(path, detector="yunet", detector_model=yunet)
    (face,) = r.predict(str(astronaut), return_crops=True)
    assert face.crop.shape == (48, 48, 3)
    assert (face.crop[..., 0] == face.crop[..., 2]).all()  # grey model: the crop it saw is grey


# ---------------------------------------------------------------------------------------------------------
# predict


def test_predict_on_astronaut_finds_one_face(rec, astronaut):
    faces = rec.predict(str(astronaut), return_crops=True)
    assert len(faces) == 1
    f = faces[0]
    x, y, w, h = f.box
    assert 160 < x < 210 and 95 < y < 145 and 140 < w < 200  # the face (x 183, y 120, 170 wide), not the body
    assert f.landmarks.shape == (5, 2) and f.score > 0.6
    assert f.crop.shape == (100, 100, 3) and f.crop.dtype == np.uint8
    assert set(f.probabilities) == set(rec.classes)
    assert sum(f.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert f.label == max(f.probabilities, key=f.probabilities.get)
    d = f.to_dict()
    assert d["label"] == f.label and len(d["landmarks"]) == 5 and d["confidence"] == round(f.confidence, 4)


def test_predict_accepts_paths_pil_and_odd_arrays(rec, astronaut):
    rgb = load_image(astronaut)
    ref = rec.predict(rgb)[0].probabilities

    def same(faces):
        assert len(faces) == 1
        np.testing.assert_allclose(list(faces[0].probabilities.values()), list(ref.values()), atol=1e-6)

    same(rec.predict(str(astronaut)))
    same(rec.predict(astronaut))  # pathlib.Path
    same(rec.predict(Image.open(astronaut)))
    same(rec.predict(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])))  # opaque RGBA
    same(rec.predict(rgb.astype(np.uint16) * 257))  # 16-bit
    same(rec.predict(rgb.astype(np.float32) / 255))  # float in [0, 1]
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    (g,) = rec.predict(grey)  # (h, w) grey: still one face, same place
    assert box_iou(g.box, rec.predict(rgb)[0].box) > 0.8
    batch = rec.predict([str(astronaut), grey, np.zeros((64, 64, 3), np.uint8)])
    assert [len(b) for b in batch] == [1, 1, 0]  # one list per image; a blank image has no face


def test_batching_gives_the_same_results_as_one_by_one(ckpt, yunet, astronaut):
    rgb = load_image(astronaut)
    images = [rgb, rgb[20:300, 100:380], np.ascontiguousarray(rgb[:, ::-1]), rgb[30:250, 120:340]]
    one = Recognizer.from_checkpoint(ckpt, detector="yunet", detector_model=yunet, batch_size=1)
    many = Recognizer.from_checkpoint(ckpt, detector="yunet", detector_model=yunet, batch_size=16)
    cap = _Capture(many.backend.net)
    a, b = one.predict(images), many.predict(images)
    cap.close()
    assert [x.shape[0] for x in cap.inputs] == [4]  # faces of all images went through in one batch
    assert [len(x) for x in a] == [len(x) for x in b] == [1, 1, 1, 1]
    for fa, fb in zip((f for x in a for f in x), (f for x in b for f in x), strict=True):
        np.testing.assert_allclose(list(fa.probabilities.values()), list(fb.probabilities.values()), atol=1e-5)
        np.testing.assert_allclose(fa.box, fb.box)


def test_no_detect_and_predict_crops(rec, astronaut):
    (face,) = rec.predict(str(astronaut), return_crops=True)
    crop = face.crop
    (whole,) = rec.predict(crop, detect=False)
    assert whole.box == (0.0, 0.0, 100.0, 100.0) and whole.landmarks is None and whole.score is None
    np.testing.assert_allclose(list(whole.probabilities.values()), list(face.probabilities.values()), atol=1e-6)
    small = np.asarray(Image.fromarray(crop).resize((64, 64), Image.BILINEAR))
    results = rec.predict_crops([crop, small])
    assert len(results) == 2 and results[1].box == (0.0, 0.0, 64.0, 64.0)
    assert results[0].probabilities == pytest.approx(whole.probabilities, abs=1e-6)


def test_many_faces_are_all_found_and_batched(ckpt, yunet, astronaut):
    tile = load_image(astronaut)[20:276, 100:356]  # one face per 256-pixel tile
    grid = np.vstack([np.hstack([tile, tile[:, ::-1]]), np.hstack([tile[:, ::-1], tile])])
    r = Recognizer.from_checkpoint(ckpt, detector="yunet", detector_model=yunet, batch_size=3)
    cap = _Capture(r.backend.net)
    faces = r.predict(grid)
    cap.close()
    assert len(faces) == 4
    centres = sorted((round((f.box[0] + f.box[2] / 2) // 256), round((f.box[1] + f.box[3] / 2) // 256))
                     for f in faces)
    assert centres == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [x.shape[0] for x in cap.inputs] == [3, 1]
    assert len(Recognizer.from_checkpoint(ckpt, detector="yunet", detector_model=yunet, max_faces=2)
               .predict(grid)) == 2


def test_large_images_are_detected_on_a_downscaled_copy(rec, astronaut):
    rgb = load_image(astronaut)
    big = np.asarray(Image.fromarray(rgb).resize((2048, 2048), Image.BILINEAR))
    rec.detect_size = 640
    try:
        (face,) = rec.predict(big)
    finally:
        rec.detect_size = 1280
    (direct,) = rec.detector.detect(cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA))
    k = 2048 / 640  # mapped back to full-size pixels (cv2.resize pixel centres)
    np.testing.assert_allclose(face.landmarks, (direct.landmarks + 0.5) * k - 0.5, atol=1e-6)
    np.testing.assert_allclose(face.box[2:], np.asarray(direct.box[2:]) * k, atol=1e-6)
    (ref,) = rec.predict(rgb)
    assert box_iou(np.asarray(face.box) / 4, ref.box) > 0.8  # the same face as at the original size


def test_iter_predict_reports_bad_inputs_and_keeps_going(rec, astronaut, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = list(rec.iter_predict([("a", str(astronaut)), ("b", str(bad)), ("c", np.zeros((5, 5, 7))),
                                 ("d", RuntimeError("upstream")), ("e", str(astronaut))]))
    assert [p.key for p in out] == ["a", "b", "c", "d", "e"]
    assert [p.ok for p in out] == [True, False, False, False, True]
    assert "bad.png" in str(out[1].error) and len(out[4].faces) == 1
    with pytest.raises(ValueError, match="bad.png"):
        rec.predict(str(bad))


def test_no_detector_means_crops_only(ckpt, astronaut):
    r = Recognizer.from_checkpoint(ckpt, detector=None)
    with pytest.raises(InferenceError, match="detect=False"):
        r.predict(str(astronaut))
    assert len(r.predict(str(astronaut), detect=False)) == 1


def test_official_pth_checkpoint_loads_with_default_geometry(tmp_path, yunet, astronaut, caplog):
    torch.manual_seed(3)
    # the official layout: 224 input, 112 backbones
    model = create_model("poster_v1_tiny", num_classes=7, classes=_CLASS_NAMES[7])
    path = tmp_path / "official.pth"
    torch.save({"iter": 1, "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match="which dataset's class order"):  # no record names a tiny head
        Recognizer.from_checkpoint(path, official=OfficialOptions(model="poster_v1_tiny"), detector="yunet",
                                   detector_model=yunet)
    r = Recognizer.from_checkpoint(path, official=OfficialOptions(model="poster_v1_tiny", classes=_CLASS_NAMES[7]),
                                   detector="yunet", detector_model=yunet)
    assert r.preprocessing.geometry.name == "rafdb" and r.preprocessing.geometry_assumed
    assert r.classes[0] == "Surprise"
    assert len(r.predict(str(astronaut))) == 1
    # the keywords of earlier releases still work, and say what replaced them
    with pytest.warns(DeprecationWarning, match="official=poster_fer.hub.OfficialOptions"):
        old = Recognizer.from_checkpoint(path, model="poster_v1_tiny", classes=_CLASS_NAMES[7], detector=None)
    assert old.classes == r.classes
    with caplog.at_level("WARNING", logger="poster_fer"):  # ours describe themselves: said, then ignored
        ours = open_checkpoint(_save(tmp_path, "ours"), OfficialOptions(num_classes=3))
    assert "ignoring num_classes" in caplog.text and ours.cfg.num_classes == 7


# ---------------------------------------------------------------------------------------------------------
# backends


def test_onnxruntime_backend_uses_the_export_module(ckpt, yunet, astronaut, tmp_path, monkeypatch):
    from poster_fer import load_model

    torch_rec = Recognizer.from_checkpoint(ckpt, detector="yunet", detector_model=yunet)
    calls = []

    class FakeOrt:  # stands in for poster_fer.export.OnnxRuntimeModel: numpy in, numpy logits out
        def __init__(self, path):
            self.model = load_model(ckpt)
            self.meta = self.model.meta

        def __call__(self, batch):
            assert isinstance(batch, np.ndarray) and batch.dtype == np.float32
            calls.append(batch.shape)
            with torch.no_grad():
                return self.model(torch.from_numpy(batch)).numpy()

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"stub")
    monkeypatch.setitem(sys.modules, "poster_fer.export", types.SimpleNamespace(OnnxRuntimeModel=FakeOrt))
    ort_rec = Recognizer.from_checkpoint(onnx_file, detector="yunet", detector_model=yunet)  # by suffix
    (a,) = ort_rec.predict(str(astronaut))
    (b,) = torch_rec.predict(str(astronaut))
    assert calls == [(1, 3, SIZE, SIZE)] * 2  # the graph check at open (a blank face), then the face
    np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)

    monkeypatch.setitem(sys.modules, "poster_fer.export", None)  # import now fails
    with pytest.raises(InferenceError, match="onnxruntime backend is unavailable"):
        Recognizer.from_checkpoint(onnx_file, backend="onnxruntime", detector=None)


def test_bad_backend_and_device_are_refused(ckpt):
    with pytest.raises(InferenceError, match="unknown backend"):
        Recognizer.from_checkpoint(ckpt, backend="tensorflow", detector=None)
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="no CUDA"):
            Recognizer.from_checkpoint(ckpt, device="cuda", detector=None)


def test_bf16_autocast_runs_and_stays_close(ckpt, astronaut):
    r32 = Recognizer.from_checkpoint(ckpt, detector=None)
    r16 = Recognizer.from_checkpoint(ckpt, detector=None, autocast="bf16")
    crop = load_image(astronaut)[120:333, 183:353]
    (a,), (b,) = r32.predict_crops([crop]), r16.predict_crops([crop])
    assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 0.05


# ---------------------------------------------------------------------------------------------------------
# invalid detections are dropped and counted


def _plausible(x: float, y: float, w: float, h: float, score: float) -> Face:
    return Face(box=(x, y, w, h), landmarks=np.asarray(HAAR_LANDMARK_RATIOS) * (w, h) + (x, y), score=score)


class _GarbageDetector:
    """Returns six impossible faces, all scored above one plausible face in the middle (unless ``good`` is off)."""

    name = "garbage"
    GARBAGE = 6

    def __init__(self, good: bool = True) -> None:
        self.good = good
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        h, w = np.asarray(image).shape[:2]
        nan_lm = _plausible(w / 4, h / 4, w / 2, h / 2, 0.99)
        nan_lm.landmarks[1, 0] = np.nan
        faces = [
            Face(box=(5.9e24, -1.0e26, 0, 0), landmarks=np.full(10, np.inf), score=1.0),  # YuNet's 3 x 4000 result
            _plausible(np.nan, h / 4, w / 2, h / 2, 0.99),
            nan_lm,
            Face(box=(w / 4, h / 4, w / 2, h / 2), landmarks=_plausible(w / 4, h / 4, w / 2, h / 2, 0).landmarks,
                 score=np.inf),
            _plausible(w / 4, h / 4, 0, h / 2, 0.98),  # zero width
            _plausible(w + 10, h / 4, w / 2, h / 2, 0.97),  # right of the image
        ]
        if self.good:
            faces.append(_plausible(w / 4, h / 4, w / 2, h / 2, 0.5))
        return faces


@pytest.fixture
def garbage_rec(ckpt):
    return Recognizer.from_checkpoint(ckpt, detector=_GarbageDetector())


def _check_only_the_good_face(rec, preds, sizes):
    for pred, (w, h) in zip(preds, sizes, strict=True):
        assert pred.ok and pred.dropped == _GarbageDetector.GARBAGE
        (face,) = pred.faces
        assert face.box == (w / 4, h / 4, w / 2, h / 2) and face.score == 0.5
        assert np.isfinite(face.landmarks).all() and sum(face.probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_invalid_detections_are_dropped_and_counted_for_arrays_and_files(garbage_rec, astronaut, tmp_path):
    rgb = load_image(astronaut)  # 512 x 512: detected at full size, so the fake's boxes come back unchanged
    path = tmp_path / "wide.png"
    Image.fromarray(np.ascontiguousarray(np.hstack([rgb, rgb[:, ::-1]]))).save(path)
    cap = _Capture(garbage_rec.backend.net)
    preds = list(garbage_rec.iter_predict([("array", rgb), ("pil", Image.fromarray(rgb)), ("file", str(path))]))
    cap.close()
    assert sum(x.shape[0] for x in cap.inputs) == 3  # one crop per image reached the model, no garbage
    _check_only_the_good_face(garbage_rec, preds, [(512, 512), (512, 512), (1024, 512)])
    assert len(garbage_rec.predict(rgb)) == 1 and len(garbage_rec.detect(rgb)) == 1
    # checked before max_faces: garbage scored 1.0 does not push out the real face
    garbage_rec.max_faces = 1
    (face,) = garbage_rec.predict(str(path))
    assert face.score == 0.5
    # only garbage: no face, everything counted
    garbage_rec.detector.good = False
    (pred,) = garbage_rec.iter_predict([("x", rgb)])
    assert pred.ok and pred.faces == [] and pred.dropped == _GarbageDetector.GARBAGE
    # a downscaled detection is validated in the full image's coordinates
    garbage_rec.detector.good, garbage_rec.max_faces, garbage_rec.detect_size = True, None, 256
    (pred,) = garbage_rec.iter_predict([("big", str(path))])
    assert pred.dropped == _GarbageDetector.GARBAGE and len(pred.faces) == 1
    np.testing.assert_allclose(pred.faces[0].box, (256, 128, 512, 256), atol=2)


def _video(path, rgb, frames=4):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 320))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.cvtColor(np.ascontiguousarray(rgb[0:320, 150 - 3 * i:470 - 3 * i]), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_invalid_detections_are_dropped_and_counted_for_video_frames(garbage_rec, astronaut, tmp_path):
    clip = _video(tmp_path / "clip.avi", load_image(astronaut))
    preds = list(garbage_rec.iter_predict(VideoReader(clip)))
    assert [p.key for p in preds] == [0, 1, 2, 3]
    _check_only_the_good_face(garbage_rec, preds, [(320, 320)] * 4)
    tracker = IoUTracker()
    ids = [tracker.update(p.key, [f.box for f in p.faces], [list(f.probabilities.values()) for f in p.faces])
           for p in preds]
    assert [[i for i, _ in frame] for frame in ids] == [[0]] * 4  # one face, one track


def test_predict_cli_reports_dropped_detections(ckpt, astronaut, tmp_path, capsys, monkeypatch):
    detector = _GarbageDetector()
    monkeypatch.setattr(recognizer_module, "build_detector", lambda *args, **kwargs: detector)
    clip = _video(tmp_path / "clip.avi", load_image(astronaut), frames=3)
    code = main(["predict", str(astronaut), str(clip), "--weights", ckpt, "--no-progress"])
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["status"] for r in records] == ["ok"] * 4
    assert all(all(np.isfinite(r["box"])) for r in records)
    assert "1 image, 1 video (3 frames); 4 faces; 24 invalid detections dropped; 0 failed" in err
    detector.good = False
    code = main(["predict", str(astronaut), "--weights", ckpt, "--no-progress"])
    out, err = capsys.readouterr()
    (r,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and r["status"] == "no_face" and r["error"] == "no face found (6 invalid detections dropped)"
    assert "0 faces; 1 input without a face; 6 invalid detections dropped; 0 failed" in err
    detector.good = True
    main(["predict", str(astronaut), "--weights", ckpt, "--no-progress", "--no-detect"])
    assert "dropped" not in capsys.readouterr().err  # nothing detected, nothing dropped, nothing said


def test_yunet_thin_black_and_tiny_images_give_no_garbage_face(rec, astronaut, tmp_path):
    """A 3 x 4000 strip used to come back as a score-1.0 "face" at [5.9e24, -1.0e26, 0, 0] with infinite landmarks."""
    files = []
    for h, w in ((3, 4000), (4000, 3), (1, 1)):
        files.append(tmp_path / f"{h}x{w}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(files[-1])
    rng = np.random.default_rng(0)
    items = [("astronaut", str(astronaut))]
    for f in files:
        items += [(f.name, str(f)), ("astronaut", str(astronaut))]
    items += [("noise-strip", rng.integers(0, 256, (3, 4000, 3), dtype=np.uint8)),
              ("black", np.zeros((480, 640, 3), np.uint8)), ("grey-strip", np.full((4000, 3), 128, np.uint8))]
    for _ in range(2):
        for pred in rec.iter_predict(items):
            assert pred.ok, pred.error
            if pred.key == "astronaut":
                assert len(pred.faces) == 1 and pred.dropped == 0
            else:
                assert pred.faces == [], (pred.key, [f.box for f in pred.faces])


def test_default_yunet_is_the_bundled_file_without_download(ckpt, tmp_path, monkeypatch, astronaut):
    def no_download(*args, **kwargs):
        raise AssertionError("the default detector must not download")

    monkeypatch.setattr(download_module, "download_file", no_download)
    monkeypatch.setenv("POSTER_FER_CACHE", str(tmp_path / "cache"))
    r = Recognizer.from_checkpoint(ckpt, detector="yunet")
    assert r.detector.model_path == bundled_yunet_path()
    assert len(r.predict(str(astronaut))) == 1


# ---------------------------------------------------------------------------------------------------------
# tracking and drawing


def test_tracker_keeps_ids_and_smooths():
    t = IoUTracker(iou_threshold=0.3, max_age=2, alpha=0.5)
    p0, p1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    out = t.update(0, [(0, 0, 10, 10), (100, 0, 10, 10)], [p0, p1])
    assert [i for i, _ in out] == [0, 1]
    out = t.update(1, [(102, 1, 10, 10), (1, 1, 10, 10)], [p0, p0])  # order swapped, both moved a little
    assert [i for i, _ in out] == [1, 0]
    np.testing.assert_allclose(out[0][1], 0.5 * p0 + 0.5 * p1)  # EMA of track 1
    np.testing.assert_allclose(out[1][1], p0)
    out = t.update(2, [(50, 50, 10, 10)], [p1])  # nothing overlaps: a new track
    assert out[0][0] == 2
    out = t.update(5, [(1, 1, 10, 10)], [p1])  # track 0 unseen for 4 frames > max_age: restarted
    assert out[0][0] == 3 and t.total_tracks == 4
    with pytest.raises(ValueError):
        IoUTracker(alpha=0.0)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_box_iou_degenerate_boxes_and_empty_frames():
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty union: 0, not NaN
    assert box_iou((0, 0, 10, 10), (10, 0, 5, 5)) == 0.0  # touching edges
    assert box_iou((0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4)) == 1.0
    t = IoUTracker()
    assert t.update(0, [], []) == []
    out = t.update(1, np.array([[0, 0, 10, 10]], dtype=np.float32), np.array([[0.2, 0.8]]))
    assert out[0][0] == 0 and t.update(2, [], []) == [] and t.total_tracks == 1


def test_draw_predictions_marks_the_face_and_keeps_the_input():
    img = np.full((120, 200, 3), 128, np.uint8)
    face = FaceResult(box=(20, 20, 50, 60), landmarks=np.array([[35, 40], [55, 40], [45, 55], [37, 65], [53, 65]]),
                      score=0.9, label="b", probabilities={"a": 0.2, "b": 0.8})
    out = draw_predictions(img, [face], ["a", "b"], tracks=[3])
    assert out.shape == img.shape and (img == 128).all()  # drawn on a copy
    assert (out[20:80, 20] != 128).any()  # box edge
    assert (out[20:50, 80:190] != 128).any()  # probability panel beside the box


def test_torch_backend_fast_paths_are_exact_and_leave_the_model_alone():
    torch.manual_seed(0)
    model = create_model("poster_v1_tiny", num_classes=8, input_size=48, backbone_size=48, landmark_size=80,
                         image_tokens="pool", classes=_CLASS_NAMES[8]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast, plain = TorchBackend(model, fast=True), TorchBackend(model, fast=False)
    assert fast.net is not fast.model and plain.net is plain.model
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    a, b = fast(x), plain(x)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
