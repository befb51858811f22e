package pooler

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// SCRAM-SHA-256 (RFC 5802, RFC 7677) on both sides of the pooler. Towards
// clients the pooler is the server and checks proofs against the role's
// verifier as PostgreSQL stores it; towards PostgreSQL it is the client and
// proves itself with the ClientKey it recovered from the client's own
// proof. The pooler so logs in as the client's user without ever holding a
// password, and PostgreSQL keeps checking every login against pg_authid.

// Mechanism names.
const (
	scramSHA256     = "SCRAM-SHA-256"
	scramSHA256Plus = "SCRAM-SHA-256-PLUS"
)

// Verifier is a role's SCRAM-SHA-256 secret as pg_authid.rolpassword holds
// it: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
type Verifier struct {
	Iterations int
	Salt       []byte
	StoredKey  []byte
	ServerKey  []byte
}

// ParseVerifier reads a rolpassword value. MD5 and plain passwords are not
// SCRAM verifiers and cannot be used: pgfleet's pg_hba.conf admits SCRAM
// only.
func ParseVerifier(s string) (Verifier, error) {
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return Verifier{}, errors.New("not a SCRAM-SHA-256 verifier")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return Verifier{}, errors.New("malformed SCRAM verifier")
	}
	iterText, saltText, ok1 := strings.Cut(params, ":")
	storedText, serverText, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return Verifier{}, errors.New("malformed SCRAM verifier")
	}
	var v Verifier
	var err error
	if v.Iterations, err = strconv.Atoi(iterText); err != nil || v.Iterations < 1 {
		return Verifier{}, errors.New("malformed SCRAM verifier iterations")
	}
	b64 := base64.StdEncoding
	if v.Salt, err = b64.DecodeString(saltText); err != nil {
		return Verifier{}, errors.New("malformed SCRAM verifier salt")
	}
	if v.StoredKey, err = b64.DecodeString(storedText); err != nil || len(v.StoredKey) != sha256.Size {
		return Verifier{}, errors.New("malformed SCRAM verifier stored key")
	}
	if v.ServerKey, err = b64.DecodeString(serverText); err != nil || len(v.ServerKey) != sha256.Size {
		return Verifier{}, errors.New("malformed SCRAM verifier server key")
	}
	return v, nil
}

// fakeVerifier stands in for a role that does not exist or has no SCRAM
// password, so that the exchange runs to its end and fails there, as
// PostgreSQL's does: the error does not tell whether the role exists.
func fakeVerifier() Verifier {
	v := Verifier{Iterations: 4096, Salt: randomBytes(16), StoredKey: randomBytes(32), ServerKey: randomBytes(32)}
	return v
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the runtime guarantees it does not fail
	}
	return b
}

func hmacSum(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

// attrs splits a SCRAM message into its k=v attributes, keeping their
// order (the value may contain '=').
func attrs(msg string) map[byte]string {
	out := map[byte]string{}
	for _, part := range strings.Split(msg, ",") {
		if len(part) >= 2 && part[1] == '=' {
			if _, dup := out[part[0]]; !dup {
				out[part[0]] = part[2:]
			}
		}
	}
	return out
}

// endPoint is the tls-server-end-point channel binding data of cert (RFC
// 5929): its hash with the hash of its signature, SHA-256 for MD5 and SHA-1.
func endPoint(cert *x509.Certificate) []byte {
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.SHA384WithRSA, x509.ECDSAWithSHA384, x509.SHA384WithRSAPSS:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.ECDSAWithSHA512, x509.SHA512WithRSAPSS:
		h = sha512.New()
	default:
		h = sha256.New()
	}
	h.Write(cert.Raw)
	return h.Sum(nil)
}

// serverExchange is the pooler's side of a client's SCRAM exchange.
type serverExchange struct {
	v         Verifier
	plusCert  *x509.Certificate // the pooler's certificate, when the client may bind to it
	mechanism string

	gs2        string // the client's GS2 header, e.g. "n,,"
	clientBare string // client-first-message-bare
	nonce      string // the client's nonce followed by ours
	first      string // server-first-message
}

// errSCRAM is a malformed or failed exchange; the client gets PostgreSQL's
// own message for a failed login.
var errSCRAM = errors.New("SCRAM exchange failed")

