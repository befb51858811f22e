package backup

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// The object format. Every WAL file and base backup is stored as one object:
//
//	plaintext ──zstd──► frames ++ trailer ──(with a key: AES-256-GCM chunks)──► object
//
// The trailer is a zstd skippable frame (magic 0x184D2A5E, 48 bytes of
// content: "PGFLSUM1", the plaintext's length as a little-endian uint64, and
// its SHA-256), so an unencrypted object is an ordinary .zst file that the
// zstd command decompresses (it ignores skippable frames), and every reader
// can check that it got back exactly what was stored.
//
// With a key, the compressed stream (trailer included) is encrypted in
// chunks of chunkSize bytes, so neither side ever holds more than a chunk:
//
//	header: "PGFLENC1" | key id (8) | salt (32) | chunk size (uint32, big-endian)
//	chunks: AES-256-GCM(subkey, nonce = 0^4 ++ counter (uint64 BE),
//	                    aad = header ++ counter (uint64 BE) ++ final (1 byte))
//
// The subkey is HKDF-SHA256(key, salt, "pgfleet object v1"), new for every
// object, so counters as nonces never repeat under one subkey. Every chunk
// but the last holds exactly chunk size bytes of plaintext; the last is
// sealed with final = 1 and may be shorter (even empty). A reader that meets
// the end of the object after a chunk not sealed as final knows the object
// was truncated; reordered or swapped chunks fail authentication because the
// counter is authenticated. The key id lets a reader holding another key say
// so instead of calling the object corrupt.
//
// A reader with a key accepts only encrypted objects. The trailer is a
// checksum, not a signature: anyone who can write to the store can make an
// unencrypted object whose trailer checks, so in an encrypted archive only
// the authenticated chunks prove that pgfleet wrote an object, and an
// unencrypted one would be a planted WAL file or base backup.
const (
	encMagic       = "PGFLENC1"
	encHeaderLen   = 8 + 8 + 32 + 4
	chunkSize      = 1 << 20
	maxChunkSize   = 16 << 20
	gcmOverhead    = 16
	subkeyInfo     = "pgfleet object v1"
	trailerMagic   = "PGFLSUM1"
	skippableMagic = 0x184D2A5E
	trailerLen     = 4 + 4 + 8 + 8 + sha256.Size
	zstdMagic      = 0xFD2FB528
)

// ErrCorrupt is wrapped into the error of a read that found an object
// damaged: truncated, altered, or not written by pgfleet.
var ErrCorrupt = errors.New("corrupt object")

// ErrWrongKey is wrapped into the error of a read of an object encrypted with
// another key than the one given, or of an encrypted object without a key.
var ErrWrongKey = errors.New("wrong encryption key")

// ErrNotEncrypted is wrapped into the error of a read, with a key, of an
// object that is not encrypted. pgfleet encrypts every object of an
// encrypted archive (a cluster's encryption is chosen when it is created,
// and its store must then hold nothing under its name), so such an object
// was not written by pgfleet with that key: it is refused, not read, since
// its checksum proves nothing about who wrote it.
var ErrNotEncrypted = errors.New("the archive is encrypted and the object is not")

// objectWriter encodes a plaintext stream into the object format. Close
// finishes the object; it does not close the destination.
type objectWriter struct {
	zw     *zstd.Encoder
	sealer *sealer // nil without a key
	dst    io.Writer
	sha    hash.Hash
	raw    int64
	sum    [sha256.Size]byte
	closed bool
}

// newObjectWriter returns a writer that encodes into dst, encrypting with key
// when it is not nil. concurrency is the number of zstd encoders run in
// parallel; 0 means GOMAXPROCS.
func newObjectWriter(dst io.Writer, key *Key, concurrency int) (*objectWriter, error) {
	return newObjectWriterLevel(dst, key, concurrency, zstd.SpeedDefault)
}

