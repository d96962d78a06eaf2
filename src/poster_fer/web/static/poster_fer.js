// poster-fer's face pipeline in the browser: the JavaScript twin of the Python reference.
//
// Every step mirrors a Python function, named beside it, and reproduces its arithmetic (OpenCV's and Pillow's
// integer and float32 rounding included), so that the browser labels a photo as `poster-fer predict` does:
//   detection   poster_fer/faces/scale.py detect_scaled + faces/detect.py YuNetDetector (cv2.FaceDetectorYN)
//   alignment   poster_fer/faces/align.py align_face (Umeyama similarity, cv2.warpAffine, INTER_AREA prescale)
//   crop        poster_fer/weights/preprocessing.py Preprocessing (Pillow luma, Pillow resize, normalisation)
//   calibration poster_fer/probabilities.py (logit bias, temperature, operating points, softmax)
// The Python side is the reference; tests/test_web.py runs both on the same images and compares.
//
// The functions are DOM-free: images are {width, height, data: Uint8Array of RGB triples}. The ONNX Runtime
// object (`ort`) is passed in, so the page, a worker or a test can bring their own build of it.

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------------------------
// numbers as OpenCV rounds them

/** cvRound / lrint / Python's round(): nearest integer, ties to even. */
export function rint(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

function clip8(v) {
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

/** An RGB image of the given size (zeros). */
export function makeImage(width, height) {
  return { width, height, data: new Uint8Array(width * height * 3) };
}

/** RGB from canvas RGBA pixels (ImageData); the page composites transparent images on white before this. */
export function rgbFromRGBA(rgba, width, height) {
  const out = makeImage(width, height);
  for (let i = 0, j = 0; i < width * height * 4; i += 4, j += 3) {
    out.data[j] = rgba[i]; out.data[j + 1] = rgba[i + 1]; out.data[j + 2] = rgba[i + 2];
  }
  return out;
}

/** createImageBitmap's options that decode a file as Python does (faces/io.py load_image): EXIF orientation
 * applied, no colour-profile conversion, alpha kept for compositing. Both pages decode with these. */
export const DECODE_OPTIONS = Object.freeze({ colorSpaceConversion: 'none', premultiplyAlpha: 'none' });

/** RGB of a decoded ImageBitmap, transparency composited on white (as Python's loader does); closes the bitmap. */
export function bitmapToRGB(bitmap) {
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return rgbFromRGBA(ctx.getImageData(0, 0, width, height).data, width, height);
}

// ---------------------------------------------------------------------------------------------------------
// cv2.resize

/** cv2.resize(..., INTER_LINEAR) on uint8: 11-bit fixed-point weights, OpenCV's pixel-centre mapping. */
export function resizeLinear(img, dw, dh) {
  const sw = img.width, sh = img.height, src = img.data;
  const xs = linearTaps(sw, dw, true), ys = linearTaps(sh, dh, false); // OpenCV clamps weights in x only
  const out = makeImage(dw, dh);
  const row0 = new Int32Array(dw * 3), row1 = new Int32Array(dw * 3);
  const fill = (row, sy) => {
    for (let x = 0; x < dw; x++) {
      const s0 = (sy * sw + xs.i0[x]) * 3, s1 = (sy * sw + xs.i1[x]) * 3, a0 = xs.w0[x], a1 = xs.w1[x];
      for (let c = 0; c < 3; c++) row[x * 3 + c] = src[s0 + c] * a0 + src[s1 + c] * a1;
    }
  };
  for (let y = 0; y < dh; y++) {
    fill(row0, ys.i0[y]); fill(row1, ys.i1[y]);
    const b0 = ys.w0[y], b1 = ys.w1[y], o = y * dw * 3;
    for (let k = 0; k < dw * 3; k++) {
      out.data[o + k] = (((b0 * (row0[k] >> 4)) >> 16) + ((b1 * (row1[k] >> 4)) >> 16) + 2) >> 2;
    }
  }
  return out;
}

function linearTaps(ssize, dsize, clampWeights) {
  const scale = 1 / (dsize / ssize), i0 = new Int32Array(dsize), i1 = new Int32Array(dsize);
  const w0 = new Int32Array(dsize), w1 = new Int32Array(dsize);
  for (let d = 0; d < dsize; d++) {
    let f = f32((d + 0.5) * scale - 0.5);
    let s = Math.floor(f);
    f = f32(f - s);
    if (clampWeights && s < 0) { f = 0; s = 0; }
    if (clampWeights && s >= ssize - 1) { f = 0; s = ssize - 1; }
    i0[d] = Math.min(Math.max(s, 0), ssize - 1); i1[d] = Math.min(Math.max(s + 1, 0), ssize - 1);
    w0[d] = rint(f32(1 - f) * 2048); w1[d] = rint(f * 2048);
  }
  return { i0, i1, w0, w1 };
}

/** cv2.resize(..., INTER_AREA) on uint8 when shrinking: exact box averages for integer factors, otherwise
 * OpenCV's float32 area weights. */
export function resizeArea(img, dw, dh) {
  const sx = 1 / (dw / img.width), sy = 1 / (dh / img.height);
  const ix = rint(sx), iy = rint(sy);
  if (Math.abs(sx - ix) < 2.220446049250313e-16 && Math.abs(sy - iy) < 2.220446049250313e-16) {
    return resizeAreaFast(img, dw, dh, ix, iy);
  }
  const xt = areaTab(img.width, dw, sx), yt = areaTab(img.height, dh, sy);
  const out = makeImage(dw, dh), W = dw * 3, src = img.data, rowLen = img.width * 3;
  const buf = new Float32Array(W), sum = new Float32Array(W); // float32 storage rounds every sum as OpenCV's does
  const flush = (dy) => { for (let k = 0; k < W; k++) out.data[dy * W + k] = clip8(rint(sum[k])); };
  let prev = yt.d.length ? yt.d[0] : 0;
  for (let j = 0; j < yt.d.length; j++) {
    const dy = yt.d[j], beta = yt.a[j], rowOff = yt.s[j] * rowLen;
    buf.fill(0);
    for (let k = 0; k < xt.d.length; k++) {
      const o = xt.d[k] * 3, si = rowOff + xt.s[k] * 3, alpha = xt.a[k];
      buf[o] += f32(src[si] * alpha); buf[o + 1] += f32(src[si + 1] * alpha); buf[o + 2] += f32(src[si + 2] * alpha);
    }
    if (dy !== prev) {
      flush(prev);
      for (let k = 0; k < W; k++) sum[k] = beta * buf[k];
      prev = dy;
    } else {
      for (let k = 0; k < W; k++) sum[k] += f32(beta * buf[k]);
    }
  }
  flush(prev);
  return out;
}

/** computeResizeAreaTab: for each destination pixel, the source pixels it covers and their float32 weights. */
function areaTab(ssize, dsize, scale) {
  const d = [], s = [], a = [];
  const push = (di, si, ai) => { d.push(di); s.push(si); a.push(f32(ai)); };
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale, cell = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) push(dx, sx1 - 1, (sx1 - fsx1) / cell);
    for (let sx = sx1; sx < sx2; sx++) push(dx, sx, 1.0 / cell);
    if (fsx2 - sx2 > 1e-3) push(dx, sx2, Math.min(Math.min(fsx2 - sx2, 1), cell) / cell);
  }
  return { d: Int32Array.from(d), s: Int32Array.from(s), a: Float32Array.from(a) };
}

