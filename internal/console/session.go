package console

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Session lifetimes: a session ends after IdleTimeout without a request, and
// in any case MaxSessionAge after sign-in.
const (
	IdleTimeout   = 30 * time.Minute
	MaxSessionAge = 12 * time.Hour
	// seenEvery is how stale a session's last-seen time may get before a
	// request re-issues the cookie with a new one.
	seenEvery = time.Minute
)

const (
	sessionCookie = "pgfleet_session"
	// signinCookie holds the sign-in form's CSRF value (double submit):
	// before a session exists there is nothing else to bind it to.
	signinCookie = "pgfleet_signin"
	flashCookie  = "pgfleet_flash"
	sessionAAD   = "pgfleet-console-session-v1"
)

// session is what the console's cookie carries, sealed with a key every
// agent of the fleet derives from the same secret in the store: any agent
// can open it, so signing in on one host is signing in on all of them
// (behind one name), and no agent has to remember anything.
type session struct {
	Token  string `json:"t"` // the API token the user signed in with
	ID     string `json:"i"` // random; names the session for sign-out and CSRF
	Issued int64  `json:"c"` // unix seconds
	Seen   int64  `json:"s"` // unix seconds of the last request
}

// readOnly reports whether the session's token is a read-only token, which
// the API refuses every change and every URL.
func (s *session) readOnly() bool { return strings.HasPrefix(s.Token, "pgfro_") }

// expired reports why the session is no longer valid at now, or "".
func (s *session) expired(now time.Time) string {
	switch {
	case now.Sub(time.Unix(s.Issued, 0)) > MaxSessionAge:
		return fmt.Sprintf("your session is over %s old", MaxSessionAge)
	case now.Sub(time.Unix(s.Seen, 0)) > IdleTimeout:
		return fmt.Sprintf("your session ended after %s without activity", IdleTimeout)
	}
	return ""
}

// keyring holds the keys derived from the fleet's console secret.
type keyring struct {
	aead cipher.AEAD
	csrf []byte
}

// sessionKeyPath is where the fleet's console secret lives, below the
// store's prefix. Whoever reads it can forge sessions, but only with a
// token they already know: a session carries the token, and the API checks
// that token on every call.
const sessionKeyPath = "console/session-key"

// loadKeys reads the fleet's console secret, creating it if no agent has
// yet, and derives the session and CSRF keys from it.
func loadKeys(ctx context.Context, cli *clientv3.Client, prefix string) (*keyring, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	key := prefix + sessionKeyPath
	fresh := make([]byte, 32)
	rand.Read(fresh)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, hex.EncodeToString(fresh))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("read the console's key: %w", err)
	}
	secret := fresh
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 {
			return nil, errors.New("read the console's key: not found")
		}
		if secret, err = hex.DecodeString(string(kvs[0].Value)); err != nil || len(secret) != 32 {
			return nil, errors.New("read the console's key: it is not 32 bytes of hex")
		}
	}
	block, err := aes.NewCipher(derive(secret, "session"))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &keyring{aead: aead, csrf: derive(secret, "csrf")}, nil
}

// derive returns a key for one purpose: keys for different purposes never
// coincide.
func derive(secret []byte, purpose string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("pgfleet-console\x00" + purpose))
	return m.Sum(nil)
}

// seal encrypts and authenticates s into a cookie value.
func (k *keyring) seal(s session) string {
	b, _ := json.Marshal(s)
	nonce := make([]byte, k.aead.NonceSize())
	rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(k.aead.Seal(nonce, nonce, b, []byte(sessionAAD)))
}

// open returns the session sealed in v, if it is one of the fleet's.
func (k *keyring) open(v string) (session, bool) {
	var s session
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil || len(b) < k.aead.NonceSize() {
		return s, false
	}
	n := k.aead.NonceSize()
	plain, err := k.aead.Open(nil, b[:n], b[n:], []byte(sessionAAD))
	if err != nil || json.Unmarshal(plain, &s) != nil || s.Token == "" || s.ID == "" {
		return session{}, false
	}
	return s, true
}

// csrfToken is the value every state-changing form of session id carries.
func (k *keyring) csrfToken(id string) string {
	m := hmac.New(sha256.New, k.csrf)
	m.Write([]byte("csrf\x00" + id))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// checkCSRF reports whether got is session id's CSRF token.
func (k *keyring) checkCSRF(id, got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(k.csrfToken(id))) == 1
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// setCookie sets a cookie only the console's own pages send back: never to
// scripts, never from another site, never over plain text when the
// listener is TLS (the agent's always is).
func setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	c := &http.Cookie{
		Name: name, Value: value, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(maxAge / time.Second),
	}
	if maxAge < 0 {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}