// newObjectWriterLevel is newObjectWriter with zstd compressing at level
// (the format does not depend on it).
func newObjectWriterLevel(dst io.Writer, key *Key, concurrency int, level zstd.EncoderLevel) (*objectWriter, error) {
	w := &objectWriter{dst: dst, sha: sha256.New()}
	if key != nil {
		s, err := newSealer(dst, key)
		if err != nil {
			return nil, err
		}
		w.sealer = s
		w.dst = s
	}
	zw, err := zstd.NewWriter(w.dst,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(concurrency),
		zstd.WithZeroFrames(true))
	if err != nil {
		return nil, err
	}
	w.zw = zw
	return w, nil
}

func (w *objectWriter) Write(p []byte) (int, error) {
	n, err := w.zw.Write(p)
	w.sha.Write(p[:n])
	w.raw += int64(n)
	return n, err
}

// Close ends the zstd stream, appends the trailer and seals the last chunk.
func (w *objectWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.zw.Close(); err != nil {
		return err
	}
	copy(w.sum[:], w.sha.Sum(nil))
	var t [trailerLen]byte
	binary.LittleEndian.PutUint32(t[0:], skippableMagic)
	binary.LittleEndian.PutUint32(t[4:], trailerLen-8)
	copy(t[8:], trailerMagic)
	binary.LittleEndian.PutUint64(t[16:], uint64(w.raw))
	copy(t[24:], w.sum[:])
	if _, err := w.dst.Write(t[:]); err != nil {
		return err
	}
	if w.sealer != nil {
		return w.sealer.Close()
	}
	return nil
}

// Sum is the SHA-256 of the plaintext, in hex; valid after Close.
func (w *objectWriter) Sum() string { return hex.EncodeToString(w.sum[:]) }

// Size is the number of plaintext bytes written.
func (w *objectWriter) Size() int64 { return w.raw }

// sealer encrypts a stream in chunks (see the format above).
type sealer struct {
	dst     io.Writer
	aead    cipher.AEAD
	header  []byte
	started bool
	buf     []byte
	out     []byte
	n       uint64
}

func newSealer(dst io.Writer, key *Key) (*sealer, error) {
	header := make([]byte, encHeaderLen)
	copy(header, encMagic)
	copy(header[8:], key.id[:])
	if _, err := rand.Read(header[16:48]); err != nil {
		return nil, err
	}
	binary.BigEndian.PutUint32(header[48:], chunkSize)
	aead, err := objectAEAD(key, header[16:48])
	if err != nil {
		return nil, err
	}
	return &sealer{dst: dst, aead: aead, header: header, buf: make([]byte, 0, chunkSize)}, nil
}