function resizeAreaFast(img, dw, dh, fx, fy) {
  const out = makeImage(dw, dh), area = fx * fy, scale = f32(1 / area), src = img.data;
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let j = 0; j < fy; j++) {
          for (let i = 0; i < fx; i++) s += src[((y * fy + j) * img.width + x * fx + i) * 3 + c];
        }
        out.data[(y * dw + x) * 3 + c] = area === 4 ? (s + 2) >> 2 : clip8(rint(f32(s * scale)));
      }
    }
  }
  return out;
}

/** cv2.copyMakeBorder: pad bottom/right with black (YuNet's minimum side) or all sides by edge replication. */
export function padImage(img, top, bottom, left, right, replicate) {
  const w = img.width + left + right, h = img.height + top + bottom, out = makeImage(w, h);
  for (let y = 0; y < h; y++) {
    let sy = y - top;
    if (sy < 0 || sy >= img.height) {
      if (!replicate) continue;
      sy = Math.min(Math.max(sy, 0), img.height - 1);
    }
    for (let x = 0; x < w; x++) {
      let sx = x - left;
      if (sx < 0 || sx >= img.width) {
        if (!replicate) continue;
        sx = Math.min(Math.max(sx, 0), img.width - 1);
      }
      const s = (sy * img.width + sx) * 3, d = (y * w + x) * 3;
      out.data[d] = img.data[s]; out.data[d + 1] = img.data[s + 1]; out.data[d + 2] = img.data[s + 2];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// detection: YuNet as cv2.FaceDetectorYN runs it

export const YUNET = Object.freeze({
  scoreThreshold: 0.6, nmsThreshold: 0.3, topK: 5000, strides: [8, 16, 32], divisor: 32,
  minSide: 64, // YUNET_MIN_SIDE: narrower inputs are padded with black, bottom and right
});
export const DETECT_SIZE = 1280; // faces/scale.py DEFAULT_DETECT_SIZE
export const MIN_DETECT_SIZE = 320; // faces/scale.py MIN_DETECT_SIZE
export const FACE_SIZED_MAX = 256; // inference/recognizer.py
export const MIN_FACE_CONTRAST = 6.0;

/** The network input FaceDetectorYN builds: BGR float32 0..255, NCHW, padded with zeros to a multiple of 32. */
export function yunetInput(img) {
  const padW = (Math.floor((img.width - 1) / YUNET.divisor) + 1) * YUNET.divisor;
  const padH = (Math.floor((img.height - 1) / YUNET.divisor) + 1) * YUNET.divisor;
  const plane = padW * padH, data = new Float32Array(3 * plane), src = img.data;
  for (let y = 0; y < img.height; y++) {
    let s = y * img.width * 3, d = y * padW;
    for (let x = 0; x < img.width; x++, s += 3, d++) {
      data[d] = src[s + 2]; data[plane + d] = src[s + 1]; data[2 * plane + d] = src[s];
    }
  }
  return { data, padW, padH };
}

/** FaceDetectorYN's postProcess: scores, boxes and landmarks from the 12 outputs, then its NMS.
 * `outputs` maps names (cls_8, obj_8, bbox_8, kps_8, ... for strides 16 and 32) to Float32Arrays. */
export function decodeYuNet(outputs, padW, padH, opts = {}) {
  const thr = f32(opts.scoreThreshold ?? YUNET.scoreThreshold);
  const faces = [];
  for (const stride of YUNET.strides) {
    const cols = Math.floor(padW / stride), rows = Math.floor(padH / stride);
    const cls = outputs[`cls_${stride}`], obj = outputs[`obj_${stride}`];
    const bbox = outputs[`bbox_${stride}`], kps = outputs[`kps_${stride}`];
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const cs = Math.min(Math.max(cls[i], 0), 1), os = Math.min(Math.max(obj[i], 0), 1);
        const score = f32(Math.sqrt(f32(cs * os)));
        if (score < thr) continue;
        const cx = f32(f32(c + bbox[i * 4]) * stride), cy = f32(f32(r + bbox[i * 4 + 1]) * stride);
        const w = f32(f32(Math.exp(bbox[i * 4 + 2])) * stride), h = f32(f32(Math.exp(bbox[i * 4 + 3])) * stride);
        const landmarks = [];
        for (let n = 0; n < 5; n++) {
          landmarks.push([f32(f32(kps[i * 10 + 2 * n] + c) * stride), f32(f32(kps[i * 10 + 2 * n + 1] + r) * stride)]);
        }
        faces.push({ box: [f32(cx - w / 2), f32(cy - h / 2), w, h], landmarks, score });
      }
    }
  }
  if (faces.length <= 1) return faces;
  const nms = f32(opts.nmsThreshold ?? YUNET.nmsThreshold);
  return nmsBoxes(faces, thr, nms, opts.topK ?? YUNET.topK).map((k) => faces[k]);
}

/** cv::dnn::NMSBoxes on integer rectangles (the detector truncates its float boxes to int first). */
export function nmsBoxes(faces, scoreThreshold, nmsThreshold, topK) {
  const rects = faces.map((f) => f.box.map((v) => Math.trunc(v)));
  let order = faces.map((f, i) => [f.score, i]).filter(([s]) => s > scoreThreshold);
  order.sort((a, b) => b[0] - a[0] || a[1] - b[1]); // stable, highest first
  if (topK > 0 && topK < order.length) order = order.slice(0, topK);
  const keep = [];
  for (const [, i] of order) {
    if (keep.every((k) => iou(rects[i], rects[k]) <= nmsThreshold)) keep.push(i);
  }
  return keep;
}

function iou(a, b) {
  const areaA = a[2] * a[3], areaB = b[2] * b[3];
  if (areaA + areaB <= 0) return 1;
  const x1 = Math.max(a[0], b[0]), y1 = Math.max(a[1], b[1]);
  const x2 = Math.min(a[0] + a[2], b[0] + b[2]), y2 = Math.min(a[1] + a[3], b[1] + b[3]);
  const inter = (x2 - x1 > 0 && y2 - y1 > 0) ? (x2 - x1) * (y2 - y1) : 0;
  return f32(1 - f32(1 - inter / (areaA + areaB - inter)));
}

/** YuNetDetector.detect: pad tiny inputs, run the network (`runYuNet(data, padH, padW)` resolves to its
 * outputs by name), decode; faces sorted by score, highest first. */
export async function detectYuNet(img, runYuNet, opts = {}) {
  let input = img;
  if (Math.min(img.width, img.height) < YUNET.minSide) {
    input = padImage(img, 0, Math.max(0, YUNET.minSide - img.height), 0, Math.max(0, YUNET.minSide - img.width), false);
  }
  const { data, padW, padH } = yunetInput(input);
  const outputs = await runYuNet(data, padH, padW);
  return decodeYuNet(outputs, padW, padH, opts).sort((a, b) => b.score - a.score);
}

/** detect_scaled: detect on a copy whose longest side is at most `detectSize` and at least MIN_DETECT_SIZE, then
 * map the faces back to the image's own pixels (cv2.resize's pixel-centre convention). */
export async function detectScaled(img, runYuNet, opts = {}) {
  const detectSize = opts.detectSize ?? DETECT_SIZE;
  let { width: w, height: h } = img;
  let pad = 0;
  if (opts.padSmall && Math.max(w, h) < MIN_DETECT_SIZE) {
    pad = rint(0.25 * Math.max(w, h));
    img = padImage(img, pad, pad, pad, pad, true);
    w = img.width; h = img.height;
  }
  const side = Math.max(w, h);
  let scale = 1;
  if (detectSize && side > detectSize) scale = detectSize / side;
  else if (side < MIN_DETECT_SIZE) scale = MIN_DETECT_SIZE / side;
  let faces;
  if (scale !== 1) {
    const sw = Math.max(1, rint(w * scale)), sh = Math.max(1, rint(h * scale));
    const small = scale < 1 ? resizeArea(img, sw, sh) : resizeLinear(img, sw, sh);
    faces = (await detectYuNet(small, runYuNet, opts)).map((f) => rescaleFace(f, sw / w, sh / h));
  } else {
    faces = await detectYuNet(img, runYuNet, opts);
  }
  return pad ? faces.map((f) => shiftFace(f, -pad)) : faces;
}

function rescaleFace(f, sx, sy) {
  const [x, y, w, h] = f.box;
  return { box: [(x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5, w / sx, h / sy], score: f.score,
           landmarks: f.landmarks.map(([px, py]) => [(px + 0.5) / sx - 0.5, (py + 0.5) / sy - 0.5]) };
}

function shiftFace(f, d) {
  const [x, y, w, h] = f.box;
  return { box: [x + d, y + d, w, h], score: f.score, landmarks: f.landmarks.map(([px, py]) => [px + d, py + d]) };
}

/** faces/detect.py invalid_face_reason: why a detection cannot be a face (null when it can). */
export function invalidFaceReason(face, width, height) {
  const [x, y, w, h] = face.box;
  const pts = face.landmarks.flat();
  if (![x, y, w, h].every(Number.isFinite)) return 'non-finite box';
  if (!pts.every(Number.isFinite)) return 'non-finite landmarks';
  if (!Number.isFinite(face.score)) return 'non-finite score';
  if (w < 1 || h < 1) return 'zero-size or negative box';
  if (x + w <= 0 || y + h <= 0 || x >= width || y >= height) return 'box outside the image';
  for (const [px, py] of face.landmarks) {
    if (px < x - w || py < y - h || px > x + 2 * w || py > y + 2 * h) return 'landmarks far outside the box';
  }
  return null;
}

/** recognizer.py face_sized: a face crop rather than a scene (small, near square, not blank). */
export function faceSized(img) {
  const { width: w, height: h, data } = img;
  if (Math.max(w, h) > FACE_SIZED_MAX || Math.max(w, h) > 2 * Math.min(w, h)) return false;
  let sum = 0;
  for (let i = 0; i < data.length; i++) sum += data[i];
  const mean = sum / data.length;
  let sq = 0;
  for (let i = 0; i < data.length; i++) sq += (data[i] - mean) ** 2;
  return Math.sqrt(sq / data.length) >= MIN_FACE_CONTRAST;
}

// ---------------------------------------------------------------------------------------------------------
// alignment

/** Umeyama's least-squares similarity taking `src` points onto `dst` (align.py estimate_similarity), in the 2-D
 * closed form: the proper rotation and scale that the SVD with its reflection check gives. */
export function estimateSimilarity(src, dst) {
  const n = src.length;
  let msx = 0, msy = 0, mdx = 0, mdy = 0;
  for (let i = 0; i < n; i++) { msx += src[i][0]; msy += src[i][1]; mdx += dst[i][0]; mdy += dst[i][1]; }
  msx /= n; msy /= n; mdx /= n; mdy /= n;
  let varS = 0, c00 = 0, c01 = 0, c10 = 0, c11 = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i][0] - msx, sy = src[i][1] - msy, dx = dst[i][0] - mdx, dy = dst[i][1] - mdy;
    varS += sx * sx + sy * sy;
    c00 += dx * sx; c01 += dx * sy; c10 += dy * sx; c11 += dy * sy;
  }
  varS /= n;
  if (!(varS >= 1e-12)) throw new Error('source points are all at the same position; no transform is defined');
  const a = (c00 + c11) / n, b = (c10 - c01) / n, norm = Math.hypot(a, b);
  const cos = a / norm, sin = b / norm, scale = norm / varS;
  const m00 = scale * cos, m01 = -scale * sin, m10 = scale * sin, m11 = scale * cos;
  return [m00, m01, mdx - (m00 * msx + m01 * msy), m10, m11, mdy - (m10 * msx + m11 * msy)];
}

