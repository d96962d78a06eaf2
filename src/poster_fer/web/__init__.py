"""Recognition inside the browser: a static folder that labels photos on the visitor's machine, nothing uploaded.

:func:`export_web` writes the folder (``poster-fer export --format web DIR``): the page, its pipeline
(``poster_fer.js``, the JavaScript twin of the Python steps), the pinned onnxruntime-web WASM files, the model's
ONNX file, the YuNet detector and the model's description as JSON. Any static host serves it, or
``python -m http.server``; nothing is fetched from another origin. docs/browser.md says how it works and when to
choose it over ``poster-fer serve``.
"""

from __future__ import annotations

from .export import RUNTIME_DIR, STATIC_DIR, WebExportError, export_web, runtime_files, runtime_record, web_card

__all__ = ["RUNTIME_DIR", "STATIC_DIR", "WebExportError", "export_web", "runtime_files", "runtime_record",
           "web_card"]
