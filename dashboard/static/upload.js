// "Upload a bag": Uppy's Dashboard sending the file over tus 1.0 to this server as the signed-in operator.
// The session cookie goes along (same origin) and the page's CSRF token rides in X-CSRF-Token, which is
// what lets a browser session write through the API. Before the bytes go out, the file's sha256 is
// computed in slices (never the whole file in memory) and sent in Upload-Metadata: the server checks the
// stored bytes against it, so the upload ends `verified` and its bag reaches the Recordings view.
// Every PATCH also carries Upload-Checksum (sha256 of exactly the bytes it sends): a chunk damaged on
// the way is refused with 460 before it is stored, and a retry resumes from the server's offset.
// With DASHBOARD_UPLOAD_STREAMS > 1 a file goes as that many tus partial uploads in parallel, joined by
// the server (concatenation); their PATCHes carry no Upload-Checksum, as a partial upload's request
// does not say where in the file its bytes start (the whole-file sha256 still verifies the result).
"use strict";
(function () {
  const button = document.getElementById("upload-bag");
  const status = document.getElementById("upload-status");
  if (!button || button.disabled) return;
  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    status.title = text; // the line is cut at narrow widths; the whole of it on hover
  }
  if (!window.Uppy || !window.sha256) {
    // The <script> tags are only rendered when the files exist; this is a proxy or cache in the way.
    button.disabled = true;
    say("unavailable", "uploads unavailable: the Uppy files did not load");
    return;
  }
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const chunkSize = Number(button.dataset.chunkSize);
  const streams = Number(button.dataset.streams) || 1;
  const HASH_SLICE = 8 * 1024 * 1024;
  const POLL_MS = 1000;
  const FINAL = ["complete", "failed", "aborted"];

  // --- hashing: slices of the file, so a multi-GB bag never sits in memory -----------------------
  async function sha256Of(blob, onProgress) {
    const hash = window.sha256.create();
    for (let start = 0; start < blob.size; start += HASH_SLICE) {
      hash.update(await blob.slice(start, start + HASH_SLICE).arrayBuffer());
      onProgress(Math.min(1, (start + HASH_SLICE) / blob.size));
    }
    return hash;
  }
  // One chunk's digest: WebCrypto where the page is a secure context (HTTPS, or 127.0.0.1), at native
  // speed; js-sha256 elsewhere. WebCrypto cannot hash a stream, so the whole-file pass is js-sha256's.
  async function chunkSha256(buffer) {
    if (window.crypto && window.crypto.subtle) return window.crypto.subtle.digest("SHA-256", buffer);
    return window.sha256.arrayBuffer(buffer);
  }
  function base64(buffer) {
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text);
  }
  // A folder dropped whole (a rosbag2 bag: its storage files and metadata.yaml) is one bag named after
  // the folder; a single file is a bag named after the file, without its extension.
  function bagName(file) {
    const relative = file.meta.relativePath;
    if (relative && relative.includes("/")) return relative.split("/")[0];
    return file.name.replace(/\.[^.]+$/, "") || file.name;
  }

  const { Uppy, Dashboard, Tus } = window.Uppy;
  const uppy = new Uppy({
    id: "bag-upload",
    autoProceed: false,
    restrictions: { maxFileSize: Number(button.dataset.maxFileSize) },
  });
  uppy.use(Dashboard, {
    trigger: "#upload-bag",
    closeModalOnClickOutside: true,
    proudlyDisplayPoweredByUppy: false,
    disableThumbnailGenerator: true,
    showRemoveButtonAfterComplete: true,
    fileManagerSelectionType: "both",
    note: "rosbag2 files or a whole bag folder; each file is verified by sha256 on the server",
  });
  uppy.use(Tus, {
    endpoint: button.dataset.endpoint,
    headers: { "X-CSRF-Token": csrf },
    chunkSize: chunkSize,
    retryDelays: [0, 1000, 3000, 5000],
    removeFingerprintOnSuccess: true,
    limit: 3, // files in flight at once: a whole bag folder must not open dozens of uploads against the rate limits
    parallelUploads: streams,
    allowedMetaFields: ["filename", "bag", "sha256"],
    // Upload-Checksum of each PATCH: its body is the file's bytes [Upload-Offset, Upload-Offset + chunkSize).
    onBeforeRequest: async (req, file) => {
      if (req.getMethod() !== "PATCH" || streams > 1) return;
      const offset = Number(req.getHeader("Upload-Offset"));
      const body = await file.data.slice(offset, Math.min(offset + chunkSize, file.size)).arrayBuffer();
      req.setHeader("Upload-Checksum", "sha256 " + base64(await chunkSha256(body)));
    },
  });

  uppy.addPreProcessor(async (fileIDs) => {
    for (const id of fileIDs) {
      const file = uppy.getFile(id);
      const progress = (value) =>
        uppy.emit("preprocess-progress", file, { mode: "determinate", message: "Computing sha256…", value: value });
      progress(0);
      const hash = await sha256Of(file.data, progress);
      uppy.setFileMeta(id, { filename: file.name, bag: bagName(file), sha256: hash.hex() });
      uppy.emit("preprocess-complete", uppy.getFile(id));
    }
  });

  // --- the result: the server's own record of the upload, until it is finalized ------------------
  const results = new Map(); // file name -> latest line
  function show() {
    const lines = Array.from(results.values());
    const failed = lines.some((line) => line.state === "failed");
    const pending = lines.some((line) => !FINAL.includes(line.state));
    say(failed ? "failed" : pending ? "uploading" : "complete", lines.map((line) => line.text).join(" · "));
  }
  function record(name, state, text) {
    results.set(name, { state: state, text: name + ": " + text });
    show();
  }
  async function follow(name, uploadId) {
    for (;;) {
      let body = null;
      try {
        const reply = await fetch(button.dataset.statusUrl + encodeURIComponent(uploadId), {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        body = await reply.json();
        if (!reply.ok && reply.status !== 429 && reply.status < 500) {
          record(name, "failed", "the server does not know this upload (HTTP " + reply.status + ")");
          return;
        }
      } catch (err) {
        body = null; // the server restarting: ask again
      }
      const state = body && body.state;
      if (state === "complete") {
        record(name, "complete", body.verified ? "stored and verified (sha256)" : "stored, not verified");
        return;
      }
      if (state && FINAL.includes(state)) {
        record(name, "failed", state + (body.error ? ": " + body.error : ""));
        return;
      }
      if (state) record(name, "uploading", state === "finalizing" ? "verifying on the server…" : state);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  uppy.on("upload", () => say("uploading", "uploading…"));
  uppy.on("upload-progress", (file, progress) => {
    if (progress.bytesTotal) record(file.name, "uploading", Math.floor((100 * progress.bytesUploaded) / progress.bytesTotal) + "%");
  });
  uppy.on("upload-success", (file, response) => {
    const uploadId = response.uploadURL.replace(/\/+$/, "").split("/").pop();
    button.dataset.lastUpload = uploadId;
    record(file.name, "finalizing", "sent, verifying on the server…");
    follow(file.name, uploadId);
  });
  uppy.on("upload-error", (file, error, response) => {
    if (!file) return;
    if (response && response.status === 401) {
      // The sign-in expired or its key was revoked; Retry after signing in again resumes the upload.
      record(file.name, "failed", "not signed in any more: reload the page, sign in, and press Retry");
      return;
    }
    record(file.name, "failed", "failed: " + (error && error.message ? error.message : error));
  });
  button.dataset.ready = "1"; // for tests and curious operators: the widget is wired up
})();