func objectAEAD(key *Key, salt []byte) (cipher.AEAD, error) {
	sub, err := hkdf.Key(sha256.New, key.secret[:], salt, subkeyInfo, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func chunkNonce(n uint64) []byte {
	nonce := make([]byte, 12)
	binary.BigEndian.PutUint64(nonce[4:], n)
	return nonce
}

func chunkAAD(header []byte, n uint64, final bool) []byte {
	aad := make([]byte, len(header)+9)
	copy(aad, header)
	binary.BigEndian.PutUint64(aad[len(header):], n)
	if final {
		aad[len(aad)-1] = 1
	}
	return aad
}

func (s *sealer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if len(s.buf) == chunkSize {
			// More data follows, so this chunk is not the last.
			if err := s.seal(false); err != nil {
				return written, err
			}
		}
		k := min(len(p), chunkSize-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
		written += k
	}
	return written, nil
}

func (s *sealer) seal(final bool) error {
	if !s.started {
		// Written with the first chunk rather than in newSealer, so that a
		// writer made before its reader (a pipe) does not block.
		if _, err := s.dst.Write(s.header); err != nil {
			return err
		}
		s.started = true
	}
	s.out = s.aead.Seal(s.out[:0], chunkNonce(s.n), s.buf, chunkAAD(s.header, s.n, final))
	s.n++
	s.buf = s.buf[:0]
	_, err := s.dst.Write(s.out)
	return err
}

// Close seals what is buffered as the final chunk.
func (s *sealer) Close() error { return s.seal(true) }

// objectReader decodes an object, returning its plaintext. At the end of the
// object it checks the trailer against what it read, and returns an error
// wrapping ErrCorrupt instead of io.EOF if they differ.
type objectReader struct {
	zr   *zstd.Decoder
	tail *holdBack
	sha  hash.Hash
	raw  int64
	sum  [sha256.Size]byte
	err  error
}

// openObject starts decoding an object read from src. key may be nil for an
// unencrypted object; with a key, an unencrypted object is refused with an
// error wrapping ErrNotEncrypted before any of it is returned. concurrency
// bounds zstd's parallel block decoding; 0 means GOMAXPROCS. The error does
// not name the object: the caller, who knows its key, does.
func openObject(src io.Reader, key *Key, concurrency int) (*objectReader, error) {
	inner, err := objectStream(src, key)
	if err != nil {
		return nil, err
	}
	return newObjectReader(inner, concurrency)
}

// newObjectReader decodes the compressed stream of an object (objectStream).
func newObjectReader(inner io.Reader, concurrency int) (*objectReader, error) {
	var err error
	r := &objectReader{tail: newHoldBack(inner, trailerLen), sha: sha256.New()}
	// The trailer is held back from the decoder, which would otherwise skip
	// it (and print a debug line to stderr as it does). The frames'
	// xxhash checksums are not checked: the trailer's SHA-256 covers the
	// same bytes, and hashing them twice slows a restore.
	r.zr, err = zstd.NewReader(r.tail, zstd.WithDecoderConcurrency(concurrency), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, err
	}
	return r, nil
}

// objectStream returns the compressed stream of an object read from src,
// trailer included: src itself, or, with a key, src decrypted. It refuses
// what openObject refuses before reading any of it.
func objectStream(src io.Reader, key *Key) (io.Reader, error) {
	br := bufio.NewReaderSize(src, 64<<10)
	head, err := br.Peek(8)
	if len(head) < 4 {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: object is empty or truncated (%d bytes)", ErrCorrupt, len(head))
		}
		return nil, err
	}
	var inner io.Reader
	magic := binary.LittleEndian.Uint32(head)
	switch {
	case bytes.Equal(head, []byte(encMagic)):
		if key == nil {
			return nil, fmt.Errorf("%w: the object is encrypted and no key was given (--key-file)", ErrWrongKey)
		}
		op, err := newOpener(br, key)
		if err != nil {
			return nil, err
		}
		inner = op
	case magic == zstdMagic || magic&0xFFFFFFF0 == 0x184D2A50:
		if key != nil {
			// Its trailer would check its integrity, not who wrote it.
			return nil, fmt.Errorf("%w: pgfleet did not write it with this archive's key (%s), so it is refused; find out what else writes to the store", ErrNotEncrypted, key.ID())
		}
		inner = br
	default:
		return nil, fmt.Errorf("%w: not an object written by pgfleet (starts with %x)", ErrCorrupt, head)
	}
	return inner, nil
}

// blockDecoder decodes whole objects held in memory, as a restore reads a
// backup's parts: zstd then writes straight into the output buffer, where
// a streaming reader copies every block through its window and out again.
// It is not safe for concurrent use.
type blockDecoder struct {
	key     *Key
	zd      *zstd.Decoder
	in      bytes.Buffer
	maxSize int
}

// newBlockDecoder returns a decoder of objects whose plaintext is at most
// maxSize bytes (a frame's window may not be larger either, nor smaller
// than the 8 MiB the encoder asks for).
func newBlockDecoder(key *Key, maxSize int) (*blockDecoder, error) {
	zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true),
		zstd.WithDecoderMaxMemory(uint64(max(maxSize, 8<<20))))
	if err != nil {
		return nil, err
	}
	return &blockDecoder{key: key, zd: zd, maxSize: maxSize}, nil
}

