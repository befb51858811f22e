package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestFileStoreContract(t *testing.T) {
	testStoreContract(t, openStore(t, fileURL(t.TempDir()+"/store")))
}

func TestS3StoreContract(t *testing.T) {
	s3 := startS3(t)
	testStoreContract(t, openStore(t, s3.url("some/prefix")))
}

// testStoreContract checks what every Store promises.
func testStoreContract(t *testing.T, s Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	get := func(key string) ([]byte, error) {
		rc, err := s.Get(ctx, key)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
	put := func(key string, data []byte, size int64, createOnly bool) error {
		return s.Put(ctx, key, bytes.NewReader(data), size, PutOptions{CreateOnly: createOnly})
	}

	// Missing objects.
	if _, err := get("a/missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "a/missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat(missing) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "a/missing"); err != nil {
		t.Errorf("Delete(missing) = %v, want nil", err)
	}
	if l, err := s.List(ctx, "a/"); err != nil || len(l) != 0 {
		t.Errorf("List(empty) = %v, %v; want nothing", l, err)
	}

	// Put, Get, Stat, overwrite.
	one := []byte("first version")
	if err := put("a/b/one", one, int64(len(one)), false); err != nil {
		t.Fatalf("Put(a/b/one): %v", err)
	}
	if got, err := get("a/b/one"); err != nil || !bytes.Equal(got, one) {
		t.Errorf("Get(a/b/one) = %q, %v; want %q", got, err, one)
	}
	if fi, err := s.Stat(ctx, "a/b/one"); err != nil || fi.Size != int64(len(one)) || fi.Key != "a/b/one" || fi.ModTime.IsZero() {
		t.Errorf("Stat(a/b/one) = %+v, %v", fi, err)
	}
	two := []byte("second version, longer")
	if err := put("a/b/one", two, -1, false); err != nil {
		t.Fatalf("Put(a/b/one) again: %v", err)
	}
	if got, _ := get("a/b/one"); !bytes.Equal(got, two) {
		t.Errorf("Get after overwrite = %q, want %q", got, two)
	}

	// Create-only never replaces, whether the size is known or not.
	for _, size := range []int64{int64(len(one)), -1} {
		err := put("a/b/one", one, size, true)
		if !errors.Is(err, ErrExists) {
			t.Errorf("Put(existing, CreateOnly, size %d) = %v, want ErrExists", size, err)
		}
		mustContain(t, "create-only error", fmt.Sprint(err), s.String(), "a/b/one")
	}
	if got, _ := get("a/b/one"); !bytes.Equal(got, two) {
		t.Errorf("Get after refused create = %q, want %q", got, two)
	}
	if err := put("a/b/two", one, int64(len(one)), true); err != nil {
		t.Errorf("Put(new, CreateOnly) = %v", err)
	}
	if err := put("a/c/three", one, -1, true); err != nil {
		t.Errorf("Put(new, CreateOnly, unknown size) = %v", err)
	}

	// A streamed object larger than an S3 part.
	big := make([]byte, s3PartSize+3<<20)
	rand.Read(big)
	if err := put("big/object", big, -1, false); err != nil {
		t.Fatalf("Put(big, size -1): %v", err)
	}
	if got, err := get("big/object"); err != nil || !bytes.Equal(got, big) {
		t.Errorf("Get(big) = %d bytes, %v; want %d bytes back", len(got), err, len(big))
	}
	if err := put("big/object2", big, -1, true); err != nil {
		t.Fatalf("Put(big, size -1, CreateOnly): %v", err)
	}

	// List: sorted, by prefix, whole keys.
	keys := func(prefix string) []string {
		l, err := s.List(ctx, prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		var ks []string
		for _, o := range l {
			ks = append(ks, o.Key)
		}
		return ks
	}
	for prefix, want := range map[string]string{
		"":      "a/b/one a/b/two a/c/three big/object big/object2",
		"a/":    "a/b/one a/b/two a/c/three",
		"a/b/t": "a/b/two",
		"a/b":   "a/b/one a/b/two",
		"big/o": "big/object big/object2",
		"zzz/":  "",
	} {
		if got := strings.Join(keys(prefix), " "); got != want {
			t.Errorf("List(%q) = %q, want %q", prefix, got, want)
		}
	}

	// Delete.
	if err := s.Delete(ctx, "a/b/one"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := get("a/b/one"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(deleted) = %v, want ErrNotFound", err)
	}

	// Keys that are not plain relative paths.
	for _, key := range []string{"", "/abs", "a//b", "../up", "a/../b", "a/", tmpPrefix + "x"} {
		if err := put(key, one, -1, false); err == nil {
			t.Errorf("Put(%q) succeeded, want an error", key)
		}
	}

	// Of concurrent create-only writers of one key, exactly one wins and
	// its content stays.
	const writers = 6
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := []byte(fmt.Sprintf("writer %d", i))
			errs[i] = put("race/key", data, int64(len(data)), true)
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("create-only writers %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, ErrExists):
			t.Errorf("create-only writer %d: %v, want ErrExists", i, err)
		}
	}
	if winner >= 0 {
		if got, _ := get("race/key"); string(got) != fmt.Sprintf("writer %d", winner) {
			t.Errorf("race/key = %q, want the winner's (writer %d)", got, winner)
		}
	} else {
		t.Errorf("no create-only writer succeeded: %v", errs)
	}
}

func TestOpenStoreURLs(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
	dir := t.TempDir()
	good := []string{
		fileURL(dir + "/a"),
		"file://localhost" + dir + "/b",
		"s3://bucket",
		"s3://bucket/prefix/deeper?endpoint=127.0.0.1:9000&insecure=true",
		"s3://bucket/p?endpoint=s3.example.com&region=eu-west-1",
		"s3://bucket/p?endpoint=s3.example.com:8443&tls-skip-verify=true",
	}
	for _, u := range good {
		if _, err := OpenStore(context.Background(), u); err != nil {
			t.Errorf("OpenStore(%q) = %v, want success", u, err)
		}
	}
	bad := []struct{ url, want string }{
		{"", "no scheme"},
		{"/var/backups", "no scheme"},
		{"gs://bucket/x", `unsupported scheme "gs"`},
		{"file://var/backups", "three slashes"},
		{"file:///var/backups?x=1", "takes no parameters"},
		{"file:relative/path", "ABSOLUTE"},
		{"s3:///prefix?endpoint=127.0.0.1:9000", "s3 URL needs a bucket: s3://BUCKET/prefix?endpoint="},
		{"s3://Bad_Bucket/x", "bucket"},
		{"s3://bucket/x?endpoint=http://127.0.0.1:9000", "without a scheme"},
		{"s3://bucket/x?endpoint=127.0.0.1:99999", "bad port"},
		{"s3://bucket/x?endpoint=127.0.0.1:9000&insecure=yes-please", "want true or false"},
		{"s3://bucket/x?endpoint=127.0.0.1:9000&insecure=true&tls-skip-verify=true", "exclude each other"},
		{"s3://bucket/x?endpiont=127.0.0.1:9000", `unknown parameter "endpiont"`},
		{"s3://bucket/x?region=a&region=b", "given 2 times"},
		{"s3://bucket/a/../b", ". or .."},
		{"s3://AKID:hunter2@bucket/x", "carries credentials"},
	}
	for _, c := range bad {
		_, err := OpenStore(context.Background(), c.url)
		if err == nil {
			t.Errorf("OpenStore(%q) succeeded, want an error containing %q", c.url, c.want)
			continue
		}
		mustContain(t, fmt.Sprintf("OpenStore(%q)", c.url), err.Error(), c.want)
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("OpenStore(%q) = %q: the error shows the secret", c.url, err)
		}
	}
}

func TestOpenS3StoreNoCredentials(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	_, err := OpenStore(context.Background(), "s3://bucket/x?endpoint=127.0.0.1:9000&insecure=true")
	if err == nil {
		t.Fatal("OpenStore without credentials succeeded")
	}
	mustContain(t, "error", err.Error(), "no S3 credentials", "AWS_ACCESS_KEY_ID", "s3://bucket/x")

	// The shared credentials file is the fallback.
	creds := filepath.Join(dir, "credentials")
	os.WriteFile(creds, []byte("[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = from-the-file\n"), 0o600)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	if _, err := OpenStore(context.Background(), "s3://bucket/x?endpoint=127.0.0.1:9000&insecure=true"); err != nil {
		t.Errorf("OpenStore with a credentials file: %v", err)
	}
}

// Failures to reach the store, or to be let in, name the store and say what
// went wrong, without secrets.
func TestS3StoreErrors(t *testing.T) {
	s3 := startS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-1234")
	s := openStore(t, s3.url("p"))
	err := s.Put(ctx, "k", strings.NewReader("x"), 1, PutOptions{})
	if err == nil {
		t.Fatal("Put with a wrong secret succeeded")
	}
	mustContain(t, "wrong-secret error", err.Error(), s.String(), "access denied", "AWS_SECRET_ACCESS_KEY")
	if strings.Contains(err.Error(), "wrong-secret-1234") {
		t.Errorf("error shows the secret: %v", err)
	}
	if _, err := s.Get(ctx, "k"); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("Get with a wrong secret = %v, want access denied", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecretKey)

	// The server itself refuses to replace an object on `If-None-Match: *`,
	// which is what makes a create-only Put race-free (the HEAD before it
	// is only a shortcut).
	st := openStore(t, s3.url("p")).(*S3Store)
	if err := st.Put(ctx, "cond", strings.NewReader("first"), 5, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	po := minio.PutObjectOptions{DisableMultipart: true}
	po.SetMatchETagExcept("*")
	_, err = st.client.PutObject(ctx, testBucket, st.prefix+"cond", strings.NewReader("second"), 6, po)
	if !errors.Is(st.fail("put", "cond", err), ErrExists) {
		t.Errorf("conditional PUT over an existing object = %v, want a precondition failure", err)
	}

	nobucket := openStore(t, fmt.Sprintf("s3://no-such-bucket/p?endpoint=%s&insecure=true", s3.addr))
	_, err = nobucket.Get(ctx, "k")
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
		t.Errorf("Get from a missing bucket = %v, want an error saying the bucket does not exist (and not ErrNotFound)", err)
	}

	down := openStore(t, fmt.Sprintf("s3://%s/p?endpoint=127.0.0.1:%d&insecure=true", testBucket, freePort(t)))
	start := time.Now()
	_, err = down.Get(ctx, "k")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Get from a closed port = %v, want an error", err)
	}
	mustContain(t, "unreachable error", err.Error(), down.String(), "cannot reach the store")
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("Get from a closed port took %v", d)
	}
}

func TestFileStoreLeavesNoTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, fileURL(dir))
	ctx := context.Background()
	// A crash while writing leaves a temporary file; it is not an object.
	os.MkdirAll(filepath.Join(dir, "a"), 0o700)
	os.WriteFile(filepath.Join(dir, "a", tmpPrefix+"x-123"), []byte("half"), 0o600)
	if err := s.Put(ctx, "a/x", strings.NewReader("whole"), 5, PutOptions{CreateOnly: true}); err != nil {
		t.Fatal(err)
	}
	// A reader that fails midway leaves nothing.
	err := s.Put(ctx, "a/y", io.MultiReader(strings.NewReader("part"), errReader{}), -1, PutOptions{})
	if err == nil {
		t.Fatal("Put from a failing reader succeeded")
	}
	// A short read of a known size is an error.
	if err := s.Put(ctx, "a/z", strings.NewReader("abc"), 4, PutOptions{}); err == nil {
		t.Fatal("Put of 3 bytes with size 4 succeeded")
	}
	l, _ := s.List(ctx, "")
	if len(l) != 1 || l[0].Key != "a/x" {
		t.Errorf("List = %v, want only a/x", l)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "a"))
	if len(ents) != 2 {
		t.Errorf("directory holds %d entries, want a/x and the old temporary file", len(ents))
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// Running as root, a file store gives new entries to the owner of its
// directory, so that root (the agent) and postgres (archive_command) can
// share it.
func TestFileStoreOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	dir := t.TempDir()
	os.Chown(dir, uid, gid)
	s := openStore(t, fileURL(dir))
	if err := s.Put(context.Background(), "c/wal/x", strings.NewReader("x"), 1, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"c", "c/wal", "c/wal/x"} {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid {
			t.Errorf("%s is owned by uid %d, want %d (postgres)", p, st.Uid, uid)
		}
	}
}
