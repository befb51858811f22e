package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// Store is an object store: a flat namespace of keys ("demo/wal/00000001/...")
// relative to the location the store's URL names. Implementations: a
// directory (file://) and any S3-compatible service (s3://).
type Store interface {
	// Put stores the object key with the content of r; size is its length,
	// or -1 when unknown (the content is then streamed). It returns once
	// the object is durable. With opts.CreateOnly it never replaces an
	// existing object and fails with an error wrapping ErrExists instead.
	Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) error
	// Get opens the object key for reading; ErrNotFound if it does not exist.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object key; ErrNotFound if it does not exist.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List returns every object whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Delete removes the object key. Deleting a missing object succeeds.
	Delete(ctx context.Context, key string) error
	// String is the store's URL, without secrets, for messages.
	String() string
}

// PutOptions change how Put writes.
type PutOptions struct {
	// CreateOnly makes Put fail with ErrExists rather than replace an
	// existing object. How strictly depends on the store; see each one.
	CreateOnly bool
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64 // bytes stored
	ModTime time.Time
}

// ErrNotFound is wrapped into errors about objects that do not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is wrapped into the error of a create-only Put of an object that
// exists.
var ErrExists = errors.New("already exists")

// OpenStore opens the object store a URL names:
//
//	file:///var/lib/pgfleet/backups
//	s3://bucket/prefix?endpoint=host:port&region=R&insecure=true&tls-skip-verify=true
//
// For s3, endpoint defaults to AWS (s3.amazonaws.com) and region to
// us-east-1; insecure=true talks plain HTTP (for a test server on loopback),
// otherwise HTTPS with certificates verified unless tls-skip-verify=true.
// Custom endpoints are addressed path-style (endpoint/bucket/key).
// Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
// AWS_SESSION_TOKEN), else from the shared credentials file
// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE);
// never from the URL.
//
// OpenStore does no network I/O: an unreachable store or refused
// credentials show in the first operation, whose error names the store.
func OpenStore(ctx context.Context, rawURL string) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold a secret
		}
		return nil, fmt.Errorf("store URL %q: %w", redactURL(rawURL), err)
	}
	switch u.Scheme {
	case "file":
		return openFileStore(u)
	case "s3":
		return openS3Store(ctx, u)
	case "":
		return nil, fmt.Errorf("store URL %q has no scheme: want file:///ABSOLUTE/PATH or s3://BUCKET/prefix?endpoint=HOST:PORT", redactURL(rawURL))
	default:
		return nil, fmt.Errorf("store URL %q: unsupported scheme %q: want file:///ABSOLUTE/PATH or s3://BUCKET/prefix?endpoint=HOST:PORT", redactURL(rawURL), u.Scheme)
	}
}

// redactURL drops any user information from a URL for a message.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil && strings.Contains(raw, "@"):
		return "<unparsable URL>"
	case err != nil || u.User == nil:
		return raw
	}
	u.User = nil
	return u.String()
}

// checkKey refuses keys that are not plain relative paths, which the file
// store would resolve outside its directory and S3 would store under odd
// names.
func checkKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || strings.Contains(key, "\\") || strings.ContainsRune(key, 0) {
		return fmt.Errorf("invalid object key %q", key)
	}
	for _, part := range strings.Split(key, "/") {
		if part == "" || part == "." || part == ".." || strings.HasPrefix(part, tmpPrefix) {
			return fmt.Errorf("invalid object key %q", key)
		}
	}
	return nil
}