// decode reads the object src whole and decodes its plaintext into dst
// (appending to dst[:0]), checking its trailer, and returns it and its
// SHA-256 in hex. A plaintext longer than the decoder's maximum size is
// an error wrapping ErrCorrupt. Errors do not name the object.
func (d *blockDecoder) decode(src io.Reader, dst []byte) ([]byte, string, error) {
	inner, err := objectStream(src, d.key)
	if err != nil {
		return dst, "", err
	}
	// What a plaintext of maxSize bytes compresses to at worst (zstd
	// stores what does not compress in raw blocks, at a few bytes each),
	// trailer included: no more is held in memory.
	limit := int64(d.maxSize) + int64(d.maxSize)/8 + 1<<20
	d.in.Reset()
	n, err := d.in.ReadFrom(io.LimitReader(inner, limit+1))
	if err != nil {
		return dst, "", err
	}
	if n > limit {
		return dst, "", fmt.Errorf("%w: the object holds more than %d bytes of plaintext can be stored in", ErrCorrupt, d.maxSize)
	}
	return decodeWhole(d.zd, d.in.Bytes(), dst)
}

// decodeWhole decodes b, an object's whole compressed stream (trailer
// included), into dst (appending to dst[:0]) and checks it against its
// trailer; it returns the plaintext and its SHA-256 in hex. A plaintext
// larger than zd allows is an error wrapping both ErrCorrupt and zstd's
// ErrDecoderSizeExceeded.
func decodeWhole(zd *zstd.Decoder, b, dst []byte) ([]byte, string, error) {
	t, err := trailerOf(b)
	if err != nil {
		return dst, "", err
	}
	out, err := zd.DecodeAll(b[:len(b)-trailerLen], dst[:0])
	if err != nil {
		return dst, "", fmt.Errorf("%w: decompress: %w", ErrCorrupt, err)
	}
	if size := binary.LittleEndian.Uint64(t[16:]); size != uint64(len(out)) {
		return out, "", fmt.Errorf("%w: %d bytes stored, %d read back", ErrCorrupt, size, len(out))
	}
	sum := sha256.Sum256(out)
	if !bytes.Equal(t[24:], sum[:]) {
		return out, "", fmt.Errorf("%w: checksum mismatch (stored sha256 %x, read back %x)", ErrCorrupt, t[24:], sum)
	}
	return out, hex.EncodeToString(sum[:]), nil
}

// trailerOf returns the trailer at the end of an object's compressed
// stream b.
func trailerOf(b []byte) ([]byte, error) {
	if len(b) < trailerLen {
		return nil, fmt.Errorf("%w: checksum trailer missing: the object is truncated", ErrCorrupt)
	}
	t := b[len(b)-trailerLen:]
	if binary.LittleEndian.Uint32(t) != skippableMagic || binary.LittleEndian.Uint32(t[4:]) != trailerLen-8 || string(t[8:16]) != trailerMagic {
		return nil, fmt.Errorf("%w: checksum trailer missing: the object is truncated", ErrCorrupt)
	}
	return t, nil
}

// wholeMax is the largest plaintext copyObject decodes in memory: a WAL
// segment of the default size, or a backup's part, fits.
const wholeMax = 64 << 20

// wholeDecoders are zstd decoders for decodeWhole, kept between objects:
// making one costs about as much as decoding a WAL segment.
var wholeDecoders = sync.Pool{New: func() any {
	zd, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true), zstd.WithDecoderMaxMemory(wholeMax))
	if err != nil {
		panic(err) // only for options that do not exist
	}
	return zd
}}

