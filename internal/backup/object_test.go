package backup

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	mrand "math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func testKey(t *testing.T) *Key {
	t.Helper()
	secret := make([]byte, KeySize)
	rand.Read(secret)
	k, err := NewKey(secret)
	if err != nil {
		t.Fatalf("NewKey: %v", err)
	}
	return k
}

// payload returns n bytes that compress somewhat, like WAL: runs of text
// and random bytes.
func payload(n int, seed uint64) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed))
	b := make([]byte, 0, n)
	for len(b) < n {
		if r.IntN(2) == 0 {
			b = append(b, "INSERT INTO t VALUES ('marker row'); "...)
		} else {
			for range 64 {
				b = append(b, byte(r.Uint32()))
			}
		}
	}
	return b[:n]
}

func encode(t *testing.T, plain []byte, key *Key) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newObjectWriter(&buf, key, 1)
	if err != nil {
		t.Fatalf("newObjectWriter: %v", err)
	}
	// Odd write sizes, to cross chunk boundaries at odd places.
	for p := plain; len(p) > 0; {
		n := min(len(p), 100_003)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	sum := sha256.Sum256(plain)
	if w.Sum() != hex.EncodeToString(sum[:]) || w.Size() != int64(len(plain)) {
		t.Fatalf("writer: sum %s size %d, want %x %d", w.Sum(), w.Size(), sum, len(plain))
	}
	return buf.Bytes()
}

func decode(obj []byte, key *Key) ([]byte, error) {
	r, err := openObject(bytes.NewReader(obj), key, 0)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestObjectRoundTrip(t *testing.T) {
	key := testKey(t)
	for _, n := range []int{0, 1, 1000, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 12345} {
		plain := payload(n, uint64(n))
		for _, k := range []*Key{nil, key} {
			obj := encode(t, plain, k)
			got, err := decode(obj, k)
			if err != nil {
				t.Fatalf("decode(%d bytes, encrypted %v): %v", n, k != nil, err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("decode(%d bytes, encrypted %v): got %d bytes, not the plaintext", n, k != nil, len(got))
			}
		}
	}
}

// An unencrypted object is a standard zstd file: any decoder reads it,
// skipping the trailer frame.
func TestObjectIsZstd(t *testing.T) {
	plain := payload(200_000, 1)
	obj := encode(t, plain, nil)
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, err := d.DecodeAll(obj, nil)
	if err != nil {
		t.Fatalf("zstd DecodeAll: %v", err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatalf("zstd DecodeAll: got %d bytes, want the plaintext", len(got))
	}
}

func TestObjectEncryptedHidesPlaintext(t *testing.T) {
	marker := []byte("secret marker 8d1f0c")
	plain := bytes.Repeat(append(marker, ' '), 10_000)
	plainObj := encode(t, plain, nil)
	obj := encode(t, plain, testKey(t))
	if bytes.Contains(obj, marker) {
		t.Fatalf("encrypted object contains the marker")
	}
	// Nor its compressed form: the marker survives zstd as a literal.
	if !bytes.Contains(plainObj, marker) {
		t.Fatalf("test is void: the unencrypted object does not contain the marker either")
	}
}

func TestObjectCorruption(t *testing.T) {
	key := testKey(t)
	// Incompressible, so that the encrypted stream has several chunks.
	plain := make([]byte, 3*chunkSize+777)
	rand.Read(plain)
	for _, k := range []*Key{nil, key} {
		obj := encode(t, plain, k)
		cases := []struct {
			name string
			mod  func([]byte) []byte
		}{
			{"flip a byte in the middle", func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b }},
			{"flip a byte of the trailer checksum", func(b []byte) []byte { b[len(b)-5] ^= 1; return b }},
			{"truncate by one byte", func(b []byte) []byte { return b[:len(b)-1] }},
			{"truncate by the trailer", func(b []byte) []byte { return b[:len(b)-trailerLen] }},
			{"truncate to half", func(b []byte) []byte { return b[:len(b)/2] }},
			{"append a byte", func(b []byte) []byte { return append(b, 0) }},
		}
		if k != nil {
			full := chunkSize + gcmOverhead
			cases = append(cases,
				struct {
					name string
					mod  func([]byte) []byte
				}{"truncate at a chunk boundary", func(b []byte) []byte { return b[:encHeaderLen+full] }},
				struct {
					name string
					mod  func([]byte) []byte
				}{"swap two chunks", func(b []byte) []byte {
					c1 := append([]byte(nil), b[encHeaderLen:encHeaderLen+full]...)
					copy(b[encHeaderLen:], b[encHeaderLen+full:encHeaderLen+2*full])
					copy(b[encHeaderLen+full:], c1)
					return b
				}},
				struct {
					name string
					mod  func([]byte) []byte
				}{"drop a chunk", func(b []byte) []byte {
					return append(b[:encHeaderLen+full:encHeaderLen+full], b[encHeaderLen+2*full:]...)
				}},
			)
		}
		for _, c := range cases {
			bad := c.mod(append([]byte(nil), obj...))
			got, err := decode(bad, k)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("encrypted %v, %s: decode = %d bytes, %v; want ErrCorrupt", k != nil, c.name, len(got), err)
			}
		}
	}
}

func TestObjectWrongKey(t *testing.T) {
	obj := encode(t, payload(5000, 3), testKey(t))
	if _, err := decode(obj, testKey(t)); !errors.Is(err, ErrWrongKey) {
		t.Errorf("decode with another key: %v, want ErrWrongKey", err)
	}
	if _, err := decode(obj, nil); !errors.Is(err, ErrWrongKey) {
		t.Errorf("decode without a key: %v, want ErrWrongKey", err)
	}
}

// An unencrypted object is refused by a reader with a key, before it
// returns a byte: its trailer checks, but anyone could have written it.
func TestObjectNotEncrypted(t *testing.T) {
	k := testKey(t)
	plain := payload(5000, 4)
	got, err := decode(encode(t, plain, nil), k)
	if !errors.Is(err, ErrNotEncrypted) || len(got) != 0 {
		t.Fatalf("decode(unencrypted object, key) = %d bytes, %v; want 0 bytes and ErrNotEncrypted", len(got), err)
	}
	mustContain(t, "decode(unencrypted object, key) error", err.Error(),
		"the archive is encrypted and the object is not", "pgfleet did not write it with this archive's key ("+k.ID()+")")
	if got, err := decode(encode(t, plain, nil), nil); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("decode(unencrypted object, no key) = %d bytes, %v; want the %d bytes", len(got), err, len(plain))
	}
}