/** cv2.warpAffine(img, M, (w, h), INTER_LINEAR, BORDER_REPLICATE) on uint8 as OpenCV computes it: the inverse
 * map in double, source positions in 1/32 pixel (INTER_BITS = 5, via 10-bit fixed-point steps), bilinear weights
 * in 15-bit fixed point. Bit-exact against cv2 4.14 (tests/test_web.py). */
export function warpAffine(img, M, dw, dh) {
  const [i0, i1, i2, i3, i4, i5] = invertAffine(M);
  const out = makeImage(dw, dh), sw = img.width, sh = img.height, src = img.data, AB = 1024, half = 16;
  const at = (x, y, c) => src[(Math.min(Math.max(y, 0), sh - 1) * sw + Math.min(Math.max(x, 0), sw - 1)) * 3 + c];
  for (let y = 0; y < dh; y++) {
    const X0 = rint((i1 * y + i2) * AB) + half, Y0 = rint((i4 * y + i5) * AB) + half;
    for (let x = 0; x < dw; x++) {
      const X = (X0 + rint(i0 * x * AB)) >> 5, Y = (Y0 + rint(i3 * x * AB)) >> 5;
      const ix = X >> 5, iy = Y >> 5, ax = X & 31, ay = Y & 31;
      const w00 = (32 - ay) * (32 - ax) * 32, w01 = (32 - ay) * ax * 32, w10 = ay * (32 - ax) * 32, w11 = ay * ax * 32;
      for (let c = 0; c < 3; c++) {
        const v = at(ix, iy, c) * w00 + at(ix + 1, iy, c) * w01 + at(ix, iy + 1, c) * w10 + at(ix + 1, iy + 1, c) * w11;
        out.data[(y * dw + x) * 3 + c] = clip8((v + 16384) >> 15);
      }
    }
  }
  return out;
}