// copyObject writes the plaintext of the object read from src to dst,
// checked against its trailer, and returns its SHA-256 in hex and its size.
// An object of at most wholeMax bytes of plaintext is decoded whole, in
// memory, in about a third of the time a streaming decoder takes (which
// moves every block through its window, and costs as much to make); a
// larger one is streamed. On an error, what was written to dst is not the
// object and must be discarded.
func copyObject(src io.Reader, key *Key, dst io.Writer) (string, int64, error) {
	inner, err := objectStream(src, key)
	if err != nil {
		return "", 0, err
	}
	// What wholeMax bytes compress to at worst, trailer included.
	limit := int64(wholeMax) + wholeMax/8 + 1<<20
	var in bytes.Buffer
	n, err := in.ReadFrom(io.LimitReader(inner, limit+1))
	if err != nil {
		return "", 0, err
	}
	rest := inner
	if n <= limit {
		rest = nil
		t, err := trailerOf(in.Bytes())
		if err != nil {
			return "", 0, err
		}
		if size := binary.LittleEndian.Uint64(t[16:]); size <= wholeMax {
			zd := wholeDecoders.Get().(*zstd.Decoder)
			defer wholeDecoders.Put(zd)
			out, sum, err := decodeWhole(zd, in.Bytes(), make([]byte, 0, size+1))
			if err != nil {
				return "", 0, err
			}
			if _, err := dst.Write(out); err != nil {
				return "", 0, err
			}
			return sum, int64(len(out)), nil
		}
	}
	src = bytes.NewReader(in.Bytes())
	if rest != nil {
		src = io.MultiReader(src, rest)
	}
	r, err := newObjectReader(src, 1)
	if err != nil {
		return "", 0, err
	}
	defer r.Close()
	if _, err := io.Copy(dst, r); err != nil {
		return "", 0, err
	}
	return r.Sum(), r.Size(), nil
}

// Close releases the decoder.
func (d *blockDecoder) Close() { d.zd.Close() }

