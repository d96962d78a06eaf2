// The exported page: decode a photo, run poster_fer.js on it, draw the boxes and list the labels.
// Everything it loads sits beside it (the runtime in ./ort/, model.onnx, the detector, model.json).
// window.posterFer exposes the same calls to tests and benchmarks.
import * as ort from './ort/ort.wasm.min.mjs';
import { DECODE_OPTIONS, bitmapToRGB, createPipeline } from './poster_fer.js';

const MAX_PIXELS = 50_000_000; // poster_fer.constants.DEFAULT_MAX_PIXELS
const $ = (id) => document.getElementById(id);

class InputError extends Error {}

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
// threads need cross-origin isolation (COOP/COEP headers); a plain static host gives one thread
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

async function loadCard() {
  const r = await fetch('./model.json');
  if (!r.ok) throw new Error(`model.json: HTTP ${r.status}`);
  return r.json();
}

const ready = (async () => {
  const t0 = performance.now();
  const card = await loadCard();
  const pipeline = await createPipeline(ort, { detector: `./${card.files.detector}`, model: `./${card.files.model}`,
                                               card, operatingPoint: card.operating_point });
  return { card, pipeline, loadSeconds: (performance.now() - t0) / 1000 };
})();

/** A blob as an RGB image, decoded as Python decodes it: EXIF orientation applied, no colour-profile conversion,
 * transparency composited on white. */
async function decode(blob, name = 'the file') {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, DECODE_OPTIONS);
  } catch (err) {
    throw new InputError(`${name} is not an image this browser can read (${blob.type || 'unknown type'}); ` +
                         'choose a JPEG, PNG, WebP, GIF or BMP photo');
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) {
    bitmap.close();
    throw new InputError(`${name} is ${width}×${height} pixels, over the ${MAX_PIXELS / 1e6} megapixel limit`);
  }
  return bitmapToRGB(bitmap);
}

async function predictBlob(blob, name, opts = {}) {
  const { pipeline } = await ready;
  const img = await decode(blob, name);
  const t0 = performance.now();
  const out = await pipeline.predict(img, opts);
  return { ...out, width: img.width, height: img.height, total_seconds: (performance.now() - t0) / 1000 };
}

async function predictUrl(url, opts = {}) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return predictBlob(await r.blob(), url.split('/').pop(), opts);
}

function setStatus(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

function draw(result) {
  const overlay = $('overlay'), list = $('faces');
  overlay.replaceChildren(); list.replaceChildren();
  result.faces.forEach((f, i) => {
    const [x, y, w, h] = f.box, conf = f.probabilities[f.label];
    const box = document.createElement('div');
    box.className = 'box';
    Object.assign(box.style, { left: `${100 * x / result.width}%`, top: `${100 * y / result.height}%`,
                               width: `${100 * w / result.width}%`, height: `${100 * h / result.height}%` });
    const tag = document.createElement('span');
    tag.className = 'box-label';
    tag.textContent = `${i + 1} ${f.label}`;
    box.append(tag);
    overlay.append(box);
    const item = document.createElement('li');
    item.className = 'face';
    item.innerHTML = `<div><span class="label"></span> ${(100 * conf).toFixed(1)}%</div>`;
    item.querySelector('.label').textContent = `${i + 1}. ${f.label}`;
    for (const [c, p] of Object.entries(f.probabilities).sort((a, b) => b[1] - a[1])) {
      const bar = document.createElement('div');
      bar.className = 'bar';
      const pct = (100 * p).toFixed(1);
      bar.innerHTML = `<span></span><i style="width:${pct}px"></i><span>${pct}%</span>`;
      bar.firstChild.textContent = c;
      item.append(bar);
    }
    list.append(item);
  });
}

async function handleFiles(files) {
  for (const file of files) {
    try {
      setStatus(`Reading ${file.name}…`);
      const result = await predictBlob(file, file.name);
      $('photo').src = URL.createObjectURL(file);
      draw(result);
      const n = result.faces.length;
      setStatus(`${file.name}: ${n ? `${n} face${n > 1 ? 's' : ''}` : 'no face found'} ` +
                `(${(1000 * result.total_seconds).toFixed(0)} ms, on this device)`);
    } catch (err) {
      $('faces').replaceChildren(); $('overlay').replaceChildren(); $('photo').removeAttribute('src');
      setStatus(err instanceof InputError ? err.message : `Could not label ${file.name}: ${err.message}`, true);
    }
  }
}

async function init() {
  try {
    const { card, pipeline, loadSeconds } = await ready;
    $('model').textContent = `${card.name || card.model} (${card.classes.length} classes)`;
    const select = $('point');
    for (const name of ['default', ...Object.keys(card.operating_points)]) select.add(new Option(name, name));
    select.value = card.operating_point;
    select.onchange = async () => {
      const { operatingPoint } = await import('./poster_fer.js');
      pipeline.calibration = operatingPoint(card, select.value);
    };
    setStatus(`Ready (model loaded in ${loadSeconds.toFixed(2)} s). Choose or drop a photo.`);
  } catch (err) {
    setStatus(`The model could not be loaded: ${err.message}`, true);
  }
  $('file').onchange = (e) => handleFiles([...e.target.files]);
  const drop = $('drop');
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove('over'); handleFiles([...e.dataTransfer.files]); };
}

window.posterFer = { ready, decode, predictBlob, predictUrl, ort };
init();