/** align.py align_face: the similarity onto the geometry's template, an INTER_AREA prescale of the face's
 * footprint when the crop shrinks the face below half size, then one bilinear warp with replicated borders. */
export function alignFace(img, landmarks, geometry) {
  const [cw, ch] = geometry.size;
  let m = estimateSimilarity(landmarks, geometry.template);
  const scale = Math.sqrt(Math.abs(m[0] * m[4] - m[1] * m[3]));
  if (scale < 0.5) {
    ({ img, m } = cropFootprint(img, m, cw, ch, scale));
    ({ img, m } = prescale(img, m, scale));
  }
  return warpAffine(img, m, cw, ch);
}

function invertAffine(m) {
  const det = m[0] * m[4] - m[1] * m[3], D = det !== 0 ? 1 / det : 0;
  const a = m[4] * D, b = -m[1] * D, c = -m[3] * D, d = m[0] * D;
  return [a, b, -a * m[2] - b * m[5], c, d, -c * m[2] - d * m[5]];
}

function cropFootprint(img, m, cw, ch, scale) {
  const inv = invertAffine(m), w = img.width, h = img.height;
  const xs = [], ys = [];
  for (const [px, py] of [[-1, -1], [cw, -1], [-1, ch], [cw, ch]]) {
    xs.push(px * inv[0] + py * inv[1] + inv[2]); ys.push(px * inv[3] + py * inv[4] + inv[5]);
  }
  const pad = Math.ceil(2 / scale) + 2;
  const x0 = Math.max(0, Math.floor(Math.min(...xs)) - pad), y0 = Math.max(0, Math.floor(Math.min(...ys)) - pad);
  const x1 = Math.min(w, Math.ceil(Math.max(...xs)) + pad + 1), y1 = Math.min(h, Math.ceil(Math.max(...ys)) + pad + 1);
  if (x1 - x0 < 2 || y1 - y0 < 2 || (x0 === 0 && y0 === 0 && x1 === w && y1 === h)) return { img, m };
  const out = makeImage(x1 - x0, y1 - y0);
  for (let y = y0; y < y1; y++) {
    out.data.set(img.data.subarray((y * w + x0) * 3, (y * w + x1) * 3), (y - y0) * (x1 - x0) * 3);
  }
  return { img: out, m: [m[0], m[1], m[0] * x0 + m[1] * y0 + m[2], m[3], m[4], m[3] * x0 + m[4] * y0 + m[5]] };
}

