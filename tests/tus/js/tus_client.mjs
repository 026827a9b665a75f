// Drives tus-js-client (Node) for the tests in tests/tus/test_tus_js_client.py.
//
//   node tus_client.mjs '<JSON options>'
//
// options: endpoint, path, headers, metadata, chunkSize, parallelUploads, uploadUrl (resume),
// source ("path": an fs.ReadStream, sent with Content-Length; "buffer": a Buffer, which Node's
// http sends chunked), checksum (add an Upload-Checksum: sha256 to each PATCH in
// onBeforeRequest: tus-js-client itself has no checksum support).
// Prints one JSON line per event (created, resumed_from, success, error) and exits 0 on success.
import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { Upload } from 'tus-js-client'

const options = JSON.parse(process.argv[2])
const emit = (event) => console.log(JSON.stringify(event))
const size = statSync(options.path).size
const whole = options.checksum || options.source === 'buffer' ? readFileSync(options.path) : null

// parallelUploads refuses uploadUrl and uploadSize: it derives the size from the file itself.
const single = (options.parallelUploads ?? 1) === 1 ? { uploadUrl: options.uploadUrl ?? null, uploadSize: size } : {}

const upload = new Upload(options.source === 'buffer' ? whole : createReadStream(options.path), {
  endpoint: options.endpoint,
  ...single,
  headers: options.headers ?? {},
  metadata: options.metadata ?? {},
  chunkSize: options.chunkSize ?? Infinity,
  parallelUploads: options.parallelUploads ?? 1,
  retryDelays: null, // the tests decide when to resume
  storeFingerprintForResuming: false,
  onBeforeRequest(req) {
    const offset = req.getHeader('Upload-Offset')
    if (options.checksum && req.getMethod() === 'PATCH' && offset !== undefined) {
      const start = Number(offset)
      const end = Math.min(size, start + (options.chunkSize ?? size))
      const digest = createHash('sha256').update(whole.subarray(start, end)).digest('base64')
      req.setHeader('Upload-Checksum', `sha256 ${digest}`)
    }
  },
  onAfterResponse(req, res) {
    if (req.getMethod() === 'HEAD') emit({ event: 'resumed_from', offset: Number(res.getHeader('Upload-Offset')) })
  },
  onUploadUrlAvailable() {
    emit({ event: 'created', url: upload.url })
  },
  onSuccess() {
    emit({ event: 'success', url: upload.url })
  },
  onError(error) {
    const status = error.originalResponse ? error.originalResponse.getStatus() : null
    emit({ event: 'error', url: upload.url, status, message: String(error.message).slice(0, 500) })
    process.exitCode = 1
  },
})
upload.start()
