// Drives tus-js-client (Node) for tests/tus/test_tus_js_client.py and bench/peer_tus.py.
//
//   node tus_client.mjs '<JSON options>'
//
// options: endpoint, path, headers, metadata, chunkSize, parallelUploads, uploadUrl (resume),
// source ("path": an fs.ReadStream, sent with Content-Length; "buffer": a Buffer, which Node's
// http sends chunked), checksum (add an Upload-Checksum: sha256 to each PATCH in
// onBeforeRequest: tus-js-client itself has no checksum support), deferLength (a plain stream whose
// size tus-js-client cannot know, sent with uploadLengthDeferred: Upload-Length comes in the last PATCH).
// Prints one JSON line per event (creating, created, resumed_from, success, error) and exits 0 on success.
import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { PassThrough } from 'node:stream'
import { Upload } from 'tus-js-client'

const options = JSON.parse(process.argv[2])
const emit = (event) => console.log(JSON.stringify(event))
const size = statSync(options.path).size
const whole = options.checksum || options.source === 'buffer' ? readFileSync(options.path) : null

// parallelUploads refuses uploadUrl and uploadSize: it derives the size from the file itself.
const single = (options.parallelUploads ?? 1) === 1 ? { uploadUrl: options.uploadUrl ?? null, uploadSize: size } : {}
// A PassThrough is no fs.ReadStream: tus-js-client reads it as a stream of unknown length.
const deferred = options.deferLength ? { uploadSize: null, uploadLengthDeferred: true } : {}
const source = () => {
  if (options.source === 'buffer') return whole
  return options.deferLength ? createReadStream(options.path).pipe(new PassThrough()) : createReadStream(options.path)
}

const upload = new Upload(source(), {
  endpoint: options.endpoint,
  ...single,
  ...deferred,
  headers: options.headers ?? {},
  metadata: options.metadata ?? {},
  chunkSize: options.chunkSize ?? Infinity,
  parallelUploads: options.parallelUploads ?? 1,
  retryDelays: null, // the tests decide when to resume
  storeFingerprintForResuming: false,
  onBeforeRequest(req) {
    if (req.getMethod() === 'POST') emit({ event: 'creating', defer_length: req.getHeader('Upload-Defer-Length') ?? null })
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