function prescale(img, m, scale) {
  const w = img.width, h = img.height;
  const nw = Math.max(1, rint(w * scale)), nh = Math.max(1, rint(h * scale));
  const small = resizeArea(img, nw, nh), fx = nw / w, fy = nh / h;
  const b = [1 / fx, 0.5 / fx - 0.5, 1 / fy, 0.5 / fy - 0.5];
  return { img: small, m: [m[0] * b[0], m[1] * b[2], m[0] * b[1] + m[1] * b[3] + m[2],
                           m[3] * b[0], m[4] * b[2], m[3] * b[1] + m[4] * b[3] + m[5]] };
}

// ---------------------------------------------------------------------------------------------------------
// the crop as the model takes it (weights/preprocessing.py)

/** Pillow's convert("L") (ITU-R 601 luma in 16-bit fixed point), replicated to 3 channels. */
export function toGrey3(img) {
  const out = makeImage(img.width, img.height), s = img.data;
  for (let i = 0; i < s.length; i += 3) {
    const l = (s[i] * 19595 + s[i + 1] * 38470 + s[i + 2] * 7471 + 0x8000) >> 16;
    out.data[i] = l; out.data[i + 1] = l; out.data[i + 2] = l;
  }
  return out;
}

const FILTERS = {
  box: [0.5, (x) => (x > -0.5 && x <= 0.5 ? 1 : 0)],
  bilinear: [1, (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0)],
  hamming: [1, (x) => {
    x = Math.abs(x);
    if (x === 0) return 1;
    if (x >= 1) return 0;
    x *= Math.PI;
    return Math.sin(x) / x * (f32(0.54) + f32(0.46) * Math.cos(x)); // Pillow's 0.54f, 0.46f
  }],
  bicubic: [2, (x) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }],
  lanczos: [3, (x) => {
    const sinc = (v) => (v === 0 ? 1 : Math.sin(Math.PI * v) / (Math.PI * v));
    return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
  }],
};
export const RESIZE_FILTERS = Object.freeze(Object.keys(FILTERS));