func TestObjectNotOurs(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("ab"), []byte("hello world, not an object")} {
		if _, err := decode(b, nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decode(%q) = %v, want ErrCorrupt", b, err)
		}
	}
}

func TestHoldBack(t *testing.T) {
	data := payload(300_000, 9)
	for _, n := range []int{0, 10, trailerLen} {
		h := newHoldBack(bytes.NewReader(data), n)
		got, err := io.ReadAll(io.LimitReader(h, 1<<30))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[:len(data)-n]) || !bytes.Equal(h.held(), data[len(data)-n:]) {
			t.Errorf("holdBack(%d): passed %d bytes, held %d; want %d and %d", n, len(got), len(h.held()), len(data)-n, n)
		}
	}
	h := newHoldBack(bytes.NewReader([]byte("short")), trailerLen)
	if got, _ := io.ReadAll(h); len(got) != 0 || string(h.held()) != "short" {
		t.Errorf("holdBack of a short stream: passed %q, held %q", got, h.held())
	}
}

// TestCopyObjectLarge: objects too large to decode whole in memory are
// streamed, checked all the same: one whose plaintext is larger than
// wholeMax but compresses to little, and one that does not compress.
func TestCopyObjectLarge(t *testing.T) {
	big := make([]byte, wholeMax+(1<<20))
	noisy := make([]byte, wholeMax+wholeMax/8+(2<<20))
	rand.Read(noisy)
	for name, plain := range map[string][]byte{"compressible": big, "incompressible": noisy} {
		var obj bytes.Buffer
		w, err := newObjectWriterLevel(&obj, nil, 0, zstd.SpeedFastest)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plain)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		sum, size, err := copyObject(bytes.NewReader(obj.Bytes()), nil, h)
		if err != nil || size != int64(len(plain)) || sum != w.Sum() || hex.EncodeToString(h.Sum(nil)) != sum {
			t.Errorf("%s: copyObject = %.12s, %d, %v; want %.12s, %d", name, sum, size, err, w.Sum(), len(plain))
		}
		b := obj.Bytes()
		b[len(b)/2] ^= 1
		if _, _, err := copyObject(bytes.NewReader(b), nil, io.Discard); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: copyObject(altered) = %v, want ErrCorrupt", name, err)
		}
	}
}
