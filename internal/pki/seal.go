package pki

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// sealInfo binds a sealed message to its one use: the new CA's key on its
// way to a host that holds the CA's key.
const sealInfo = "pgfleet sealed CA key v1"

// Seal encrypts msg so that only the holder of the private key for pub (a
// host's own ECDSA key) can read it: an ephemeral ECDH key agreement on
// P-256, HKDF-SHA256, AES-256-GCM. A CA rotation hands the new CA's key to
// the hosts that hold the CA's key this way, through the store, so that no
// other host of the fleet can read it there.
func Seal(pub crypto.PublicKey, msg []byte) ([]byte, error) {
	ep, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("seal: only ECDSA keys are accepted")
	}
	to, err := ep.ECDH()
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := sealAEAD(eph, to, eph.PublicKey().Bytes())
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out := append(eph.PublicKey().Bytes(), nonce...)
	return aead.Seal(out, nonce, msg, nil), nil
}

// Unseal reverses Seal with the recipient's private key.
func Unseal(key crypto.Signer, sealed []byte) ([]byte, error) {
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("unseal: only ECDSA keys are accepted")
	}
	own, err := ek.ECDH()
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	const pubLen = 65 // an uncompressed P-256 point
	if len(sealed) < pubLen {
		return nil, errors.New("unseal: message too short")
	}
	eph, err := ecdh.P256().NewPublicKey(sealed[:pubLen])
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	aead, err := sealAEAD(own, eph, sealed[:pubLen])
	if err != nil {
		return nil, err
	}
	rest := sealed[pubLen:]
	if len(rest) < aead.NonceSize() {
		return nil, errors.New("unseal: message too short")
	}
	msg, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], nil)
	if err != nil {
		return nil, errors.New("unseal: not sealed for this host's key, or altered")
	}
	return msg, nil
}

// sealAEAD derives the cipher both sides agree on from the ECDH secret
// between priv and peer, salted with the ephemeral public key.
func sealAEAD(priv *ecdh.PrivateKey, peer *ecdh.PublicKey, ephPub []byte) (cipher.AEAD, error) {
	secret, err := priv.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("seal: key agreement: %w", err)
	}
	k, err := hkdf.Key(sha256.New, secret, ephPub, sealInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