function pillowCoeffs(inSize, outSize, filter) {
  const [support0, fn] = FILTERS[filter], scale = inSize / outSize, fscale = Math.max(scale, 1);
  const support = support0 * fscale, ss = 1 / fscale, taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) { const w = fn((x + xmin - center + 0.5) * ss); k.push(w); ww += w; }
    const fixed = k.map((w) => {
      const v = ww !== 0 ? w / ww : w;
      return Math.trunc(v < 0 ? -0.5 + v * 4194304 : 0.5 + v * 4194304); // 22-bit fixed point
    });
    taps.push({ xmin, k: fixed });
  }
  return taps;
}

/** Pillow's Image.resize(size, filter) on 8-bit RGB: separable, 22-bit fixed-point weights, horizontal first. */
export function resizePillow(img, dw, dh, filter = 'bilinear') {
  if (!(filter in FILTERS)) throw new Error(`resize_interpolation ${filter} is not supported in the browser`);
  let cur = img;
  const pass = (src, taps, horizontal) => {
    const w = horizontal ? taps.length : src.width, h = horizontal ? src.height : taps.length, out = makeImage(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const { xmin, k } = taps[horizontal ? x : y];
        for (let c = 0; c < 3; c++) {
          let acc = 1 << 21;
          for (let i = 0; i < k.length; i++) {
            const s = horizontal ? (y * src.width + xmin + i) : ((xmin + i) * src.width + x);
            acc += src.data[s * 3 + c] * k[i];
          }
          out.data[(y * w + x) * 3 + c] = clip8(Math.floor(acc / 4194304));
        }
      }
    }
    return out;
  };
  if (dw !== cur.width) cur = pass(cur, pillowCoeffs(cur.width, dw, filter), true);
  if (dh !== cur.height) cur = pass(cur, pillowCoeffs(cur.height, dh, filter), false);
  return cur;
}

