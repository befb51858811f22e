package pooler

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

// The exchange of RFC 7677, section 3: user "user", password "pencil".
const (
	rfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

// rfcVerifier is the verifier PostgreSQL would store for "pencil" with the
// RFC's salt, and the ClientKey it is made from.
func rfcVerifier(t *testing.T) (Verifier, []byte) {
	t.Helper()
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	salted, err := pbkdf2.Key(sha256.New, "pencil", salt, 4096, sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	clientKey := hmacSum(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	b64 := base64.StdEncoding.EncodeToString
	v, err := ParseVerifier(fmt.Sprintf("SCRAM-SHA-256$4096:%s$%s:%s", b64(salt), b64(stored[:]), b64(hmacSum(salted, "Server Key"))))
	if err != nil {
		t.Fatal(err)
	}
	return v, clientKey
}

// TestServerExchange: the pooler, as the server of the RFC's exchange,
// accepts the client's proof, answers the RFC's server signature and
// recovers the ClientKey; a wrong proof, nonce or binding fails.
func TestServerExchange(t *testing.T) {
	v, clientKey := rfcVerifier(t)
	start := func() *serverExchange {
		x := &serverExchange{v: v}
		if _, err := x.start(scramSHA256, []byte(rfcClientFirst), false); err != nil {
			t.Fatal(err)
		}
		// The RFC's server nonce in place of a random one.
		x.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
		x.first = rfcServerFirst
		return x
	}
	final, key, err := start().finish([]byte(rfcClientFinal))
	if err != nil || final != rfcServerFinal || !bytes.Equal(key, clientKey) {
		t.Fatalf("finish(RFC 7677) = %q, key %x, %v; want %q and the ClientKey %x", final, key, err, rfcServerFinal, clientKey)
	}
	for name, msg := range map[string]string{
		"wrong proof":   strings.Replace(rfcClientFinal, "p=dHzb", "p=dHzc", 1),
		"wrong nonce":   strings.Replace(rfcClientFinal, "k0,p=", "k1,p=", 1),
		"bound channel": strings.Replace(rfcClientFinal, "c=biws", "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws", 1),
		"no proof":      strings.Split(rfcClientFinal, ",p=")[0],
	} {
		if _, _, err := start().finish([]byte(msg)); err == nil {
			t.Errorf("finish(%s) succeeded, want a failed login", name)
		}
	}
	// A client that could bind to the channel but was told it cannot.
	x := &serverExchange{v: v}
	if _, err := x.start(scramSHA256, []byte("y"+rfcClientFirst[1:]), true); err == nil {
		t.Error(`start("y,,...") with -PLUS offered succeeded, want a refused downgrade`)
	}
}

// TestClientExchange: the pooler, as the client of the RFC's exchange,
// proves itself with the ClientKey alone and checks the server's
// signature.
func TestClientExchange(t *testing.T) {
	v, clientKey := rfcVerifier(t)
	x := &clientExchange{clientKey: clientKey, serverKey: v.ServerKey}
	x.first()
	x.nonce, x.gs2, x.clientBare = "rOprNGfwEbeRWgbNEkqO", "n,,", "n=user,r=rOprNGfwEbeRWgbNEkqO"
	final, err := x.final([]byte(rfcServerFirst))
	if err != nil || string(final) != rfcClientFinal {
		t.Fatalf("final(RFC 7677) = %q, %v; want %q", final, err, rfcClientFinal)
	}
	if err := x.check([]byte(rfcServerFinal)); err != nil {
		t.Errorf("check(RFC's server signature): %v", err)
	}
	if err := x.check([]byte("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))); err == nil {
		t.Error("check(a wrong server signature) succeeded")
	}
	if _, err := x.final([]byte("r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")); err == nil {
		t.Error("final(a server nonce that does not extend ours) succeeded")
	}
}

func TestParseVerifier(t *testing.T) {
	for _, bad := range []string{"", "md5abcdef", "SCRAM-SHA-256$x:AAAA$AAAA:AAAA", "SCRAM-SHA-256$4096:AAAA$AAAA", "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA"} {
		if _, err := ParseVerifier(bad); err == nil {
			t.Errorf("ParseVerifier(%q) succeeded, want an error", bad)
		}
	}
}
