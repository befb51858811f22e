package backup

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// s3PartSize is the part size of streamed uploads (base backups, whose size
// is not known in advance). Two parts are buffered at a time, so it bounds
// the memory an upload takes; S3 allows 10,000 parts, so it also bounds a
// streamed object to 160 GiB.
const s3PartSize = 16 << 20

// S3Store keeps objects in a bucket of an S3-compatible service, under a
// prefix.
//
// A create-only Put first checks that the key is free (HEAD), then uploads
// with `If-None-Match: *`. Services that honour the header (AWS S3 since
// 2024, MinIO, VersityGW, Ceph RGW) refuse the upload if the key was created
// meanwhile, so of two writers exactly one wins. Services that ignore the
// header leave a race between the check and the upload: two concurrent
// writers of one key may both succeed and the last one's object stays.
// pgfleet never has two writers of one WAL name on a healthy cluster (only
// the primary archives), so the check still catches every ordinary conflict,
// such as two clusters pointed at one archive. pgfleet's create-only writes
// (WAL files, manifests) have a known size and go up in one PUT; a
// create-only Put of unknown size is a multipart upload, which sends the
// header when it starts and completes, where services differ more.
type S3Store struct {
	client *minio.Client
	bucket string
	prefix string // "" or ending in "/"
	url    string
}

var _ Store = (*S3Store)(nil)

// s3Params are the query parameters an s3:// URL may carry.
var s3Params = []string{"endpoint", "region", "insecure", "tls-skip-verify"}

func openS3Store(ctx context.Context, u *url.URL) (*S3Store, error) {
	const usage = "s3://BUCKET/prefix?endpoint=HOST:PORT&region=REGION"
	raw := redactURL(u.String())
	if u.User != nil {
		return nil, fmt.Errorf("store URL %q carries credentials: remove them and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or use ~/.aws/credentials) instead", raw)
	}
	bucket := u.Host
	if bucket == "" {
		return nil, fmt.Errorf("store URL %q: s3 URL needs a bucket: %s", raw, usage)
	}
	if err := s3utils.CheckValidBucketNameStrict(bucket); err != nil {
		return nil, fmt.Errorf("store URL %q: bucket %q: %w", raw, bucket, err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("store URL %q: %w", raw, err)
	}
	for k, v := range q {
		known := false
		for _, p := range s3Params {
			known = known || k == p
		}
		if !known {
			return nil, fmt.Errorf("store URL %q: unknown parameter %q (known: %s)", raw, k, strings.Join(s3Params, ", "))
		}
		if len(v) > 1 {
			return nil, fmt.Errorf("store URL %q: parameter %q given %d times", raw, k, len(v))
		}
	}
	flag := func(name string) (bool, error) {
		v := q.Get(name)
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("store URL %q: %s=%q: want true or false", raw, name, v)
		}
		return b, nil
	}
	insecure, err := flag("insecure")
	if err != nil {
		return nil, err
	}
	skipVerify, err := flag("tls-skip-verify")
	if err != nil {
		return nil, err
	}
	if insecure && skipVerify {
		return nil, fmt.Errorf("store URL %q: insecure=true (plain HTTP) and tls-skip-verify=true (HTTPS) exclude each other", raw)
	}

	endpoint := q.Get("endpoint")
	region := q.Get("region")
	lookup := minio.BucketLookupPath
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
		lookup = minio.BucketLookupAuto
	} else {
		if strings.Contains(endpoint, "://") {
			return nil, fmt.Errorf("store URL %q: endpoint %q: want HOST or HOST:PORT without a scheme (insecure=true for plain HTTP)", raw, endpoint)
		}
		host, port, err := net.SplitHostPort(endpoint)
		if err != nil {
			host, port = endpoint, ""
		}
		if host == "" || strings.ContainsAny(host, "/?#@ ") {
			return nil, fmt.Errorf("store URL %q: endpoint %q: want HOST or HOST:PORT", raw, endpoint)
		}
		if port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("store URL %q: endpoint %q: bad port", raw, endpoint)
			}
		}
		if region == "" {
			region = "us-east-1"
		}
	}

	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		for _, part := range strings.Split(prefix, "/") {
			if part == "" || part == "." || part == ".." {
				return nil, fmt.Errorf("store URL %q: prefix %q has an empty, . or .. part", raw, prefix)
			}
		}
		prefix += "/"
	}

	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
	})
	v, err := creds.GetWithContext(&credentials.CredContext{})
	if err != nil || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("store %s: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE choose another file or profile)", raw)
	}

	tr, err := minio.DefaultTransport(!insecure)
	if err != nil {
		return nil, err
	}
	if skipVerify {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:        creds,
		Secure:       !insecure,
		Transport:    tr,
		Region:       region,
		BucketLookup: lookup,
		// archive_command is retried by postgres and every other caller
		// retries too; a few quick retries ride out a blip without making
		// an outage take minutes to report.
		MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("store URL %q: %w", raw, err)
	}
	return &S3Store{client: client, bucket: bucket, prefix: prefix, url: raw}, nil
}