/** Preprocessing.pixels then .normalize for a batch of crops: float32 (B, 3, S, S), the arithmetic of numpy's
 * float32 steps (x / 255, channel order, (x - mean) / std). */
export function preprocess(crops, prep) {
  const S = prep.input_size, plane = S * S, out = new Float32Array(crops.length * 3 * plane);
  const mean = prep.mean.map(f32), std = prep.std.map(f32), bgr = prep.channel_order === 'BGR';
  crops.forEach((crop, b) => {
    let px = prep.grayscale ? toGrey3(crop) : crop;
    if (px.width !== S || px.height !== S) px = resizePillow(px, S, S, prep.resize_interpolation || 'bilinear');
    for (let c = 0; c < 3; c++) {
      const src = bgr ? 2 - c : c, base = (b * 3 + c) * plane;
      for (let i = 0; i < plane; i++) {
        const v = f32(px.data[i * 3 + src] / 255);
        out[base + i] = f32(f32(v - mean[c]) / std[c]);
      }
    }
  });
  return out;
}

/** An image taken whole as the crop (a face-sized input with no face found): Preprocessing.prepare_crop. */
export function prepareCrop(img, prep) {
  return prep.grayscale ? toGrey3(img) : img;
}

// ---------------------------------------------------------------------------------------------------------
// calibration and probabilities (probabilities.py)

/** The calibration of operating point `name` (null or "default": the card's top level). */
export function operatingPoint(card, name) {
  if (name == null || name === 'default') {
    return { name: 'default', temperature: card.temperature ?? 1, logit_bias: card.logit_bias ?? null };
  }
  const point = (card.operating_points || {})[name];
  if (!point) {
    throw new Error(`no operating point ${name} in this model's calibration; it has: ` +
                    ['default', ...Object.keys(card.operating_points || {})].join(', '));
  }
  return { name, temperature: point.temperature ?? 1, logit_bias: point.logit_bias ?? null };
}

/** calibrate_logits: (logits + logit_bias) / temperature in float32, for one row. */
export function calibrate(logits, calibration) {
  const t = f32(calibration.temperature ?? 1), bias = calibration.logit_bias;
  return Array.from(logits, (v, i) => {
    const z = bias ? f32(v + f32(bias[i])) : f32(v);
    return t === 1 ? z : f32(z / t);
  });
}