// start reads the client-first-message and returns the server-first one.
// Offered says whether the -PLUS mechanism was offered: a client that
// could bind but says the server cannot ("y") is being downgraded.
func (x *serverExchange) start(mechanism string, data []byte, offeredPlus bool) (string, error) {
	msg := string(data)
	x.mechanism = mechanism
	var gs2 string
	switch {
	case strings.HasPrefix(msg, "n,"), strings.HasPrefix(msg, "y,"):
		if mechanism != scramSHA256 {
			return "", fmt.Errorf("%w: %s without channel binding", errSCRAM, mechanism)
		}
		if msg[0] == 'y' && offeredPlus {
			return "", fmt.Errorf("%w: the client could bind to the channel but was told the server cannot", errSCRAM)
		}
	case strings.HasPrefix(msg, "p=tls-server-end-point,"):
		if mechanism != scramSHA256Plus || x.plusCert == nil {
			return "", fmt.Errorf("%w: channel binding without %s", errSCRAM, scramSHA256Plus)
		}
	default:
		return "", fmt.Errorf("%w: unsupported GS2 header", errSCRAM)
	}
	i := strings.Index(msg, ",")
	j := strings.Index(msg[i+1:], ",")
	if j < 0 {
		return "", fmt.Errorf("%w: malformed client-first-message", errSCRAM)
	}
	if msg[i+1:i+1+j] != "" {
		return "", fmt.Errorf("%w: authorization identities are not supported", errSCRAM)
	}
	gs2 = msg[:i+1+j+1]
	x.gs2, x.clientBare = gs2, msg[len(gs2):]
	a := attrs(x.clientBare)
	cnonce := a['r']
	if cnonce == "" || !strings.HasPrefix(x.clientBare, "n=") {
		return "", fmt.Errorf("%w: malformed client-first-message", errSCRAM)
	}
	x.nonce = cnonce + base64.RawStdEncoding.EncodeToString(randomBytes(18))
	x.first = fmt.Sprintf("r=%s,s=%s,i=%d", x.nonce, base64.StdEncoding.EncodeToString(x.v.Salt), x.v.Iterations)
	return x.first, nil
}

// finish checks the client-final-message and returns the server-final one
// and the client's ClientKey, which proves the client knows the password
// and lets the pooler log in to PostgreSQL as the same role.
func (x *serverExchange) finish(data []byte) (final string, clientKey []byte, err error) {
	msg := string(data)
	k := strings.LastIndex(msg, ",p=")
	if k < 0 {
		return "", nil, fmt.Errorf("%w: no proof", errSCRAM)
	}
	withoutProof := msg[:k]
	a := attrs(msg)
	cb := []byte(x.gs2)
	if x.mechanism == scramSHA256Plus {
		cb = append(cb, endPoint(x.plusCert)...)
	}
	if a['c'] != base64.StdEncoding.EncodeToString(cb) {
		return "", nil, fmt.Errorf("%w: channel binding does not match", errSCRAM)
	}
	if a['r'] != x.nonce {
		return "", nil, fmt.Errorf("%w: nonce does not match", errSCRAM)
	}
	proof, err := base64.StdEncoding.DecodeString(msg[k+3:])
	if err != nil || len(proof) != sha256.Size {
		return "", nil, fmt.Errorf("%w: malformed proof", errSCRAM)
	}
	auth := x.clientBare + "," + x.first + "," + withoutProof
	clientKey = xorBytes(proof, hmacSum(x.v.StoredKey, auth))
	stored := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(stored[:], x.v.StoredKey) != 1 {
		return "", nil, fmt.Errorf("%w: wrong password", errSCRAM)
	}
	return "v=" + base64.StdEncoding.EncodeToString(hmacSum(x.v.ServerKey, auth)), clientKey, nil
}

// clientExchange is the pooler's side of its own login to PostgreSQL as a
// role whose ClientKey (and, to check the server, ServerKey) it holds.
type clientExchange struct {
	clientKey []byte
	serverKey []byte
	cbind     []byte // tls-server-end-point data of the server's certificate; nil for plain SCRAM

	nonce      string
	clientBare string
	gs2        string
	auth       string
}

// first returns the mechanism and client-first-message.
func (x *clientExchange) first() (string, []byte) {
	x.nonce = base64.RawStdEncoding.EncodeToString(randomBytes(18))
	x.clientBare = "n=,r=" + x.nonce
	mech := scramSHA256
	x.gs2 = "n,,"
	if x.cbind != nil {
		mech, x.gs2 = scramSHA256Plus, "p=tls-server-end-point,,"
	}
	return mech, []byte(x.gs2 + x.clientBare)
}

// final answers the server-first-message with the client-final-message.
func (x *clientExchange) final(serverFirst []byte) ([]byte, error) {
	sf := string(serverFirst)
	a := attrs(sf)
	if !strings.HasPrefix(a['r'], x.nonce) || len(a['r']) == len(x.nonce) {
		return nil, fmt.Errorf("%w: the server's nonce does not extend ours", errSCRAM)
	}
	cb := append([]byte(x.gs2), x.cbind...)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString(cb) + ",r=" + a['r']
	x.auth = x.clientBare + "," + sf + "," + withoutProof
	stored := sha256.Sum256(x.clientKey)
	proof := xorBytes(x.clientKey, hmacSum(stored[:], x.auth))
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// check verifies the server-final-message: the server knows the verifier.
func (x *clientExchange) check(serverFinal []byte) error {
	want := "v=" + base64.StdEncoding.EncodeToString(hmacSum(x.serverKey, x.auth))
	if subtle.ConstantTimeCompare([]byte(strings.SplitN(string(serverFinal), ",", 2)[0]), []byte(want)) != 1 {
		return fmt.Errorf("%w: the server's signature does not match: it does not hold this role's verifier", errSCRAM)
	}
	return nil
}