func (s *S3Store) String() string { return s.url }

// Bucket returns the bucket the store uses.
func (s *S3Store) Bucket() string { return s.bucket }

// fail translates a client error into the store's terms, naming the store
// and the key.
func (s *S3Store) fail(op, key string, err error) error {
	resp := minio.ToErrorResponse(err)
	var reason error
	var ue *url.Error
	var ne net.Error
	switch {
	case resp.Code == "NoSuchBucket":
		reason = fmt.Errorf("bucket %q does not exist", s.bucket)
	case resp.Code == "NoSuchKey" || resp.StatusCode == 404:
		reason = ErrNotFound
	case resp.Code == "PreconditionFailed" || resp.StatusCode == 412:
		reason = ErrExists
	case resp.Code == "InvalidAccessKeyId" || resp.Code == "SignatureDoesNotMatch" || resp.Code == "AccessDenied" || resp.StatusCode == 403:
		reason = fmt.Errorf("access denied (%s): check the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials) and the bucket's permissions", resp.Code)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		reason = err
	case errors.As(err, &ue) || errors.As(err, &ne):
		reason = fmt.Errorf("cannot reach the store: %w", err)
	default:
		reason = err
	}
	if key == "" {
		return fmt.Errorf("store %s: %s: %w", s.url, op, reason)
	}
	return fmt.Errorf("store %s: %s %s: %w", s.url, op, key, reason)
}

func (s *S3Store) Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("store %s: put %s: %w", s.url, key, err)
	}
	po := minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: s3PartSize}
	if size < 0 {
		// Fill one part while the previous one uploads.
		po.ConcurrentStreamParts = true
		po.NumThreads = 2
	}
	if opts.CreateOnly {
		if _, err := s.Stat(ctx, key); err == nil {
			return fmt.Errorf("store %s: put %s: %w", s.url, key, ErrExists)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		po.SetMatchETagExcept("*")
		if size >= 0 {
			// One PUT, so that the condition is checked where the object
			// is created.
			po.DisableMultipart = true
		}
	}
	if _, err := s.client.PutObject(ctx, s.bucket, s.prefix+key, r, size, po); err != nil {
		return s.fail("put", key, err)
	}
	return nil
}

func (s *S3Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("store %s: get %s: %w", s.url, key, err)
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.fail("get", key, err)
	}
	// GetObject is lazy: the first read sends the request, so that a
	// missing object or a refused request is reported here. (Object.Stat
	// would send a HEAD, whose answer has no body to tell a missing bucket
	// from a missing key.)
	r := &s3Reader{obj: obj, br: bufio.NewReaderSize(obj, 256<<10), s: s, key: key}
	if _, err := r.br.Peek(1); err != nil && err != io.EOF {
		obj.Close()
		return nil, s.fail("get", key, err)
	}
	return r, nil
}

// s3Reader translates read errors too.
type s3Reader struct {
	obj *minio.Object
	br  *bufio.Reader
	s   *S3Store
	key string
}

func (r *s3Reader) Read(p []byte) (int, error) {
	n, err := r.br.Read(p)
	if err != nil && err != io.EOF {
		err = r.s.fail("read", r.key, err)
	}
	return n, err
}

func (r *s3Reader) Close() error { return r.obj.Close() }

func (s *S3Store) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return ObjectInfo{}, fmt.Errorf("store %s: stat %s: %w", s.url, key, err)
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.fail("stat", key, err)
	}
	return ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}, nil
}

func (s *S3Store) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	for oi := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if oi.Err != nil {
			return nil, s.fail("list", prefix, oi.Err)
		}
		key := strings.TrimPrefix(oi.Key, s.prefix)
		if strings.HasSuffix(key, "/") {
			continue // a directory marker some tools create
		}
		out = append(out, ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (s *S3Store) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("store %s: delete %s: %w", s.url, key, err)
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.fail("delete", key, err), ErrNotFound) {
			return nil
		}
		return s.fail("delete", key, err)
	}
	return nil
}

// MakeBucket creates the store's bucket if it does not exist. Tests and
// first-time setup use it; pgfleet never creates buckets on its own.
func (s *S3Store) MakeBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.fail("check bucket", "", err)
	}
	if ok {
		return nil
	}
	if err := s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{}); err != nil {
		return s.fail("create bucket", "", err)
	}
	return nil
}