func (r *objectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.zr.Read(p)
	r.sha.Write(p[:n])
	r.raw += int64(n)
	switch {
	case err == io.EOF:
		if err = r.finish(); err == nil {
			err = io.EOF
		}
	case err != nil:
		if r.tail.err != nil {
			// The store or the decryption failed; zstd only passed it on.
			err = r.tail.err
		} else {
			err = fmt.Errorf("%w: decompress: %v", ErrCorrupt, err)
		}
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

// finish checks the trailer once the decoder has seen the end.
func (r *objectReader) finish() error {
	// The decoder stops at the end of its last frame; anything after it but
	// before the trailer would be an error of its own. Drain to be sure the
	// held-back bytes are the last ones.
	if _, err := io.Copy(io.Discard, r.tail); err != nil {
		return err
	}
	t := r.tail.held()
	if len(t) != trailerLen || binary.LittleEndian.Uint32(t) != skippableMagic ||
		binary.LittleEndian.Uint32(t[4:]) != trailerLen-8 || string(t[8:16]) != trailerMagic {
		return fmt.Errorf("%w: checksum trailer missing: the object is truncated", ErrCorrupt)
	}
	copy(r.sum[:], r.sha.Sum(nil))
	if size := binary.LittleEndian.Uint64(t[16:]); size != uint64(r.raw) {
		return fmt.Errorf("%w: %d bytes stored, %d read back", ErrCorrupt, size, r.raw)
	}
	if !bytes.Equal(t[24:], r.sum[:]) {
		return fmt.Errorf("%w: checksum mismatch (stored sha256 %x, read back %x)", ErrCorrupt, t[24:], r.sum)
	}
	return nil
}

// Close releases the decoder. It does not close the source.
func (r *objectReader) Close() error {
	r.zr.Close()
	return nil
}

// Sum is the SHA-256 of the plaintext in hex, valid once Read returned io.EOF.
func (r *objectReader) Sum() string { return hex.EncodeToString(r.sum[:]) }

// Size is the number of plaintext bytes read.
func (r *objectReader) Size() int64 { return r.raw }

// holdBack passes a stream on except for its last n bytes, which it keeps
// for held once the stream ended.
type holdBack struct {
	r   io.Reader
	n   int
	buf []byte
	off int
	eof bool
	err error // a read error other than io.EOF
}

func newHoldBack(r io.Reader, n int) *holdBack {
	return &holdBack{r: r, n: n, buf: make([]byte, 0, n+64<<10)}
}

func (h *holdBack) Read(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	for !h.eof && len(h.buf)-h.off <= h.n {
		if h.off > 0 {
			h.buf = h.buf[:copy(h.buf, h.buf[h.off:])]
			h.off = 0
		}
		m, err := h.r.Read(h.buf[len(h.buf):cap(h.buf)])
		h.buf = h.buf[:len(h.buf)+m]
		if err == io.EOF {
			h.eof = true
		} else if err != nil {
			h.err = err
			return 0, err
		}
	}
	avail := len(h.buf) - h.off - h.n
	if avail <= 0 {
		return 0, io.EOF
	}
	k := copy(p, h.buf[h.off:h.off+avail])
	h.off += k
	return k, nil
}

// held returns the held-back bytes: the last n of the stream (fewer if the
// stream was shorter), once Read returned io.EOF.
func (h *holdBack) held() []byte { return h.buf[h.off:] }

// opener decrypts a stream written by sealer.
type opener struct {
	src    *bufio.Reader
	aead   cipher.AEAD
	header []byte
	size   int
	ct     []byte
	buf    []byte
	n      uint64
	done   bool
}

func newOpener(src *bufio.Reader, key *Key) (*opener, error) {
	header := make([]byte, encHeaderLen)
	if _, err := io.ReadFull(src, header); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: encryption header truncated", ErrCorrupt)
		}
		return nil, err
	}
	if !bytes.Equal(header[8:16], key.id[:]) {
		return nil, fmt.Errorf("%w: the object was encrypted with key %x, the key given is %s", ErrWrongKey, header[8:16], key.ID())
	}
	size := int(binary.BigEndian.Uint32(header[48:]))
	if size <= 0 || size > maxChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d in encryption header", ErrCorrupt, size)
	}
	aead, err := objectAEAD(key, header[16:48])
	if err != nil {
		return nil, err
	}
	return &opener{src: src, aead: aead, header: header, size: size, ct: make([]byte, size+gcmOverhead)}, nil
}

func (o *opener) Read(p []byte) (int, error) {
	for len(o.buf) == 0 {
		if o.done {
			return 0, io.EOF
		}
		if err := o.next(); err != nil {
			return 0, err
		}
	}
	k := copy(p, o.buf)
	o.buf = o.buf[k:]
	return k, nil
}

// next reads and decrypts one chunk. A short chunk, or a full one that ends
// the stream, must have been sealed as the final one.
func (o *opener) next() error {
	n, err := io.ReadFull(o.src, o.ct)
	final := false
	switch err {
	case nil:
		if _, perr := o.src.Peek(1); perr == io.EOF {
			final = true
		} else if perr != nil {
			return perr
		}
	case io.ErrUnexpectedEOF:
		final = true
	case io.EOF:
		return fmt.Errorf("%w: truncated after chunk %d", ErrCorrupt, o.n)
	default:
		return err
	}
	if n < gcmOverhead {
		return fmt.Errorf("%w: truncated in chunk %d", ErrCorrupt, o.n)
	}
	pt, err := o.aead.Open(o.ct[:0], chunkNonce(o.n), o.ct[:n], chunkAAD(o.header, o.n, final))
	if err != nil {
		return fmt.Errorf("%w: chunk %d fails authentication: the object was truncated or altered", ErrCorrupt, o.n)
	}
	o.buf = pt
	o.n++
	o.done = final
	return nil
}