/** The project's softmax (float32, max subtracted first), for one row. */
export function softmax(z) {
  const m = Math.max(...z), e = z.map((v) => f32(Math.exp(f32(v - m))));
  let s = 0;
  for (const v of e) s = f32(s + v);
  return e.map((v) => f32(v / s));
}

/** Run the classifier on prepared crops: calibrated probabilities, one array per crop.
 * `runModel(batch, n)` resolves to the raw logits (Float32Array, n x classes). */
export async function classify(crops, prep, card, calibration, runModel, batchSize = 32) {
  const C = card.classes.length, out = [];
  for (let s = 0; s < crops.length; s += batchSize) {
    const chunk = crops.slice(s, s + batchSize);
    const logits = await runModel(preprocess(chunk, prep), chunk.length);
    for (let i = 0; i < chunk.length; i++) out.push(softmax(calibrate(logits.slice(i * C, (i + 1) * C), calibration)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// the whole photo path (Recognizer.faces_and_crops + classify + result), on ONNX Runtime sessions

/** Open the detector and the model: `ort` is onnxruntime-web's module; `files` their URLs or bytes. */
export async function createPipeline(ort, { detector, model, card, operatingPoint: point = null, options = {} }) {
  const sessionOptions = { executionProviders: ['wasm'], graphOptimizationLevel: 'all', ...options };
  const [det, net] = await Promise.all([ort.InferenceSession.create(detector, sessionOptions),
                                        ort.InferenceSession.create(model, sessionOptions)]);
  return new Pipeline(ort, det, net, card, operatingPoint(card, point));
}

export class Pipeline {
  constructor(ort, detector, model, card, calibration) {
    this.ort = ort; this.detector = detector; this.model = model; this.card = card; this.calibration = calibration;
    this.prep = card.preprocessing;
    this.classes = card.classes;
  }

  async runYuNet(data, h, w) {
    const feeds = { [this.detector.inputNames[0]]: new this.ort.Tensor('float32', data, [1, 3, h, w]) };
    const res = await this.detector.run(feeds);
    return Object.fromEntries(Object.entries(res).map(([k, t]) => [k, t.data]));
  }

  async runModel(batch, n) {
    const S = this.prep.input_size;
    const input = new this.ort.Tensor('float32', batch, [n, 3, S, S]);
    const res = await this.model.run({ [this.model.inputNames[0]]: input });
    return res[this.model.outputNames[0]].data;
  }

  /** Faces (best first, invalid detections dropped) and their aligned crops; a face-sized image with no face is
   * taken whole, as the Python recognizer's whole_image_fallback does. */
  async facesAndCrops(img, opts = {}) {
    const found = await detectScaled(img, (d, h, w) => this.runYuNet(d, h, w), opts);
    const faces = found.filter((f) => invalidFaceReason(f, img.width, img.height) === null);
    const dropped = found.length - faces.length;
    const kept = opts.maxFaces ? faces.slice(0, opts.maxFaces) : faces;
    if (!kept.length && opts.wholeImageFallback !== false && faceSized(img)) {
      return { faces: [{ box: [0, 0, img.width, img.height], landmarks: null, score: null, detection: 'whole_image' }],
               crops: [prepareCrop(img, this.prep)], dropped };
    }
    const geometry = this.prep.crop_geometry;
    const crops = kept.map((f) => prepareCrop(alignFace(img, f.landmarks, geometry), this.prep));
    return { faces: kept, crops, dropped };
  }

  /** Every face of an RGB image with its label and calibrated probabilities. */
  async predict(img, opts = {}) {
    const t0 = performance.now();
    const { faces, crops, dropped } = await this.facesAndCrops(img, opts);
    const t1 = performance.now();
    const probs = await classify(crops, this.prep, this.card, this.calibration, (b, n) => this.runModel(b, n));
    const results = faces.map((f, i) => {
      const p = probs[i];
      const k = p.indexOf(Math.max(...p));
      return { ...f, label: this.classes[k], probabilities: Object.fromEntries(this.classes.map((c, j) => [c, p[j]])) };
    });
    const seconds = { detect_align: (t1 - t0) / 1000, classify: (performance.now() - t1) / 1000 };
    return { faces: results, dropped, seconds };
  }
}
